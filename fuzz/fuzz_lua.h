/*
** fuzz_lua.h — the Lua state a differential fuzz target runs in.
**
** Targets that compare Brisk with stock Prosody need Prosody's libraries (and
** LuaExpat) as Debian installs them, Brisk's C module linked into the
** target, and a Lua script that does the comparison. fuzz_lua_open builds
** that state once and keeps the script's result in the registry under key.
*/
#ifndef BRISK_FUZZ_LUA_H
#define BRISK_FUZZ_LUA_H

#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* Any failure here is a broken harness, not a finding: stop loudly. */
static void fuzz_lua_check(lua_State *L, int status) {
  if (status != LUA_OK) {
    fprintf(stderr, "fuzz harness: %s\n", lua_tostring(L, -1));
    abort();
  }
}

static lua_State *fuzz_lua_open(const char *modname, lua_CFunction opener,
                                const char *script, const char *key) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  fuzz_lua_check(L, luaL_dostring(L,
      "package.path = '/usr/lib/prosody/?.lua;' .. package.path\n"
      "package.cpath = '/usr/lib/prosody/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;' .. package.cpath"));
  luaL_requiref(L, modname, opener, 0);
  lua_pop(L, 1);
  fuzz_lua_check(L, luaL_loadstring(L, script));
  fuzz_lua_check(L, lua_pcall(L, 0, 1, 0));
  lua_setfield(L, LUA_REGISTRYINDEX, key);
  return L;
}

#endif
