/*
** xml.c — brisk.xml's opener and the XML escaping primitive.
**
** brisk.xml is one shared object made of three parts: this file (the module
** table and xml_escape), parse.c (the libexpat stream parser that replaces
** util.xmppstream) and serialize.c (stanza serialization for util.stanza).
*/
#include <string.h>

#include "xml.h"

/*
** The replacement for each of the five characters util.stanza escapes; every
** other byte, valid UTF-8 or not, is copied through unchanged, as stock does.
*/
static const char *escape_for(unsigned char c, size_t *len) {
  switch (c) {
    case '\'': *len = 6; return "&apos;";
    case '"':  *len = 6; return "&quot;";
    case '<':  *len = 4; return "&lt;";
    case '>':  *len = 4; return "&gt;";
    case '&':  *len = 5; return "&amp;";
    default:   *len = 0; return NULL;
  }
}

/*
** xml_escape(s): byte-identical to util.stanza.xml_escape, which is
** string.gsub(s, "['&<>\"]", table). Like gsub it accepts numbers (converted
** with Lua's own rules), and for any other type it raises the error stock
** raises (its local alias of gsub is named s_gsub, and it always passes one
** argument, so a missing one reads "got nil").
*/
static int l_xml_escape(lua_State *L) {
  size_t len, i, start = 0;
  const char *s;
  luaL_Buffer b;
  int t = lua_type(L, 1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    return luaL_error(L, "bad argument #1 to 's_gsub' (string expected, got %s)",
                      t == LUA_TNONE ? "nil" : luaL_typename(L, 1));
  s = lua_tolstring(L, 1, &len);
  /* Fast path: nothing to escape, return the string itself (no copy). */
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\'' || c == '"' || c == '<' || c == '>' || c == '&')
      break;
  }
  if (i == len) {
    lua_settop(L, 1);
    if (t == LUA_TNUMBER)
      lua_pushlstring(L, s, len); /* gsub returns a string, never a number */
    return 1;
  }
  luaL_buffinit(L, &b);
  for (; i < len; i++) {
    size_t elen;
    const char *e = escape_for((unsigned char)s[i], &elen);
    if (e) {
      luaL_addlstring(&b, s + start, i - start);
      luaL_addlstring(&b, e, elen);
      start = i + 1;
    }
  }
  luaL_addlstring(&b, s + start, len - start);
  luaL_pushresult(&b);
  return 1;
}

static int l_uninstall_nothing(lua_State *L) {
  BRISK_UNUSED(L);
  return 0;
}

/* Upvalues of the undo closure: the parser's and the serializer's undo
** functions; the parser is restored first (reverse order of install). */
static int l_uninstall(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_call(L, 0, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 0, 0);
  return 0;
}

/* opts[k] ~= false: absent or nil means yes, as Prosody's options do. */
static int opt_enabled(lua_State *L, const char *k) {
  int on;
  if (lua_isnoneornil(L, 1)) return 1;
  lua_getfield(L, 1, k);
  on = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);
  return on;
}

/*
** install([opts]): patch Prosody's libraries in this Lua state to use
** Brisk, and return a function that undoes the patch, plus a list naming
** what was replaced. opts.serialize = false leaves util.stanza alone,
** opts.parse = false leaves util.xmppstream alone.
*/
static int l_install(lua_State *L) {
  int serialize, parse, list;
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TTABLE);
  serialize = opt_enabled(L, "serialize");
  parse = opt_enabled(L, "parse");
  lua_settop(L, 1);
  lua_newtable(L);
  list = 2;
  if (!brisk_require_prosody(L, "util.stanza"))
    return luaL_error(L, "brisk.xml: cannot load util.stanza");
  if (serialize) {
    brisk_xml_install_serializer(L, -1);
    lua_pushliteral(L, "util.stanza serialization");
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
  } else {
    lua_pushcfunction(L, l_uninstall_nothing);
  }
  if (parse) {
    lua_getfield(L, LUA_REGISTRYINDEX, "brisk.xml");
    if (brisk_xml_install_parser(L, -1) > 0) {
      lua_pushliteral(L, "util.xmppstream.new");
      lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    }
    lua_remove(L, -2); /* the module table */
  } else {
    lua_pushcfunction(L, l_uninstall_nothing);
  }
  lua_pushcclosure(L, l_uninstall, 2);
  lua_pushvalue(L, list);
  return 2;
}

static const luaL_Reg xml_funcs[] = {
  {"xml_escape", l_xml_escape},
  {"install", l_install},
  {NULL, NULL}
};

BRISK_EXPORT int luaopen_brisk_xml(lua_State *L) {
  luaL_newlib(L, xml_funcs);
  brisk_set_version(L);
  brisk_xml_open_parser(L, lua_gettop(L));
  brisk_xml_open_serializer(L, lua_gettop(L));
  /* The parts find the module table (and each other's functions) here. */
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "brisk.xml");
  return 1;
}
