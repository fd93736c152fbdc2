/*
** events.c — brisk.events: util.events' fire_event in C.
**
** An util.events object keeps its state in the upvalues of the closures
** new() returned: the handlers table (event -> array of handlers, rebuilt
** on demand by its __index), the map of per-event wrappers, and two
** variables, the global wrappers and the debug hook. Brisk replaces only
** fire_event, the function Prosody runs per stanza, by a C closure that
** reads that same state where it lives: the two tables directly, the two
** variables through the stock closures' upvalues, each time. Everything
** else stays stock's code, so an object keeps one state, whichever of its
** functions (stock's, captured before Brisk loaded, or Brisk's) is called,
** and Brisk can take over an object that already has handlers, and give it
** back, at any time.
**
** fire_event(spec) makes the closure. spec (all found by Lua):
**   stock    the object's stock fire_event
**   gw       the index of its upvalue global_wrappers
**   inner    its upvalue _fire_event, the stock handler loop
**   hook     the index of inner's upvalue active_debug_hook
**   handlers inner's upvalue handlers
**   wrappers fire_event's upvalue wrappers
**   call_error_prefix, call_error_suffix  stock's message for a handler that
**            cannot be called is prefix .. type name .. suffix (its position
**            in events.lua included)
**
** Exactness. With no wrapper for the event, no global wrapper and no debug
** hook, fire_event does what stock's does: handlers[event_name] (its __index,
** stock's, builds the array when missing), then for i = 1, #h: h[i](data),
** returning the first non-nil result; the array is read as it was when the
** loop started, so handlers added or removed by a handler take effect on
** the next fire, as in stock. Otherwise (wrappers, a debug hook, a handlers
** entry that is not a plain table) the call goes to stock's fire_event,
** which reads the same state. Handlers may yield (Prosody's async runners
** do): the loop continues in a continuation. A handler's error passes
** through untouched; a handler that cannot be called raises stock's message.
*/
#include "brisk.h"

#define UV_STOCK    1
#define UV_INNER    2
#define UV_HANDLERS 3
#define UV_WRAPPERS 4
#define UV_PREFIX   5
#define UV_SUFFIX   6
#define UV_GW       7
#define UV_HOOK     8
#define UV_COUNT    8

/* Stack of a fire: 1 event_name, 2 event_data, 3 the handler array, 4 #h. */

/* Is upvalue n of the function at upvalue index f truthy? */
static int upvalue_true(lua_State *L, int f, int n) {
  int on;
  if (lua_getupvalue(L, lua_upvalueindex(f), n) == NULL) return 1; /* be safe: stock decides */
  on = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return on;
}

static int pass_k(lua_State *L, int status, lua_KContext ctx) {
  BRISK_UNUSED(status);
  return lua_gettop(L) - (int)ctx;
}

/* Hand the fire to stock's fire_event; return its results. */
static int pass(lua_State *L) {
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(UV_STOCK));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_callk(L, 2, LUA_MULTRET, 2, pass_k);
  return pass_k(L, LUA_OK, 2);
}

/*
** Stock's error for calling the value at idx from its handler loop. The
** type name follows luaT_objtypename: a table's or userdata's __name, if a
** string, else the basic type.
*/
static int call_error(lua_State *L, int idx) {
  const char *name = luaL_typename(L, idx);
  int t = lua_type(L, idx);
  if ((t == LUA_TTABLE || t == LUA_TUSERDATA) && luaL_getmetafield(L, idx, "__name") != LUA_TNIL) {
    if (lua_type(L, -1) == LUA_TSTRING) name = lua_tostring(L, -1);
  }
  lua_pushfstring(L, "%s%s%s", lua_tostring(L, lua_upvalueindex(UV_PREFIX)), name,
                  lua_tostring(L, lua_upvalueindex(UV_SUFFIX)));
  return lua_error(L);
}

static int fire_loop(lua_State *L, lua_Integer i);

static int fire_k(lua_State *L, int status, lua_KContext ctx) {
  BRISK_UNUSED(status);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  return fire_loop(L, (lua_Integer)ctx + 1);
}

static int fire_loop(lua_State *L, lua_Integer i) {
  lua_Integer n = lua_tointeger(L, 4);
  for (; i <= n; i++) {
    if (lua_rawgeti(L, 3, i) != LUA_TFUNCTION) {
      if (luaL_getmetafield(L, -1, "__call") == LUA_TNIL) return call_error(L, -1);
      lua_pop(L, 1);
    }
    lua_pushvalue(L, 2);
    lua_callk(L, 1, 1, (lua_KContext)i, fire_k);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
  }
  return 0;
}

/* fire_event(event_name, event_data) */
static int l_fire(lua_State *L) {
  int t;
  lua_settop(L, 2);
  lua_pushvalue(L, 1);
  lua_rawget(L, lua_upvalueindex(UV_WRAPPERS));
  t = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (t || upvalue_true(L, UV_STOCK, (int)lua_tointeger(L, lua_upvalueindex(UV_GW)))
      || upvalue_true(L, UV_INNER, (int)lua_tointeger(L, lua_upvalueindex(UV_HOOK))))
    return pass(L);
  lua_pushvalue(L, 1);
  t = lua_gettable(L, lua_upvalueindex(UV_HANDLERS)); /* 3 */
  if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, 3))) return 0;
  if (t != LUA_TTABLE || lua_getmetatable(L, 3)) return pass(L);
  lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 3)); /* 4 */
  return fire_loop(L, 1);
}

static const char *const spec_tables[] = {"stock", "inner", "handlers", "wrappers",
                                          "call_error_prefix", "call_error_suffix", "gw", "hook"};
static const int spec_types[] = {LUA_TFUNCTION, LUA_TFUNCTION, LUA_TTABLE, LUA_TTABLE,
                                 LUA_TSTRING, LUA_TSTRING, LUA_TNUMBER, LUA_TNUMBER};

/* fire_event(spec): a C fire_event for the stock events object spec describes. */
static int l_fire_event(lua_State *L) {
  int i;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  for (i = 0; i < UV_COUNT; i++) {
    if (lua_getfield(L, 1, spec_tables[i]) != spec_types[i])
      return luaL_error(L, "brisk.events.fire_event: spec.%s must be a %s", spec_tables[i],
                        lua_typename(L, spec_types[i]));
  }
  for (i = 0; i < 2; i++) {
    int n = (int)lua_tointeger(L, 2 + UV_GW - 1 + i);
    if (lua_getupvalue(L, 2 + (i == 0 ? UV_STOCK : UV_INNER) - 1, n) == NULL)
      return luaL_error(L, "brisk.events.fire_event: spec.%s is no upvalue", spec_tables[UV_GW - 1 + i]);
    lua_pop(L, 1);
  }
  lua_pushcclosure(L, l_fire, UV_COUNT);
  return 1;
}

static const luaL_Reg module_funcs[] = {
  {"fire_event", l_fire_event},
  {NULL, NULL}
};

BRISK_EXPORT int luaopen_brisk_events(lua_State *L) {
  luaL_newlib(L, module_funcs);
  brisk_set_version(L);
  return 1;
}
