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
**                          (new or growing blocks), allocations = their number,
**                          by_tag = those bytes by the type tag of new blocks
**                          [0..14] (0: not a Lua object) and growth [15],
**                          raw_by_size = tag 0's bytes by size class, [k]:
**                          sizes in (2^(k-1), 2^k] }
**
** Blocks through the Lua allocator are Lua's own objects (what
** collectgarbage("count") counts) plus any C library's that allocates
** through lua_getallocf() (which the GC does not count): requested - count
** is the latter, chunks - requested is malloc's headers and rounding.
**   probe.allocated() -> the same "allocated" figure, as an integer
**   probe.trim()      -> malloc_trim(0)
**   probe.trace(min, max), probe.traces() -> see trace_block below
**
** The counting allocator adds one malloc_usable_size() per allocation and
** free; it is installed only when the benchmark asks (mod_bench_probe's
** bench_probe_count_lua option), so the CPU figures of the other runs are
** those of an unmodified allocator.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
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
/* Bytes of new blocks by the type tag Lua passes as osize (0: not an
** object: table arrays, string buffers, C libraries' blocks), and bytes of
** growth of existing blocks (slot 15). */
static uint64_t by_tag[16];
/* Bytes of new non-object blocks (tag 0) by size class: [k] holds blocks of
** 2^(k-1) < size <= 2^k bytes. */
static uint64_t raw_by_size[24];

/*
** Diagnostic (probe.trace(min, max)): record the C call stacks of new
** non-object blocks whose size is in [min, max], every 8th one, to find
** who allocates them. probe.traces() returns them, most frequent first.
*/
#define TRACE_DEPTH 8
#define TRACE_SLOTS 64
static size_t trace_min = 1, trace_max = 0;
static unsigned trace_tick;
static struct { void *pc[TRACE_DEPTH]; int n; uint64_t count, bytes; } traces[TRACE_SLOTS];

static void trace_block(size_t size) {
  void *pc[TRACE_DEPTH + 2];
  if (++trace_tick % 8 != 0) return;
  int n = backtrace(pc, TRACE_DEPTH + 2) - 2;   /* drop trace_block and counting_alloc */
  if (n <= 0) return;
  for (int i = 0; i < TRACE_SLOTS; i++) {
    if (traces[i].n == 0) {
      memcpy(traces[i].pc, pc + 2, (size_t)n * sizeof(void *));
      traces[i].n = n;
    }
    if (traces[i].n == n && memcmp(traces[i].pc, pc + 2, (size_t)n * sizeof(void *)) == 0) {
      traces[i].count++;
      traces[i].bytes += size;
      return;
    }
  }
}

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
    by_tag[osize < 15 ? osize : 14] += nsize;
    if (osize == 0) {
      int k = 0;
      if (nsize >= trace_min && nsize <= trace_max) trace_block(nsize);
      while (k < 23 && ((size_t)1 << k) < nsize) k++;
      raw_by_size[k] += nsize;
    }
  } else if (nsize > osize) {
    lua_allocated += nsize - osize;
    by_tag[15] += nsize - osize;
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
  lua_createtable(L, 16, 0);
  for (int i = 0; i < 16; i++) {
    lua_pushinteger(L, (lua_Integer)by_tag[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setfield(L, -2, "by_tag");
  lua_createtable(L, 24, 0);
  for (int i = 0; i < 24; i++) {
    lua_pushinteger(L, (lua_Integer)raw_by_size[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setfield(L, -2, "raw_by_size");
  return 1;
}

/* Bytes allocated so far (no table: the profiler's hook calls this). */
static int l_allocated(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lua_allocated);
  return 1;
}

static int l_trace(lua_State *L) {
  trace_min = (size_t)luaL_checkinteger(L, 1);
  trace_max = (size_t)luaL_checkinteger(L, 2);
  memset(traces, 0, sizeof traces);
  return 0;
}

static int l_traces(lua_State *L) {
  lua_newtable(L);
  for (int i = 0; i < TRACE_SLOTS && traces[i].n; i++) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char line[64];
    snprintf(line, sizeof line, "%llu blocks, %llu bytes:", (unsigned long long)traces[i].count * 8,
             (unsigned long long)traces[i].bytes * 8);
    luaL_addstring(&b, line);
    for (int j = 0; j < traces[i].n; j++) {
      Dl_info info;
      char where[300];
      if (dladdr(traces[i].pc[j], &info) && info.dli_fname) {
        const char *base = strrchr(info.dli_fname, '/');
        snprintf(where, sizeof where, " %s(%s+0x%lx)", base ? base + 1 : info.dli_fname,
                 info.dli_sname ? info.dli_sname : "",
                 (unsigned long)((char *)traces[i].pc[j] - (char *)(info.dli_sname ? info.dli_saddr : info.dli_fbase)));
      } else {
        snprintf(where, sizeof where, " %p", traces[i].pc[j]);
      }
      luaL_addstring(&b, where);
    }
    luaL_pushresult(&b);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_trim(lua_State *L) {
  lua_pushboolean(L, malloc_trim(0));
  return 1;
}

int luaopen_bench_probe(lua_State *L) {
  static const luaL_Reg fns[] = {
    { "mallinfo", l_mallinfo }, { "count_lua", l_count_lua }, { "lua", l_lua },
    { "allocated", l_allocated }, { "trim", l_trim }, { "trace", l_trace }, { "traces", l_traces },
    { NULL, NULL }
  };
  luaL_newlib(L, fns);
  return 1;
}
