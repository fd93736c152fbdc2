/*
** jid.c — brisk.jid: Prosody's util.jid in C.
**
** brisk.jid.new{ nodeprep =, nameprep =, resourceprep =, stock = } returns a
** table with util.jid's functions (split, bare, prepped_split, join, prep,
** compare, node, host, resource, escape, unescape). Lua passes in the
** stringprep functions of Prosody's own util.encodings and the stock util.jid
** table; nothing here loads another Lua module.
**
** Exactness. Each function returns what stock's returns, value for value
** and count for count (stock's bare `return` gives no values, split on an
** invalid JID three nils). Strings are parsed in one pass that accepts
** exactly what stock's three string.match patterns accept. Arguments stock
** would not treat as plain strings (numbers, which string.match converts;
** tables and booleans, which make it raise) are handed to the stock
** function, whole, so its values and its errors, message and position
** included, are stock's own; so is a `strict` flag that is neither nil nor
** a boolean, which util.encodings rejects with a message naming the Lua
** caller.
**
** Stringprep. A part that is not pure ASCII goes to the profile function
** Lua passed in, called as stock calls it: (part, strict), nameprep first,
** then nodeprep, then resourceprep, stopping at the first failure. For
** pure ASCII the profile's answer is known in advance: RFC 3454 stringprep
** maps, checks and normalizes ASCII one character at a time (no ASCII
** character is mapped to nothing, none has a compatibility decomposition,
** none is RandALCat), so an ASCII string's result is its characters'
** results side by side, and nil if any character fails. new() learns each
** profile's answer for every ASCII byte, strict and not, by calling the
** profile itself on that byte, then checks the rule on whole strings (all the
** bytes that pass at once, each failing byte between passing ones, and
** names shaped like what IDNA-style whole-name rules reject: leading or
** trailing hyphens, "xn--", empty labels, a 64-byte label); a profile that
** does not follow it is never short-cut. Parts of 1024 bytes or more always
** go to the profile (util.encodings fails them).
*/
#include <string.h>

#include "brisk.h"

/* util.encodings' stringprep fails inputs of this many bytes or more. */
#define PREP_MAXLEN 1024

enum { PROF_NODE, PROF_NAME, PROF_RES, PROF_COUNT };

/* What a profile makes of one ASCII byte: the byte it maps to (0..127), or: */
#define MAP_FAIL 0x100 /* the profile rejects the byte */
#define MAP_SLOW 0x200 /* not learned: ask the profile */

typedef struct Preps {
  unsigned short map[2][PROF_COUNT][128]; /* [strict][profile][byte] */
} Preps;

/* Upvalues shared by every function new() returns. */
#define UV_PREPS 1 /* the Preps userdata */
#define UV_PROF  2 /* nodeprep, nameprep, resourceprep: upvalues 2, 3, 4 */
#define UV_STOCK 5 /* the stock function of the same name */
#define UV_COUNT 5

/* ------------------------------------------------------------ parsing */

/*
** A JID split as stock's split() splits it, as offsets into s. Stock's
** patterns: node = "^([^@/]+)@", host = "^([^@/]+)" from after the node,
** then nothing, or "/" and at least one byte of resource (any bytes).
*/
typedef struct Parts {
  size_t nl;     /* node length; 0: no node */
  size_t hs, hl; /* host start and length (never 0 in a valid JID) */
  size_t rs, rl; /* resource start and length; rl 0: no resource */
} Parts;

static size_t find_sep(const char *s, size_t from, size_t len) {
  size_t i;
  for (i = from; i < len; i++)
    if (s[i] == '@' || s[i] == '/') break;
  return i;
}

/* 1 and the parts when s is a JID stock's split accepts, else 0. */
static int parse(const char *s, size_t len, Parts *p) {
  size_t i = find_sep(s, 0, len), e;
  if (i < len && s[i] == '@' && i > 0) {
    p->nl = i;
    p->hs = i + 1;
    e = find_sep(s, p->hs, len);
  } else {
    p->nl = 0;
    p->hs = 0;
    e = i;
  }
  p->hl = e - p->hs;
  if (p->hl == 0) return 0;
  if (e == len) {
    p->rs = len;
    p->rl = 0;
    return 1;
  }
  if (s[e] != '/' || e + 1 == len) return 0;
  p->rs = e + 1;
  p->rl = len - p->rs;
  return 1;
}

/*
** Decide what to do with argument idx, a JID: 1 = a string to parse (s, len
** set), 0 = nil or none, -1 = anything else (the stock function decides).
*/
static int jid_arg(lua_State *L, int idx, const char **s, size_t *len) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: *s = lua_tolstring(L, idx, len); return 1;
    case LUA_TNIL: case LUA_TNONE: return 0;
    default: return -1;
  }
}

/* Call the stock function with this call's own arguments; return its results. */
static int delegate(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(UV_STOCK));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

static void push_part(lua_State *L, const char *s, size_t start, size_t len) {
  if (len == 0) lua_pushnil(L);
  else lua_pushlstring(L, s + start, len);
}

/* ------------------------------------------------- split and friends */

/* split(jid): node, host, resource; three nils if invalid; nothing for nil. */
static int l_split(lua_State *L) {
  const char *s = NULL;
  size_t len = 0;
  Parts p;
  int k = jid_arg(L, 1, &s, &len);
  if (k < 0) return delegate(L);
  if (k == 0) return 0;
  if (!parse(s, len, &p)) {
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushnil(L);
    return 3;
  }
  push_part(L, s, 0, p.nl);
  lua_pushlstring(L, s + p.hs, p.hl);
  push_part(L, s, p.rs, p.rl);
  return 3;
}

/* bare(jid): "node@host" or "host" (the argument itself when it has no resource). */
static int l_bare(lua_State *L) {
  const char *s = NULL;
  size_t len = 0;
  Parts p;
  int k = jid_arg(L, 1, &s, &len);
  if (k < 0) return delegate(L);
  if (k == 0 || !parse(s, len, &p)) {
    lua_pushnil(L);
    return 1;
  }
  if (p.rl == 0) {
    lua_settop(L, 1);
    return 1;
  }
  lua_pushlstring(L, s + p.hs - (p.nl ? p.nl + 1 : 0), p.hl + (p.nl ? p.nl + 1 : 0));
  return 1;
}

/* node(jid), host(jid), resource(jid): one value each, nil when absent or invalid. */
static int part_of(lua_State *L, int which) {
  const char *s = NULL;
  size_t len = 0;
  Parts p;
  int k = jid_arg(L, 1, &s, &len);
  if (k < 0) return delegate(L);
  if (k == 0 || !parse(s, len, &p)) lua_pushnil(L);
  else if (which == 0) push_part(L, s, 0, p.nl);
  else if (which == 1) lua_pushlstring(L, s + p.hs, p.hl);
  else push_part(L, s, p.rs, p.rl);
  return 1;
}

static int l_node(lua_State *L) { return part_of(L, 0); }
static int l_host(lua_State *L) { return part_of(L, 1); }
static int l_resource(lua_State *L) { return part_of(L, 2); }

static int same_part(const char *a, size_t as, size_t al, const char *b, size_t bs, size_t bl) {
  return al == bl && memcmp(a + as, b + bs, al) == 0;
}

/*
** compare(jid, acl): true when every part the acl has (a valid acl's node,
** host, resource) equals the jid's. An invalid acl has no parts and matches
** anything, as in stock.
*/
static int l_compare(lua_State *L) {
  const char *js = NULL, *as = NULL;
  size_t jl = 0, al = 0;
  Parts j, a;
  int kj = jid_arg(L, 1, &js, &jl), ka = jid_arg(L, 2, &as, &al), ok;
  if (kj < 0 || ka < 0) return delegate(L);
  if (kj == 0 || !parse(js, jl, &j)) { /* the jid has no parts */
    js = "";
    memset(&j, 0, sizeof j);
  }
  if (ka == 0 || !parse(as, al, &a)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  /* A valid acl always has a host; a jid without one never matches it. */
  ok = j.hl != 0 && same_part(as, a.hs, a.hl, js, j.hs, j.hl)
       && (a.nl == 0 || same_part(as, 0, a.nl, js, 0, j.nl))
       && (a.rl == 0 || same_part(as, a.rs, a.rl, js, j.rs, j.rl));
  lua_pushboolean(L, ok);
  return 1;
}

/*
** Push node@host/resource, as stock's join concatenates it, from the values
** at node, node + 1 (the host, a string) and node + 2 (node and resource
** strings or nil). Returns 1, the count of results.
*/
static int push_joined(lua_State *L, int node) {
  luaL_Buffer b;
  if (lua_isnil(L, node) && lua_isnil(L, node + 2)) {
    lua_pushvalue(L, node + 1);
    return 1;
  }
  luaL_buffinit(L, &b);
  if (!lua_isnil(L, node)) {
    lua_pushvalue(L, node);
    luaL_addvalue(&b);
    luaL_addchar(&b, '@');
  }
  lua_pushvalue(L, node + 1);
  luaL_addvalue(&b);
  if (!lua_isnil(L, node + 2)) {
    luaL_addchar(&b, '/');
    lua_pushvalue(L, node + 2);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

/* join(node, host, resource) */
static int l_join(lua_State *L) {
  int i;
  lua_settop(L, 3);
  if (lua_isnil(L, 2)) return 0;
  for (i = 1; i <= 3; i++)
    if (!lua_isnil(L, i) && lua_type(L, i) != LUA_TSTRING) return delegate(L);
  return push_joined(L, 1);
}

/* ------------------------------------------------------------ stringprep */

/*
** Push profile prof's result for s[0..len), as stock's call
** profile(part, strict) would return it: a string, or nil (0 returned).
** *same is set when the result is a string byte-identical to the input.
** strict is the stack index of the strict argument (nil, none or a boolean).
*/
static int prep_part(lua_State *L, int prof, int strict, const char *s, size_t len, int *same) {
  const Preps *pr = (const Preps *)lua_touserdata(L, lua_upvalueindex(UV_PREPS));
  const unsigned short *map = pr->map[lua_toboolean(L, strict) ? 1 : 0][prof];
  size_t i;
  int fail = 0, changed = 0;
  *same = 0;
  if (len < PREP_MAXLEN) {
    for (i = 0; i < len; i++) {
      unsigned char c = (unsigned char)s[i];
      if (c >= 128 || map[c] == MAP_SLOW) break;
      if (map[c] == MAP_FAIL) fail = 1;
      else if (map[c] != c) changed = 1;
    }
    if (i == len) {
      if (fail) {
        lua_pushnil(L);
        return 0;
      }
      if (!changed) {
        lua_pushlstring(L, s, len);
        *same = 1;
      } else {
        char buf[PREP_MAXLEN];
        for (i = 0; i < len; i++) buf[i] = (char)map[(unsigned char)s[i]];
        lua_pushlstring(L, buf, len);
      }
      return 1;
    }
  }
  lua_pushvalue(L, lua_upvalueindex(UV_PROF + prof));
  lua_pushlstring(L, s, len);
  lua_pushvalue(L, strict);
  lua_call(L, 2, 1);
  if (lua_isnil(L, -1)) return 0;
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t rl;
    const char *r = lua_tolstring(L, -1, &rl);
    *same = rl == len && memcmp(r, s, len) == 0;
  }
  return 1;
}

/*
** The work of prepped_split(jid, strict), with jid a string s: pushes node,
** host and resource (nil where absent) and returns 1, or pushes nothing
** and returns 0 when stock returns nothing. *same: all three parts came
** back unchanged and the host lost no trailing dot, so the prepped JID is s.
** *plain: all three results are strings or nil (what join can concatenate
** without help).
*/
static int prepped(lua_State *L, const char *s, size_t len, int strict, int *same, int *plain) {
  Parts p;
  size_t hl;
  int top = lua_gettop(L), sh, sn = 1, sr = 1;
  if (!parse(s, len, &p)) return 0;
  hl = p.hl;
  if (hl == 1 && s[p.hs] == '.') return 0;
  if (s[p.hs + hl - 1] == '.') hl--; /* strip the empty root label */
  if (!prep_part(L, PROF_NAME, strict, s + p.hs, hl, &sh)) goto fail;
  if (p.nl == 0) lua_pushnil(L);
  else if (!prep_part(L, PROF_NODE, strict, s, p.nl, &sn)) goto fail;
  lua_rotate(L, top + 1, 1); /* host, node -> node, host */
  if (p.rl == 0) lua_pushnil(L);
  else if (!prep_part(L, PROF_RES, strict, s + p.rs, p.rl, &sr)) goto fail;
  *same = sh && sn && sr && hl == p.hl;
  *plain = 1;
  for (int i = 1; i <= 3; i++) {
    int t = lua_type(L, top + i);
    if (t != LUA_TSTRING && t != LUA_TNIL) *plain = 0;
  }
  return 1;
fail:
  lua_settop(L, top);
  return 0;
}

/* strict must be nil, none or a boolean; anything else goes to stock. */
static int strict_ok(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TNONE || t == LUA_TNIL || t == LUA_TBOOLEAN;
}

/* prepped_split(jid, strict): node, host, resource, stringprepped; nothing if invalid. */
static int l_prepped_split(lua_State *L) {
  const char *s = NULL;
  size_t len = 0;
  int same, plain, k = jid_arg(L, 1, &s, &len);
  if (k < 0 || !strict_ok(L, 2)) return delegate(L);
  if (k == 0) return 0;
  lua_settop(L, 2);
  return prepped(L, s, len, 2, &same, &plain) ? 3 : 0;
}

/* prep(jid, strict): the stringprepped JID; nothing if invalid. */
static int l_prep(lua_State *L) {
  const char *s = NULL;
  size_t len = 0;
  int same, plain, k = jid_arg(L, 1, &s, &len);
  if (k < 0 || !strict_ok(L, 2)) return delegate(L);
  if (k == 0) return 0;
  lua_settop(L, 2);
  if (!prepped(L, s, len, 2, &same, &plain)) return 0;
  if (same) {
    lua_settop(L, 1);
    return 1;
  }
  if (!plain) { /* a profile returned something join must concatenate: stock's job */
    lua_settop(L, 2);
    return delegate(L);
  }
  /* stack: 1 jid, 2 strict, 3 node, 4 host, 5 resource */
  return push_joined(L, 3);
}

/* ------------------------------------------------------- escaping */

/* XEP-0106 escapes, as util.jid's tables hold them. */
static const char *escape_of(unsigned char c) {
  switch (c) {
    case ' ': return "\\20";
    case '"': return "\\22";
    case '&': return "\\26";
    case '\'': return "\\27";
    case '/': return "\\2f";
    case ':': return "\\3a";
    case '<': return "\\3c";
    case '>': return "\\3e";
    case '@': return "\\40";
    default: return NULL;
  }
}

static int is_hex(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/*
** The character the escape sequence "\\" p[0] p[1] stands for, or -1. The
** stock tables' keys are lowercase: "\\2F" is not an escape.
*/
static int unescape_of(const char *p) {
  static const char codes[][3] = {
    {'2', '0', ' '}, {'2', '2', '"'}, {'2', '6', '&'}, {'2', '7', '\''}, {'2', 'f', '/'},
    {'3', 'a', ':'}, {'3', 'c', '<'}, {'3', 'e', '>'}, {'4', '0', '@'}, {'5', 'c', '\\'}
  };
  size_t i;
  for (i = 0; i < sizeof codes / sizeof codes[0]; i++)
    if (p[0] == codes[i][0] && p[1] == codes[i][1]) return (unsigned char)codes[i][2];
  return -1;
}

/* Is s[i..] "\" followed by two hex digits (what "\\%x%x" matches)? */
static int at_code(const char *s, size_t len, size_t i) {
  return s[i] == '\\' && i + 2 < len && is_hex((unsigned char)s[i + 1]) && is_hex((unsigned char)s[i + 2]);
}

/*
** The argument of escape and unescape, which stock reads as "s and
** s:gsub(...)": 1 with the string in *s, *len; 0 for nil or false (none
** counts as nil), left as the one result; -1 for anything else, stock's to
** handle.
*/
static int escape_arg(lua_State *L, const char **s, size_t *len) {
  int t = lua_type(L, 1);
  if (t == LUA_TNONE || t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, 1))) {
    lua_settop(L, 1);
    return 0;
  }
  if (t != LUA_TSTRING) return -1;
  *s = lua_tolstring(L, 1, len);
  return 1;
}

/*
** escape(s): s:gsub("\\%x%x", backslash_escapes):gsub("[\"&'/:<>@ ]", escapes).
** The first pass turns an existing escape sequence "\xy" into "\5cxy"; its
** output has none of the characters the second pass replaces, so both
** passes run together here.
*/
static int l_escape(lua_State *L) {
  size_t len, i;
  const char *s;
  luaL_Buffer b;
  int k = escape_arg(L, &s, &len);
  if (k <= 0) return k < 0 ? delegate(L) : 1;
  luaL_buffinit(L, &b);
  for (i = 0; i < len;) {
    const char *e;
    if (at_code(s, len, i)) {
      if (unescape_of(s + i + 1) >= 0) luaL_addstring(&b, "\\5c");
      else luaL_addchar(&b, '\\');
      luaL_addlstring(&b, s + i + 1, 2);
      i += 3;
    } else if ((e = escape_of((unsigned char)s[i])) != NULL) {
      luaL_addlstring(&b, e, 3);
      i++;
    } else {
      luaL_addchar(&b, s[i]);
      i++;
    }
  }
  luaL_pushresult(&b);
  return 1;
}

/* unescape(s): s:gsub("\\%x%x", unescapes). */
static int l_unescape(lua_State *L) {
  size_t len, i;
  const char *s;
  luaL_Buffer b;
  int k = escape_arg(L, &s, &len);
  if (k <= 0) return k < 0 ? delegate(L) : 1;
  luaL_buffinit(L, &b);
  for (i = 0; i < len;) {
    int c;
    if (at_code(s, len, i) && (c = unescape_of(s + i + 1)) >= 0) {
      luaL_addchar(&b, (char)c);
      i += 3;
    } else {
      luaL_addchar(&b, s[i]);
      i++;
    }
  }
  luaL_pushresult(&b);
  return 1;
}

/* ------------------------------------------------------------ new() */

/*
** Call profile fn (at index fn) on s with strict; returns 1 and leaves the
** result on the stack, or 0 and nothing when the call raised.
*/
static int probe(lua_State *L, int fn, const char *s, size_t len, int strict) {
  lua_pushvalue(L, fn);
  lua_pushlstring(L, s, len);
  if (strict) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/*
** Strings whose shape a profile with rules about whole names (IDNA's label
** length, hyphens, "xn--" prefixes, empty labels) would treat differently
** from their characters: each must come out as its characters do.
*/
static const char *const shapes[] = {
  "-a", "a-", "a--b", "xn--a", "xn--", "XN--ZZ", "a..b", ".a", "a.", "..", "-", "0",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 64 */
  NULL
};

/* Does the profile give the per-character answer for s? */
static int shape_ok(lua_State *L, int fn, int strict, const unsigned short *map, const char *s) {
  char want[PREP_MAXLEN];
  size_t len = strlen(s), i, rl;
  int fail = 0, ok;
  const char *r;
  for (i = 0; i < len; i++) {
    unsigned short m = map[(unsigned char)s[i]];
    if (m == MAP_SLOW) return 1; /* never short-cut anyway */
    if (m == MAP_FAIL) fail = 1;
    else want[i] = (char)m;
  }
  if (!probe(L, fn, s, len, strict)) return 0;
  if (fail) {
    ok = lua_isnil(L, -1);
  } else {
    ok = lua_type(L, -1) == LUA_TSTRING;
    r = lua_tolstring(L, -1, &rl);
    ok = ok && rl == len && memcmp(r, want, len) == 0;
  }
  lua_pop(L, 1);
  return ok;
}

/*
** Learn one profile's answer for every ASCII byte, then check that whole
** strings follow the per-character rule; any doubt leaves bytes MAP_SLOW.
*/
static void learn(lua_State *L, int fn, int strict, unsigned short *map) {
  char ok[128], want[128], probe3[3];
  size_t n = 0, i;
  int first_ok = -1;
  for (i = 0; i < 128; i++) {
    char c = (char)i;
    map[i] = MAP_SLOW;
    if (!probe(L, fn, &c, 1, strict)) continue;
    if (lua_isnil(L, -1)) {
      map[i] = MAP_FAIL;
    } else if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) == 1) {
      unsigned char r = (unsigned char)lua_tostring(L, -1)[0];
      if (r < 128) map[i] = r;
    }
    lua_pop(L, 1);
  }
  /* All passing bytes in one string: the result must be their mappings. */
  for (i = 0; i < 128; i++) {
    if (map[i] < 128) {
      if (first_ok < 0) first_ok = (int)i;
      ok[n] = (char)i;
      want[n++] = (char)map[i];
    }
  }
  if (n > 0) {
    size_t rl;
    const char *r;
    int good = probe(L, fn, ok, n, strict);
    if (good) {
      good = lua_type(L, -1) == LUA_TSTRING;
      r = lua_tolstring(L, -1, &rl);
      good = good && rl == n && memcmp(r, want, n) == 0;
      lua_pop(L, 1);
    }
    if (!good) {
      for (i = 0; i < 128; i++) map[i] = MAP_SLOW;
      return;
    }
  }
  /* A failing byte between passing ones must fail the string. */
  for (i = 0; i < 128; i++) {
    if (map[i] != MAP_FAIL) continue;
    if (first_ok < 0) {
      map[i] = MAP_SLOW;
      continue;
    }
    probe3[0] = probe3[2] = (char)first_ok;
    probe3[1] = (char)i;
    if (!probe(L, fn, probe3, 3, strict)) {
      map[i] = MAP_SLOW;
      continue;
    }
    if (!lua_isnil(L, -1)) map[i] = MAP_SLOW;
    lua_pop(L, 1);
  }
  /* Whole-name rules: any sign of one, and the profile is never short-cut. */
  for (i = 0; shapes[i] != NULL; i++) {
    if (!shape_ok(L, fn, strict, map, shapes[i])) {
      for (i = 0; i < 128; i++) map[i] = MAP_SLOW;
      return;
    }
  }
}

static const luaL_Reg jid_funcs[] = {
  {"split", l_split},
  {"bare", l_bare},
  {"prepped_split", l_prepped_split},
  {"join", l_join},
  {"prep", l_prep},
  {"compare", l_compare},
  {"node", l_node},
  {"host", l_host},
  {"resource", l_resource},
  {"escape", l_escape},
  {"unescape", l_unescape},
  {NULL, NULL}
};

static const char *const prof_names[PROF_COUNT] = {"nodeprep", "nameprep", "resourceprep"};

/*
** new{ nodeprep =, nameprep =, resourceprep =, stock = }: a table of
** util.jid's functions. stock is the stock util.jid table: each function
** falls back to its namesake there.
*/
static int l_new(lua_State *L) {
  Preps *pr;
  const luaL_Reg *r;
  int i, strict;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  for (i = 0; i < PROF_COUNT; i++) {
    if (lua_getfield(L, 1, prof_names[i]) != LUA_TFUNCTION)
      return luaL_error(L, "brisk.jid.new: %s must be a function", prof_names[i]);
  }
  if (lua_getfield(L, 1, "stock") != LUA_TTABLE)
    return luaL_error(L, "brisk.jid.new: stock must be the util.jid table");
  /* stack: 1 opts, 2 nodeprep, 3 nameprep, 4 resourceprep, 5 stock */
  for (r = jid_funcs; r->name; r++) {
    if (lua_getfield(L, 5, r->name) != LUA_TFUNCTION)
      return luaL_error(L, "brisk.jid.new: stock.%s must be a function", r->name);
    lua_pop(L, 1);
  }
  pr = (Preps *)lua_newuserdatauv(L, sizeof(Preps), 0); /* 6 */
  for (strict = 0; strict < 2; strict++)
    for (i = 0; i < PROF_COUNT; i++)
      learn(L, 2 + i, strict, pr->map[strict][i]);
  lua_newtable(L); /* 7: the result */
  for (r = jid_funcs; r->name; r++) {
    lua_pushvalue(L, 6);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 4);
    lua_getfield(L, 5, r->name);
    lua_pushcclosure(L, r->func, UV_COUNT);
    lua_setfield(L, 7, r->name);
  }
  return 1;
}

static const luaL_Reg module_funcs[] = {
  {"new", l_new},
  {NULL, NULL}
};

BRISK_EXPORT int luaopen_brisk_jid(lua_State *L) {
  luaL_newlib(L, module_funcs);
  brisk_set_version(L);
  return 1;
}
