/*
** expat_noop.c — benchmark only (built into build/bench/, never shipped):
** libexpat parsing bytes with the configuration brisk.xml uses (namespace
** separator "\1") and empty handlers, building nothing. Its rate is the
** ceiling for any expat-based parser of the same bytes (bench/xml_parse.lua).
**
** parse(bytes): bytes is a string, or a list of strings fed one XML_Parse
** call each. Returns true, or nil and expat's error message.
*/
#include <expat.h>

#include "brisk.h"

static void XMLCALL noop_start(void *u, const XML_Char *n, const XML_Char **a) {
  BRISK_UNUSED(u); BRISK_UNUSED(n); BRISK_UNUSED(a);
}
static void XMLCALL noop_end(void *u, const XML_Char *n) {
  BRISK_UNUSED(u); BRISK_UNUSED(n);
}
static void XMLCALL noop_chars(void *u, const XML_Char *s, int len) {
  BRISK_UNUSED(u); BRISK_UNUSED(s); BRISK_UNUSED(len);
}

/* Owns the parser, so that a Lua error (a bad chunk) cannot leak it. */
static int parser_gc(lua_State *L) {
  XML_Parser *pp = (XML_Parser *)lua_touserdata(L, 1);
  if (*pp) XML_ParserFree(*pp);
  *pp = NULL;
  return 0;
}

static int l_parse(lua_State *L) {
  XML_Parser *pp;
  enum XML_Status st = XML_STATUS_OK;
  lua_Integer i, n;
  int list = lua_type(L, 1) == LUA_TTABLE;
  if (!list) luaL_checkstring(L, 1);
  pp = (XML_Parser *)lua_newuserdatauv(L, sizeof(XML_Parser), 0);
  *pp = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, parser_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  *pp = XML_ParserCreateNS(NULL, '\1');
  if (*pp == NULL) return luaL_error(L, "XML_ParserCreate failed");
  XML_SetElementHandler(*pp, noop_start, noop_end);
  XML_SetCharacterDataHandler(*pp, noop_chars);
  n = list ? (lua_Integer)lua_rawlen(L, 1) : 1;
  for (i = 1; i <= n && st == XML_STATUS_OK; i++) {
    size_t len;
    const char *data;
    if (list) {
      lua_rawgeti(L, 1, i);
      data = luaL_checklstring(L, -1, &len);
    } else {
      data = lua_tolstring(L, 1, &len);
    }
    st = XML_Parse(*pp, data, (int)len, 0);
    if (list) lua_pop(L, 1);
  }
  if (st == XML_STATUS_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_pushfail(L);
  lua_pushstring(L, XML_ErrorString(XML_GetErrorCode(*pp)));
  return 2;
}

BRISK_EXPORT int luaopen_brisk_bench_expat_noop(lua_State *L) {
  lua_pushcfunction(L, l_parse);
  return 1;
}
