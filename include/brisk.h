/*
** brisk.h — small helpers shared by every Brisk shared object.
**
** Only static inline functions and macros live here: each shared object is
** self-contained (one luaopen_* each) and none exports more than its opener.
*/
#ifndef BRISK_H
#define BRISK_H

#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
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

#define BRISK_NORETURN __attribute__((noreturn))

/*
** Raise a Lua error with a formatted message (as luaL_error, position
** included) from a helper that returns nothing: declared noreturn, so that
** neither the compiler nor static analysis thinks it comes back. Lua
** functions themselves use "return luaL_error(...)".
*/
static inline BRISK_NORETURN void brisk_raise(lua_State *L, const char *fmt, ...) {
  va_list ap;
  luaL_where(L, 1);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  lua_error(L);
  abort(); /* not reached: lua_error does not return */
}

/*
** C memory through the Lua state's own allocator, for blocks a userdata
** owns and frees in its __gc. brisk_alloc resizes "p" (NULL: a new block)
** from osize to nsize bytes and returns NULL when out of memory (p is then
** still valid); nsize 0 frees. brisk_free(L, p, osize) is brisk_alloc to 0.
*/
static inline void *brisk_alloc(lua_State *L, void *p, size_t osize, size_t nsize) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  return f(ud, p, osize, nsize);
}

static inline void brisk_free(lua_State *L, void *p, size_t osize) {
  if (p != NULL) brisk_alloc(L, p, osize, 0);
}

/*
** Set the field "_VERSION" of the table on top of the stack, so that every
** module reports which Brisk it came from.
*/
static inline void brisk_set_version(lua_State *L) {
  lua_pushliteral(L, BRISK_VERSION);
  lua_setfield(L, -2, "_VERSION");
}

#endif
