/*
** brisk.h — small helpers shared by every Brisk shared object.
**
** Only static inline functions and macros live here: each shared object is
** self-contained (one luaopen_* each) and none exports more than its opener.
*/
#ifndef BRISK_H
#define BRISK_H

#include <stddef.h>
#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 504
#error "Brisk needs the Lua 5.4 C API"
#endif

#define BRISK_VERSION "0.1.0"

/*
** Shared objects are built with -fvisibility=hidden, so the functions the
** parts of one module share stay internal; only its opener is exported.
*/
#define BRISK_EXPORT __attribute__((visibility("default")))

/* Mark a parameter as deliberately unused. */
#define BRISK_UNUSED(x) ((void)(x))

/*
** Set the field "_VERSION" of the table on top of the stack, so that every
** module reports which Brisk it came from.
*/
static inline void brisk_set_version(lua_State *L) {
  lua_pushliteral(L, BRISK_VERSION);
  lua_setfield(L, -2, "_VERSION");
}

/*
** require(name) without raising: pushes the module's value, or nil when the
** module cannot be loaded (the error is discarded). Used to find Prosody's
** own libraries under either naming scheme (util.* and prosody.util.*).
*/
static inline int brisk_try_require(lua_State *L, const char *name) {
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 0;
  }
  return !lua_isnil(L, -1);
}

/*
** Push Prosody's library "util.<name>", trying Prosody 13's "prosody.util.*"
** name first when it is already loaded, then 0.12's "util.*". Returns 1 and
** pushes the module, or returns 0 and pushes nil.
*/
static inline int brisk_require_prosody(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushfstring(L, "prosody.%s", name);
  lua_rawget(L, -2);
  if (!lua_isnil(L, -1)) {
    lua_remove(L, -2);
    return 1;
  }
  lua_pop(L, 2);
  if (brisk_try_require(L, name))
    return 1;
  lua_pop(L, 1);
  lua_pushfstring(L, "prosody.%s", name);
  {
    const char *pname = lua_tostring(L, -1);
    int ok;
    lua_getglobal(L, "require");
    lua_pushstring(L, pname);
    ok = lua_pcall(L, 1, 1, 0) == LUA_OK;
    lua_remove(L, -2); /* the name */
    if (!ok) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return 0;
    }
  }
  return !lua_isnil(L, -1);
}

#endif
