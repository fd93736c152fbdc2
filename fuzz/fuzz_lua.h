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

/*
** Prosody's libraries come from BRISK_PROSODY_LIB (set by `make env`, the
** chosen Prosody's folder; Debian's 0.12 by default). Prosody 13's need its
** loader.lua first, as its own executable does. Brisk's Lua side (which
** puts the C cores in Prosody's place: lualib/brisk/patch/) comes from the
** checkout's lualib/, the targets running from its top folder.
*/
static lua_State *fuzz_lua_open(const char *modname, lua_CFunction opener,
                                const char *script, const char *key) {
  lua_State *L = luaL_newstate();
  const char *lib = getenv("BRISK_PROSODY_LIB");
  luaL_openlibs(L);
  lua_pushstring(L, lib && *lib ? lib : "/usr/lib/prosody");
  lua_setglobal(L, "BRISK_PROSODY_LIB");
  fuzz_lua_check(L, luaL_dostring(L,
      "package.path = 'lualib/?.lua;' .. BRISK_PROSODY_LIB .. '/?.lua;' .. package.path\n"
      "package.cpath = BRISK_PROSODY_LIB .. '/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;' .. package.cpath\n"
      "if package.searchpath('loader', BRISK_PROSODY_LIB .. '/?.lua') then require 'loader' end\n"
      "BRISK_PROSODY_LIB = nil"));
  luaL_requiref(L, modname, opener, 0);
  lua_pop(L, 1);
  fuzz_lua_check(L, luaL_loadstring(L, script));
  fuzz_lua_check(L, lua_pcall(L, 0, 1, 0));
  lua_setfield(L, LUA_REGISTRYINDEX, key);
  return L;
}

#endif
