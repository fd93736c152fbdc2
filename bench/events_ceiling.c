/*
** events_ceiling.c — benchmark only (built into build/bench/, never
** shipped): the fastest fire_event C can have, to show why util.events
** stays stock. ceiling(handlers) returns fire(name, data) that looks
** handlers[name] up in a plain table of handler arrays and calls each
** handler until one returns non-nil: no wrappers, no debug hook, no
** rebuilding, no checks; just the handler calls, made from C.
*/
#include "brisk.h"

static int fire(lua_State *L) {
  lua_Integer i, n;
  lua_settop(L, 2);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TTABLE) return 0;
  n = (lua_Integer)lua_rawlen(L, 3);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 3, i);
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
  }
  return 0;
}

static int ceiling(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushcclosure(L, fire, 1);
  return 1;
}

BRISK_EXPORT int luaopen_brisk_bench_events_ceiling(lua_State *L) {
  lua_pushcfunction(L, ceiling);
  return 1;
}
