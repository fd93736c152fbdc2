/*
** xml.c — brisk.xml's opener.
**
** brisk.xml is Brisk's XML for Prosody, in C: a libexpat stream parser that
** builds util.stanza's tables (stream.c: the stream object; parse.c: what
** expat reports, turned into stanzas; memory.c: the parsers' counted
** memory) and a serializer for util.stanza (serialize.c). It exports
** factories and pure functions only: which Prosody functions they replace,
** and putting them in place, is the Lua side's job
** (lualib/brisk/patch/xml.lua, used by mod_brisk_xml).
*/
#include "xml.h"

BRISK_EXPORT int luaopen_brisk_xml(lua_State *L) {
  lua_newtable(L);
  brisk_set_version(L);
  xml_open_stream(L, lua_gettop(L));
  xml_open_serializer(L, lua_gettop(L));
  return 1;
}
