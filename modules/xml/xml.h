/*
** xml.h — what the parts of brisk.xml (xml.c, parse.c, serialize.c) share.
*/
#ifndef BRISK_XML_H
#define BRISK_XML_H

#include "brisk.h"

/*
** Each part registers its functions into the module table, which is at
** stack index "mod" when called from luaopen_brisk_xml.
*/
void brisk_xml_open_parser(lua_State *L, int mod);
void brisk_xml_open_serializer(lua_State *L, int mod);

/*
** Patch the util.stanza module table at index "st" with Brisk's C methods
** and push a function that undoes exactly that patch.
*/
void brisk_xml_install_serializer(lua_State *L, int st);

/*
** Patch util.xmppstream (every name it is loaded under) so that its "new"
** is brisk.xml.new from the module table at index "mod"; push a function
** that undoes exactly that patch. Returns the number of tables patched.
*/
int brisk_xml_install_parser(lua_State *L, int mod);

#endif
