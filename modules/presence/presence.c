/*
** presence.c — opener of brisk.presence: the device presence engine
** (engine.c) and the JID glob compiler (glob.c) behind mod_brisk_iot.
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
