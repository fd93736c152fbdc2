/*
** serialize.c — brisk.xml's replacements for util.stanza's hot methods.
**
** brisk_xml_install_serializer patches util.stanza in place and pushes a
** function that undoes exactly what it patched, so unloading mod_brisk_xml
** restores stock behaviour.
*/
#include "xml.h"

/* Upvalues of the undo closure: 1 = util.stanza, 2 = its saved xml_escape. */
static int l_uninstall(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setfield(L, lua_upvalueindex(1), "xml_escape");
  return 0;
}

void brisk_xml_install_serializer(lua_State *L, int st) {
  st = lua_absindex(L, st);
  lua_pushvalue(L, st);
  lua_getfield(L, st, "xml_escape");
  lua_pushcclosure(L, l_uninstall, 2);
  lua_getfield(L, LUA_REGISTRYINDEX, "brisk.xml");
  lua_getfield(L, -1, "xml_escape");
  lua_setfield(L, st, "xml_escape");
  lua_pop(L, 1);
}

void brisk_xml_open_serializer(lua_State *L, int mod) {
  BRISK_UNUSED(L);
  BRISK_UNUSED(mod);
}
