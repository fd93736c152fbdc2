/*
** codec_lua.c — the codec's Lua bindings: store.pack and store.unpack (a
** general value in its plain envelope, as tools see a stored value), and
** store.encode_raw and store.decode_raw (bare payloads, exactly as the
** storage path encodes them and decodes them after unsealing).
*/
#include <string.h>
#include <sodium.h>
#include "store.h"

/*
** A scratch buffer owned by a userdata, so that an error raised while
** encoding (out of memory) cannot leak it: the collector frees it.
*/
static int buf_gc(lua_State *L) {
  store_buffer_free(L, (Buffer *)luaL_checkudata(L, 1, STORE_BUFFER_MT));
  return 0;
}

static Buffer *new_scratch(lua_State *L) {
  Buffer *b = (Buffer *)lua_newuserdatauv(L, sizeof(Buffer), 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, STORE_BUFFER_MT);
  return b;
}

/* What an encoding into b gave: its bytes, or fail and err. Frees b's memory. */
static int push_encoded(lua_State *L, Buffer *b, const char *err) {
  if (err) {
    store_buffer_free(L, b);
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushlstring(L, (const char *)b->p, b->n);
  store_buffer_free(L, b);
  return 1;
}

/* The optional stanza metatable argument: its index, or 0 when absent. */
static int opt_stanza_mt(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return 0;
  luaL_checktype(L, arg, LUA_TTABLE);
  return arg;
}

/*
** store.pack(value[, stanza_mt]) / store.unpack(blob[, stanza_mt]): the
** general encoding in its plain envelope with an empty row identity; used by
** tools and specs. stanza_mt (util.stanza's metatable) makes stanzas
** round-trip as stanzas; without it they are plain tables.
*/
static int l_pack(lua_State *L) {
  Buffer *b;
  const char *err;
  unsigned char hdr[STORE_HEADER] = { STORE_FORMAT_VERSION, STORE_KIND_VALUE };
  unsigned char sum[STORE_CHECKSUM];
  int smt;
  luaL_checkany(L, 1);
  smt = opt_stanza_mt(L, 2);
  lua_settop(L, 2);
  b = new_scratch(L);
  store_put(L, b, hdr, sizeof hdr);
  err = store_encode_value(L, b, 1, smt);
  if (!err) {
    store_checksum(b->p, b->n, NULL, 0, sum);
    store_put(L, b, sum, STORE_CHECKSUM);
    if (b->oom) err = "out of memory";
  }
  return push_encoded(L, b, err);
}

static int l_unpack(lua_State *L) {
  size_t len;
  const unsigned char *blob = (const unsigned char *)luaL_checklstring(L, 1, &len);
  unsigned char sum[STORE_CHECKSUM];
  Cursor c;
  const char *err;
  int smt = opt_stanza_mt(L, 2);
  lua_settop(L, 2);
  if (len < STORE_HEADER + STORE_CHECKSUM || blob[0] != STORE_FORMAT_VERSION || blob[1] != STORE_KIND_VALUE) {
    luaL_pushfail(L);
    lua_pushliteral(L, "not a brisk value");
    return 2;
  }
  store_checksum(blob, len - STORE_CHECKSUM, NULL, 0, sum);
  if (sodium_memcmp(sum, blob + len - STORE_CHECKSUM, STORE_CHECKSUM) != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "corrupt data (checksum mismatch)");
    return 2;
  }
  c.p = blob + STORE_HEADER;
  c.end = blob + len - STORE_CHECKSUM;
  err = store_decode_value(L, &c, smt);
  if (!err && c.p != c.end) { lua_pop(L, 1); err = "corrupt data (trailing bytes)"; }
  if (err) { luaL_pushfail(L); lua_pushstring(L, err); return 2; }
  return 1;
}

/*
** Arguments 3 and 4 of decode_raw and encode_raw: the group names array
** (a new empty one when absent) and the optional stanza metatable. Leaves
** the stack at 4 slots and returns the metatable's index, or 0.
*/
static int names_and_stanza_mt(lua_State *L) {
  int smt = opt_stanza_mt(L, 4);
  lua_settop(L, 4);
  if (lua_isnil(L, 3)) {
    lua_newtable(L);
    lua_replace(L, 3);
  } else {
    luaL_checktype(L, 3, LUA_TTABLE);
  }
  return smt;
}

/*
** store.decode_raw(kind, payload[, names[, stanza_mt]]): decode a bare
** payload without envelope (no checksum), exactly as the storage path does
** after unsealing.
*/
static int l_decode_raw(lua_State *L) {
  static const char *const kinds[] = { "value", "item", "meta", NULL };
  int k = luaL_checkoption(L, 1, NULL, kinds);
  size_t len;
  const unsigned char *p = (const unsigned char *)luaL_checklstring(L, 2, &len);
  Cursor c;
  const char *err;
  int smt = names_and_stanza_mt(L);
  c.p = p;
  c.end = p + len;
  if (k == 2) {
    err = store_decode_meta(L, &c, smt);
    if (!err && c.p != c.end) { lua_pop(L, 2); err = "corrupt data (trailing bytes)"; }
    if (!err) return 2;
  } else {
    int keys = store_push_item_keys(L);
    err = store_decode_payload(L, &c, k == 0 ? STORE_KIND_VALUE : STORE_KIND_ITEM, smt, 3, keys);
    if (!err) return 1;
  }
  luaL_pushfail(L);
  lua_pushstring(L, err);
  return 2;
}

/*
** store.encode_raw(kind, value[, names[, stanza_mt]]): the bare payload
** ("item" appends new group names to names).
*/
static int l_encode_raw(lua_State *L) {
  static const char *const kinds[] = { "value", "item", NULL };
  int k = luaL_checkoption(L, 1, NULL, kinds);
  Buffer *b;
  const char *err = NULL;
  int names = 3, dict, smt;
  luaL_checkany(L, 2);
  smt = names_and_stanza_mt(L);
  dict = store_push_name_index(L, names);
  b = new_scratch(L);
  if (k == 0) err = store_encode_value(L, b, 2, smt);
  else if (store_encode_item(L, b, 2, smt, dict, names, &err) < 0 && !err) err = "encoding failed";
  if (!err && b->oom) err = "out of memory";
  return push_encoded(L, b, err);
}

const luaL_Reg store_buffer_meta[] = {
  { "__gc", buf_gc },
  { NULL, NULL }
};

const luaL_Reg store_codec_functions[] = {
  { "pack", l_pack },
  { "unpack", l_unpack },
  { "decode_raw", l_decode_raw },
  { "encode_raw", l_encode_raw },
  { NULL, NULL }
};
