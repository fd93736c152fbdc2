/*
** presence.c — opener of brisk.presence, the C core behind mod_brisk_iot:
** the device presence engine (engine.c) with its rule compiler (rules.c),
** JID globs (glob.c) and Standard Webhooks signing (sign.c).
*/
#include "presence.h"

BRISK_EXPORT int luaopen_brisk_presence(lua_State *L) {
  int mod;
  lua_newtable(L);
  mod = lua_gettop(L);
  presence_open_glob(L, mod);
  presence_open_engine(L, mod);
  presence_open_sign(L, mod);
  brisk_set_version(L);
  return 1;
}
