/*
** codec.c — Brisk's compact binary encodings of Lua values (docs/storage-format.md).
**
** Two encodings live here: a general one for any storable Lua value (booleans,
** integers kept apart from floats, strings, nested tables, util.stanza
** objects), and one shaped for roster contacts, where the usual fields become
** bits and group names become small indices into a per-roster name list.
** Decoders check every length against the bytes left, so a damaged payload
** yields an error message, never a read out of bounds or a huge allocation.
*/
#include <string.h>
#include "store.h"

/* Value tags of the general encoding. */
#define T_FALSE  0
#define T_TRUE   1
#define T_INT    2
#define T_FLOAT  3
#define T_STRING 4
#define T_TABLE  5
#define T_STANZA 6

/* Bits of a roster contact's first byte; the low three hold the subscription. */
#define F_SUB_MASK 0x07
#define F_ASK      0x08
#define F_APPROVED 0x10
#define F_PERSIST  0x20
#define F_NAME     0x40
#define F_EXTRA    0x80

static const char *const subscriptions[] = { NULL, "none", "to", "from", "both" };
#define N_SUBSCRIPTIONS 5

/* Bytes left after a cursor. */
static size_t left(const Cursor *c) {
  return (size_t)(c->end - c->p);
}

/* ---------------------------------------------------------------- encoding */

static const char *enc_value(lua_State *L, Buffer *b, int idx, int smt, int depth);

static int is_stanza(lua_State *L, int idx, int smt) {
  int r = 0;
  if (smt && lua_getmetatable(L, idx)) {
    r = lua_rawequal(L, -1, smt);
    lua_pop(L, 1);
  }
  return r;
}

/* Length of the run of non-nil values t[1], t[2], ... */
static lua_Integer seq_len(lua_State *L, int idx) {
  lua_Integer n = 0;
  while (lua_rawgeti(L, idx, n + 1) != LUA_TNIL) {
    lua_pop(L, 1);
    n++;
  }
  lua_pop(L, 1);
  return n;
}

static int in_seq(lua_State *L, int kidx, lua_Integer narr) {
  if (!lua_isinteger(L, kidx)) return 0;
  {
    lua_Integer k = lua_tointeger(L, kidx);
    return k >= 1 && k <= narr;
  }
}

/* Keys the encoding can store: booleans, numbers and strings (tags 0-4). */
int store_key_ok(lua_State *L, int kidx) {
  int t = lua_type(L, kidx);
  return t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN;
}

/*
** Table body: the sequence part (count, values), then every other pair
** (count, key, value). "skip" is an optional filter used by the roster
** encoder to leave out fields it already wrote in compact form.
*/
typedef int (*skip_fn)(lua_State *L, int kidx, int vidx);

static const char *enc_body(lua_State *L, Buffer *b, int idx, int smt, int depth, skip_fn skip) {
  int top = lua_gettop(L);
  lua_Integer narr = skip ? 0 : seq_len(L, idx);
  lua_Integer i;
  uint64_t nhash = 0;
  const char *err = NULL;
  if (depth >= STORE_MAX_DEPTH) return "tables nested too deeply (or a cycle)";
  luaL_checkstack(L, 6, "brisk.store: nesting");
  store_put_varint(L, b, (uint64_t)narr);
  for (i = 1; i <= narr; i++) {
    lua_rawgeti(L, idx, i);
    err = enc_value(L, b, -1, smt, depth + 1);
    lua_pop(L, 1);
    if (err) return err;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!in_seq(L, -2, narr) && !(skip && skip(L, -2, -1))) {
      if (!store_key_ok(L, -2)) { lua_settop(L, top); return "unsupported key type (only strings, numbers and booleans)"; }
      nhash++;
    }
    lua_pop(L, 1);
  }
  store_put_varint(L, b, nhash);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!in_seq(L, -2, narr) && !(skip && skip(L, -2, -1))) {
      err = enc_value(L, b, -2, smt, depth + 1);
      if (!err) err = enc_value(L, b, -1, smt, depth + 1);
      if (err) { lua_settop(L, top); return err; }
    }
    lua_pop(L, 1);
  }
  return NULL;
}

static const char *enc_stanza(lua_State *L, Buffer *b, int idx, int smt, int depth) {
  int top = lua_gettop(L);
  const char *err = NULL;
  lua_Integer n, i;
  size_t len;
  const char *s;
  if (depth >= STORE_MAX_DEPTH) return "stanzas nested too deeply (or a cycle)";
  luaL_checkstack(L, 4, "brisk.store: nesting");
  store_put_byte(L, b, T_STANZA);
  if (lua_getfield(L, idx, "name") != LUA_TSTRING) { lua_settop(L, top); return "malformed stanza (name is not a string)"; }
  s = lua_tolstring(L, -1, &len);
  store_put_str(L, b, s, len);
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "attr") != LUA_TTABLE) { lua_settop(L, top); return "malformed stanza (attr is not a table)"; }
  err = enc_body(L, b, lua_gettop(L), smt, depth + 1, NULL);
  lua_settop(L, top);
  if (err) return err;
  n = seq_len(L, idx);
  store_put_varint(L, b, (uint64_t)n);
  for (i = 1; i <= n; i++) {
    int t = lua_rawgeti(L, idx, i);
    if (t != LUA_TSTRING && t != LUA_TTABLE) { lua_settop(L, top); return "malformed stanza (child is neither text nor element)"; }
    err = enc_value(L, b, -1, smt, depth + 1);
    lua_pop(L, 1);
    if (err) return err;
  }
  return NULL;
}

static const char *enc_value(lua_State *L, Buffer *b, int idx, int smt, int depth) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
      store_put_byte(L, b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
      return NULL;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        uint64_t u = (uint64_t)lua_tointeger(L, idx);
        /* Zigzag, so small negative numbers stay short. */
        uint64_t z = (u << 1) ^ (uint64_t)(-(int64_t)(u >> 63));
        store_put_byte(L, b, T_INT);
        store_put_varint(L, b, z);
      } else {
        double d = lua_tonumber(L, idx);
        uint64_t bits;
        unsigned char le[8];
        int i;
        memcpy(&bits, &d, 8);
        for (i = 0; i < 8; i++) le[i] = (unsigned char)(bits >> (8 * i));
        store_put_byte(L, b, T_FLOAT);
        store_put(L, b, le, 8);
      }
      return NULL;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      store_put_byte(L, b, T_STRING);
      store_put_str(L, b, s, len);
      return NULL;
    }
    case LUA_TTABLE:
      if (is_stanza(L, idx, smt))
        return enc_stanza(L, b, idx, smt, depth);
      /* Any other metatable is ignored, as Prosody's own serializers do. */
      store_put_byte(L, b, T_TABLE);
      return enc_body(L, b, idx, smt, depth, NULL);
    case LUA_TFUNCTION:
      return "cannot store a function (only strings, numbers, booleans, tables and stanzas)";
    case LUA_TNIL:
      return "cannot store nil inside a sequence";
    default:
      return "cannot store a userdata or thread (only strings, numbers, booleans, tables and stanzas)";
  }
}

const char *store_encode_value(lua_State *L, Buffer *b, int idx, int smt) {
  const char *err = enc_value(L, b, idx, smt, 0);
  if (!err && b->oom) err = "out of memory";
  return err;
}

/* ---------------------------------------------------------------- roster contact */

static int str_is(lua_State *L, int idx, const char *lit) {
  size_t len;
  const char *s;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, idx, &len);
  return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

static int sub_code(lua_State *L, int idx) {
  int i;
  for (i = 1; i < N_SUBSCRIPTIONS; i++)
    if (str_is(L, idx, subscriptions[i])) return i;
  return 0;
}

/* groups in compact form: a plain table of string keys whose values are all true */
static int groups_compact(lua_State *L, int idx) {
  int ok = 1;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx)) return 0;
  if (lua_getmetatable(L, idx)) { lua_pop(L, 1); return 0; }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TBOOLEAN || !lua_toboolean(L, -1)) {
      lua_pop(L, 2);
      ok = 0;
      break;
    }
    lua_pop(L, 1);
  }
  return ok;
}

/* Which fields the compact form carries: returns the flag bit, or 0 (extra field). */
static int compact_field(lua_State *L, int kidx, int vidx) {
  if (str_is(L, kidx, "subscription")) return sub_code(L, vidx) ? F_SUB_MASK : 0;
  if (str_is(L, kidx, "ask")) return str_is(L, vidx, "subscribe") ? F_ASK : 0;
  if (str_is(L, kidx, "approved")) return str_is(L, vidx, "true") ? F_APPROVED : 0;
  if (str_is(L, kidx, "persist"))
    return (lua_type(L, vidx) == LUA_TBOOLEAN && lua_toboolean(L, vidx)) ? F_PERSIST : 0;
  if (str_is(L, kidx, "name")) return lua_type(L, vidx) == LUA_TSTRING ? F_NAME : 0;
  if (str_is(L, kidx, "groups")) return groups_compact(L, vidx) ? 0x100 : 0;
  return 0;
}

static int skip_compact(lua_State *L, int kidx, int vidx) {
  return compact_field(L, kidx, vidx) != 0;
}

int store_encode_item(lua_State *L, Buffer *b, int idx, int smt, int dict, int names, const char **err) {
  int flags = 0, has_groups = 0, extra = 0;
  idx = lua_absindex(L, idx);
  *err = NULL;
  {
    int plain = lua_istable(L, idx);
    if (plain && lua_getmetatable(L, idx)) {
      lua_pop(L, 1);
      plain = 0;
    }
    if (!plain) {
      /* Not a plain table (a stanza, a string, ...): the general form keeps it exact. */
      *err = store_encode_value(L, b, idx, smt);
      return *err ? -1 : STORE_KIND_VALUE;
    }
  }
  luaL_checkstack(L, 6, "brisk.store: roster item");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int f = compact_field(L, -2, -1);
    if (f == F_SUB_MASK) flags |= sub_code(L, -1);
    else if (f == 0x100) has_groups = 1;
    else if (f) flags |= f;
    else {
      if (!store_key_ok(L, -2)) { lua_pop(L, 2); *err = "unsupported key type (only strings, numbers and booleans)"; return -1; }
      extra = 1;
    }
    lua_pop(L, 1);
  }
  if (extra) flags |= F_EXTRA;
  store_put_byte(L, b, (unsigned char)flags);
  if (flags & F_NAME) {
    size_t len;
    const char *s;
    lua_getfield(L, idx, "name");
    s = lua_tolstring(L, -1, &len);
    store_put_str(L, b, s, len);
    lua_pop(L, 1);
  }
  if (has_groups) {
    uint64_t n = 0;
    int g;
    lua_getfield(L, idx, "groups");
    g = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, g)) { n++; lua_pop(L, 1); }
    store_put_varint(L, b, n + 1);
    lua_pushnil(L);
    while (lua_next(L, g)) {
      lua_Integer gi;
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      if (lua_rawget(L, dict) == LUA_TNUMBER) {
        gi = lua_tointeger(L, -1);
      } else {
        /* A group this roster has not named before: append it. */
        gi = (lua_Integer)lua_rawlen(L, names);
        lua_pushvalue(L, -2);
        lua_rawseti(L, names, gi + 1);
        lua_pushvalue(L, -2);
        lua_pushinteger(L, gi);
        lua_rawset(L, dict);
      }
      lua_pop(L, 1);
      store_put_varint(L, b, (uint64_t)gi);
    }
    lua_pop(L, 1);
  } else {
    store_put_varint(L, b, 0);
  }
  if (extra) {
    *err = enc_body(L, b, idx, smt, 1, skip_compact);
    if (*err) return -1;
  }
  if (b->oom) { *err = "out of memory"; return -1; }
  return STORE_KIND_ITEM;
}

const char *store_encode_meta(lua_State *L, Buffer *b, int names, int idx, int smt) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, names), i;
  const char *err;
  store_put_varint(L, b, (uint64_t)n);
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    lua_rawgeti(L, names, i);
    s = lua_tolstring(L, -1, &len);
    store_put_str(L, b, s ? s : "", s ? len : 0);
    lua_pop(L, 1);
  }
  err = enc_body(L, b, lua_absindex(L, idx), smt, 0, NULL);
  if (!err && b->oom) err = "out of memory";
  return err;
}

/* ---------------------------------------------------------------- decoding */

static const char *dec_value(lua_State *L, Cursor *c, int smt, int depth);

static const char *dec_str(lua_State *L, Cursor *c) {
  uint64_t len;
  if (!store_get_varint(c, &len)) return "corrupt data (bad length)";
  if (len > left(c)) return "corrupt data (string runs past the end)";
  lua_pushlstring(L, (const char *)c->p, (size_t)len);
  c->p += len;
  return NULL;
}

/* Decode a table body into the table on top of the stack. */
static const char *dec_body_into(lua_State *L, Cursor *c, int smt, int depth) {
  int t = lua_gettop(L);
  uint64_t narr, nhash, i;
  const char *err;
  if (depth >= STORE_MAX_DEPTH) return "corrupt data (nested too deeply)";
  luaL_checkstack(L, 6, "brisk.store: nesting");
  if (!store_get_varint(c, &narr) || narr > left(c)) return "corrupt data (bad array length)";
  for (i = 1; i <= narr; i++) {
    if ((err = dec_value(L, c, smt, depth + 1)) != NULL) return err;
    lua_rawseti(L, t, (lua_Integer)i);
  }
  if (!store_get_varint(c, &nhash) || nhash > left(c) / 2) return "corrupt data (bad pair count)";
  for (i = 0; i < nhash; i++) {
    if (c->p >= c->end || *c->p > T_STRING) return "corrupt data (bad key)";
    if ((err = dec_value(L, c, smt, depth + 1)) != NULL) return err;
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number k = lua_tonumber(L, -1);
      if (k != k) { lua_pop(L, 1); return "corrupt data (NaN key)"; }
    }
    if ((err = dec_value(L, c, smt, depth + 1)) != NULL) { lua_pop(L, 1); return err; }
    lua_rawset(L, t);
  }
  return NULL;
}

static const char *dec_body(lua_State *L, Cursor *c, int smt, int depth) {
  const char *err;
  lua_newtable(L);
  err = dec_body_into(L, c, smt, depth);
  if (err) lua_pop(L, 1);
  return err;
}

static const char *dec_stanza(lua_State *L, Cursor *c, int smt, int depth) {
  int t, tags;
  uint64_t n, i;
  lua_Integer ntags = 0;
  const char *err;
  if (depth >= STORE_MAX_DEPTH) return "corrupt data (nested too deeply)";
  luaL_checkstack(L, 6, "brisk.store: nesting");
  lua_createtable(L, 0, 4);
  t = lua_gettop(L);
  if ((err = dec_str(L, c)) != NULL) goto fail;
  lua_setfield(L, t, "name");
  if ((err = dec_body(L, c, smt, depth + 1)) != NULL) goto fail;
  lua_setfield(L, t, "attr");
  lua_newtable(L);
  tags = lua_gettop(L);
  if (!store_get_varint(c, &n) || n > left(c)) { err = "corrupt data (bad child count)"; goto fail; }
  for (i = 1; i <= n; i++) {
    if ((err = dec_value(L, c, smt, depth + 1)) != NULL) goto fail;
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, tags, ++ntags);
    } else if (lua_type(L, -1) != LUA_TSTRING) {
      err = "corrupt data (stanza child is neither text nor element)";
      goto fail;
    }
    lua_rawseti(L, t, (lua_Integer)i);
  }
  lua_setfield(L, t, "tags");
  if (smt) {
    lua_pushvalue(L, smt);
    lua_setmetatable(L, t);
  }
  return NULL;
fail:
  lua_settop(L, t - 1);
  return err;
}

static const char *dec_value(lua_State *L, Cursor *c, int smt, int depth) {
  unsigned char tag;
  if (c->p >= c->end) return "corrupt data (truncated)";
  tag = *c->p++;
  switch (tag) {
    case T_FALSE: lua_pushboolean(L, 0); return NULL;
    case T_TRUE: lua_pushboolean(L, 1); return NULL;
    case T_INT: {
      uint64_t z;
      if (!store_get_varint(c, &z)) return "corrupt data (bad integer)";
      lua_pushinteger(L, (lua_Integer)((z >> 1) ^ (uint64_t)(-(int64_t)(z & 1))));
      return NULL;
    }
    case T_FLOAT: {
      uint64_t bits = 0;
      double d;
      int i;
      if (left(c) < 8) return "corrupt data (truncated float)";
      for (i = 0; i < 8; i++) bits |= (uint64_t)c->p[i] << (8 * i);
      c->p += 8;
      memcpy(&d, &bits, 8);
      lua_pushnumber(L, d);
      return NULL;
    }
    case T_STRING: return dec_str(L, c);
    case T_TABLE: return dec_body(L, c, smt, depth);
    case T_STANZA: return dec_stanza(L, c, smt, depth);
    default: return "corrupt data (unknown value tag)";
  }
}

const char *store_decode_value(lua_State *L, Cursor *c, int smt) {
  return dec_value(L, c, smt, 0);
}

/*
** The strings a contact is made of, pushed once per read so that decoding a
** contact copies stack slots instead of interning the same names again.
*/
enum { K_SUBSCRIPTION, K_ASK, K_APPROVED, K_PERSIST, K_NAME, K_GROUPS, K_SUBSCRIBE, K_TRUE,
       K_NONE, K_TO, K_FROM, K_BOTH, K_COUNT };
static const char *const item_strings[K_COUNT] = {
  "subscription", "ask", "approved", "persist", "name", "groups", "subscribe", "true",
  "none", "to", "from", "both"
};

/* The index of a roster's group names: name -> 0-based position in "names". */
int store_push_name_index(lua_State *L, int names) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, names);
  lua_newtable(L);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, names, i);
    lua_pushinteger(L, i - 1);
    lua_rawset(L, -3);
  }
  return lua_gettop(L);
}

int store_push_item_keys(lua_State *L) {
  int i;
  luaL_checkstack(L, K_COUNT + 8, "brisk.store: item keys");
  for (i = 0; i < K_COUNT; i++) lua_pushstring(L, item_strings[i]);
  return lua_gettop(L) - K_COUNT + 1;
}

static void set_kv(lua_State *L, int t, int keys, int k, int v) {
  lua_pushvalue(L, keys + k);
  lua_pushvalue(L, keys + v);
  lua_rawset(L, t);
}

const char *store_decode_item(lua_State *L, Cursor *c, int smt, int names, int keys) {
  int t, flags, sub;
  uint64_t ng, i;
  const char *err = NULL;
  luaL_checkstack(L, 6, "brisk.store: roster item");
  if (c->p >= c->end) return "corrupt data (empty roster item)";
  flags = *c->p++;
  sub = flags & F_SUB_MASK;
  if (sub >= N_SUBSCRIPTIONS) return "corrupt data (bad subscription)";
  /* Size the table for the fields the flags announce (+1 for groups): no rehash, no slack. */
  lua_createtable(L, 0, (sub != 0) + !!(flags & F_ASK) + !!(flags & F_APPROVED) + !!(flags & F_PERSIST)
                        + !!(flags & F_NAME) + 1);
  t = lua_gettop(L);
  if (sub) set_kv(L, t, keys, K_SUBSCRIPTION, K_NONE + sub - 1);
  if (flags & F_ASK) set_kv(L, t, keys, K_ASK, K_SUBSCRIBE);
  if (flags & F_APPROVED) set_kv(L, t, keys, K_APPROVED, K_TRUE);
  if (flags & F_PERSIST) {
    lua_pushvalue(L, keys + K_PERSIST);
    lua_pushboolean(L, 1);
    lua_rawset(L, t);
  }
  if (flags & F_NAME) {
    lua_pushvalue(L, keys + K_NAME);
    if ((err = dec_str(L, c)) != NULL) goto fail;
    lua_rawset(L, t);
  }
  if (!store_get_varint(c, &ng) || ng > left(c) + 1) { err = "corrupt data (bad group count)"; goto fail; }
  if (ng > 0) {
    lua_Integer nnames = (lua_Integer)lua_rawlen(L, names);
    lua_pushvalue(L, keys + K_GROUPS);
    lua_createtable(L, 0, (int)(ng - 1));
    for (i = 1; i < ng; i++) {
      uint64_t gi;
      if (!store_get_varint(c, &gi) || gi >= (uint64_t)nnames) { err = "corrupt data (group index out of range)"; goto fail; }
      lua_rawgeti(L, names, (lua_Integer)gi + 1);
      lua_pushboolean(L, 1);
      lua_rawset(L, -3);
    }
    lua_rawset(L, t);
  }
  if (flags & F_EXTRA) {
    if ((err = dec_body(L, c, smt, 1)) != NULL) goto fail;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, t);
    }
    lua_pop(L, 1);
  }
  return NULL;
fail:
  lua_settop(L, t - 1);
  return err;
}

const char *store_decode_meta(lua_State *L, Cursor *c, int smt) {
  uint64_t n, i;
  int base = lua_gettop(L);
  const char *err;
  luaL_checkstack(L, 6, "brisk.store: roster metadata");
  if (!store_get_varint(c, &n) || n > left(c)) return "corrupt data (bad group name count)";
  lua_createtable(L, (int)n, 0);
  for (i = 1; i <= n; i++) {
    if ((err = dec_str(L, c)) != NULL) { lua_settop(L, base); return err; }
    lua_rawseti(L, base + 1, (lua_Integer)i);
  }
  if ((err = dec_body(L, c, smt, 0)) != NULL) { lua_settop(L, base); return err; }
  return NULL;
}

/* ---------------------------------------------------------------- payloads by kind */

/* Decode the whole payload of a key's own row, with nothing left over. */
const char *store_decode_payload(lua_State *L, Cursor *c, int kind, int smt, int names, int keys) {
  const char *err;
  if (kind == STORE_KIND_VALUE) err = store_decode_value(L, c, smt);
  else if (kind == STORE_KIND_ITEM) err = store_decode_item(L, c, smt, names, keys);
  else return "corrupt data (unexpected metadata payload)";
  if (err) return err;
  if (c->p != c->end) {
    lua_pop(L, 1);
    return "corrupt data (trailing bytes)";
  }
  return NULL;
}

/*
** Decode the "" row's payload: pushes the group names array and the table of
** the non-string-keyed entries. General-value rows (non-roster stores) push
** an empty names array.
*/
const char *store_decode_extra(lua_State *L, Cursor *c, int kind, int smt) {
  const char *err;
  if (kind == STORE_KIND_META) {
    if ((err = store_decode_meta(L, c, smt)) != NULL) return err;
  } else if (kind == STORE_KIND_VALUE) {
    lua_newtable(L);
    if ((err = store_decode_value(L, c, smt)) != NULL) { lua_pop(L, 1); return err; }
    if (!lua_istable(L, -1)) { lua_pop(L, 2); return "corrupt data (extra entries are not a table)"; }
  } else {
    return "corrupt data (contact payload under the empty key)";
  }
  if (c->p != c->end) { lua_pop(L, 2); return "corrupt data (trailing bytes)"; }
  return NULL;
}
