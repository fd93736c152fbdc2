/*
** bench_probe — a bench-only Lua C module loaded into the benchmark's
** Prosody servers by bench/e2e/mod_bench_probe.lua (never by Brisk itself).
** It answers what collectgarbage("count") cannot: how much C memory a
** server holds outside the Lua heap (libexpat parsers, OpenSSL), and how
** many bytes Lua allocates per stanza.
**
**   probe.mallinfo()  -> { inuse, free, mmapped, arena }       (glibc mallinfo2, bytes)
**   probe.count_lua() -> true: wrap the Lua state's allocator so that
**                        probe.lua() can say how much of malloc's in-use
**                        memory is Lua's, chunk headers included
**   probe.lua()       -> { chunks = bytes of the malloc chunks of blocks allocated
**                          through the Lua allocator, requested = the bytes those
**                          blocks were asked for (both relative to count_lua's
**                          call), allocated = bytes asked for since count_lua
**                          (new or growing blocks), allocations = their number }
**
** Blocks through the Lua allocator are Lua's own objects (what
** collectgarbage("count") counts) plus any C library's that allocates
** through lua_getallocf() (which the GC does not count): requested - count
** is the latter, chunks - requested is malloc's headers and rounding.
**   probe.trim()      -> malloc_trim(0)
**
** The counting allocator adds one malloc_usable_size() per allocation and
** free; it is installed only when the benchmark asks (mod_bench_probe's
** bench_probe_count_lua option), so the CPU figures of the other runs are
** those of an unmodified allocator.
*/
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>

/* glibc's chunk header: usable size + this is what a chunk takes. */
#define CHUNK_HEADER sizeof(size_t)

static lua_Alloc orig_alloc;
static void *orig_ud;
static int64_t lua_chunks;        /* chunk bytes of blocks Lua holds, relative */
static int64_t lua_requested;     /* requested bytes of those blocks, relative */
static uint64_t lua_allocated;    /* bytes requested by new or growing blocks */
static uint64_t lua_allocations;

static size_t chunk(void *p) { return p ? malloc_usable_size(p) + CHUNK_HEADER : 0; }

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  size_t before = chunk(ptr);
  void *r = orig_alloc(ud, ptr, osize, nsize);
  if (nsize == 0) {                 /* a free: the block is gone */
    if (ptr) { lua_chunks -= (int64_t)before; lua_requested -= (int64_t)osize; }
    return r;
  }
  if (r == NULL) return r;          /* failed: the old block is unchanged */
  lua_chunks += (int64_t)chunk(r) - (int64_t)before;
  lua_requested += (int64_t)nsize - (ptr ? (int64_t)osize : 0);
  if (ptr == NULL) {                /* osize is a type tag for new blocks */
    lua_allocated += nsize;
    lua_allocations++;
  } else if (nsize > osize) {
    lua_allocated += nsize - osize;
    lua_allocations++;
  }
  return r;
}

static int l_mallinfo(lua_State *L) {
  struct mallinfo2 mi = mallinfo2();
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)(mi.uordblks + mi.hblkhd));
  lua_setfield(L, -2, "inuse");
  lua_pushinteger(L, (lua_Integer)mi.fordblks);
  lua_setfield(L, -2, "free");
  lua_pushinteger(L, (lua_Integer)mi.hblkhd);
  lua_setfield(L, -2, "mmapped");
  lua_pushinteger(L, (lua_Integer)(mi.arena + mi.hblkhd));
  lua_setfield(L, -2, "arena");
  return 1;
}

static int l_count_lua(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (f != counting_alloc) {
    orig_alloc = f;
    orig_ud = ud;
    lua_chunks = 0;
    lua_requested = 0;
    lua_allocated = 0;
    lua_allocations = 0;
    lua_setallocf(L, counting_alloc, ud);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_lua(lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) != counting_alloc) return 0;
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)lua_chunks);
  lua_setfield(L, -2, "chunks");
  lua_pushinteger(L, (lua_Integer)lua_requested);
  lua_setfield(L, -2, "requested");
  lua_pushinteger(L, (lua_Integer)lua_allocated);
  lua_setfield(L, -2, "allocated");
  lua_pushinteger(L, (lua_Integer)lua_allocations);
  lua_setfield(L, -2, "allocations");
  return 1;
}

static int l_trim(lua_State *L) {
  lua_pushboolean(L, malloc_trim(0));
  return 1;
}

int luaopen_bench_probe(lua_State *L) {
  static const luaL_Reg fns[] = {
    { "mallinfo", l_mallinfo }, { "count_lua", l_count_lua }, { "lua", l_lua },
    { "trim", l_trim }, { NULL, NULL }
  };
  luaL_newlib(L, fns);
  return 1;
}
