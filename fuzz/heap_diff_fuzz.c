/*
** heap_diff_fuzz.c — libFuzzer target for brisk.heap.
**
** Differential: the input is a program of heap operations (insert with an
** automatic or explicit id, pop, peek, reprioritize, remove, remove_index,
** reading and writing stock's fields, converting a stock heap in place and
** back) over few priorities (so many are equal), integers and floats, NaN,
** infinities and the values Brisk hands to stock (strings, tables, integers
** beyond 2^53). It runs on a stock util.indexedbheap heap (0.12's or 13's,
** see fuzz_lua.h), a Brisk heap and a stock heap Brisk adopts midway; every
** result, value count and error message must be identical, and so must the
** three heaps' fields at the end, else the target aborts.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "fuzz_lua.h"

int luaopen_brisk_heap(lua_State *L);

static lua_State *L;

static const char script[] =
  "local ibh = require 'util.indexedbheap'\n"
  "local mt = getmetatable(ibh.create())\n"
  "local B = require 'brisk.heap'.new({ methods = mt.__index, mt = mt })\n"
  "local prios = { 1, 2, 3, 1.0, 2.5, -1, 0, -0.0, 1/0, -1/0, 0/0, 'a', 'b', {}, (1 << 53) + 1, 7 }\n"
  "local function show(r)\n"
  "  local s = { tostring(r.n) }\n"
  "  for i = 1, r.n do s[#s + 1] = (math.type(r[i]) or type(r[i])) .. ':' .. tostring(r[i]) end\n"
  "  return table.concat(s, '|')\n"
  "end\n"
  "local function same(a, b)\n"
  "  if a.n ~= b.n then return false end\n"
  "  for i = 1, a.n do\n"
  "    local x, y = a[i], b[i]\n"
  "    if math.type(x) ~= math.type(y) or type(x) ~= type(y) then return false end\n"
  "    if x ~= y and x == x and type(x) ~= 'table' then return false end\n"
  "  end\n"
  "  return true\n"
  "end\n"
  "local function dump(h)\n"
  "  local s = { tostring(h.current_id) }\n"
  "  for i, p in ipairs(h.priorities) do s[#s + 1] = tostring(p) .. '=' .. tostring(h.ids[i]) .. '>' .. tostring(h.items[h.ids[i]]) end\n"
  "  local bad = {}\n"
  "  for k, v in pairs(h.index) do if h.ids[v] ~= k then bad[#bad + 1] = 'bad index ' .. tostring(k) end end\n"
  "  table.sort(bad) -- a set: pairs() order differs once a table was rebuilt\n"
  "  return table.concat(s, ' ') .. ' ' .. table.concat(bad, ' ')\n"
  "end\n"
  "return function(data)\n"
  "  local pos, n = 1, #data\n"
  "  local function byte() local b = data:byte(pos) or 0; pos = pos + 1; return b end\n"
  "  local heaps = { ibh.create(), B.create(), ibh.create() }\n"
  "  local ids = {}\n"
  "  local ops = 0\n"
  "  local function run(name, ...)\n"
  "    local r1\n"
  "    for i, h in ipairs(heaps) do\n"
  "      local r = table.pack(pcall(h[name], h, ...))\n"
  "      if i == 1 then r1 = r\n"
  "      elseif not same(r1, r) then error(('%s differs (heap %d):\\n stock %s\\n other %s'):format(name, i, show(r1), show(r))) end\n"
  "    end\n"
  "    return r1\n"
  "  end\n"
  "  local function id()\n"
  "    local b = byte()\n"
  "    if b < 160 and #ids > 0 then return ids[b % #ids + 1] end\n"
  "    return ({ nil, 7, 'x', 1.5, false, 0/0, 99.5 })[b % 7 + 1]\n"
  "  end\n"
  "  while pos <= n and ops < 200 do\n"
  "    ops = ops + 1\n"
  "    local op = byte() % 12\n"
  "    if op <= 3 then\n"
  "      local b = byte()\n"
  "      local p = b < 240 and prios[b % 11 + 1] or prios[b % #prios + 1]\n"
  "      local r = run('insert', 'item' .. ops, p, op == 3 and id() or nil)\n"
  "      if r[1] and r[2] ~= nil then ids[#ids + 1] = r[2] end\n"
  "    elseif op <= 5 then\n"
  "      local r = run('pop')\n"
  "      if r[1] and r[4] ~= nil and byte() % 2 == 0 then run('insert', r[3], prios[byte() % 11 + 1], r[4]) end\n"
  "    elseif op == 6 then run('peek')\n"
  "    elseif op == 7 then run('reprioritize', id(), prios[byte() % (byte() < 250 and 11 or #prios) + 1])\n"
  "    elseif op == 8 then run('remove', id())\n"
  "    elseif op == 9 then run('remove_index', ({ 0, 1, 2, 3, 4, 7, 1.0, 2.0, 1.5, '1', -1 })[byte() % 11 + 1])\n"
  "    elseif op == 10 then\n"
  "      local b = byte() % 8\n"
  "      if b == 0 then for _, h in ipairs(heaps) do local _ = h.priorities end\n"
  "      elseif b == 1 then for _, h in ipairs(heaps) do h.current_id = 3.5 end\n"
  "      elseif b <= 4 then B.adopt(heaps[3])\n"
  "      else B.release(heaps[3]) end\n"
  "    else run('peek') end\n"
  "  end\n"
  "  local d = dump(heaps[1])\n"
  "  for i = 2, 3 do\n"
  "    local o = dump(heaps[i])\n"
  "    if o ~= d then error(('fields differ (heap %d):\\n stock %s\\n other %s'):format(i, d, o)) end\n"
  "  end\n"
  "end\n";

static void init(void) {
  L = fuzz_lua_open("brisk.heap", luaopen_brisk_heap, script, "heap_diff_fuzz");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned runs;
  if (L == NULL) init();
  lua_getfield(L, LUA_REGISTRYINDEX, "heap_diff_fuzz");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "heap_diff_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  /* Collect now and then so that the states' __gc runs too. */
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
