/*
** parse.c — brisk.xml's libexpat stream parser, a drop-in for util.xmppstream.
*/
#include "xml.h"

void brisk_xml_open_parser(lua_State *L, int mod) {
  BRISK_UNUSED(L);
  BRISK_UNUSED(mod);
}
