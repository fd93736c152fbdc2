/*
** events_diff_fuzz.c — libFuzzer target for brisk.events.
**
** Differential: the input picks the behaviour of a pool of handlers (log,
** return a value, raise, add or remove handlers while firing, fire nested
** events, yield) and then is a program of operations (add_handler and
** remove_handler with priorities, many equal; add_handlers; wrappers per
** event and global; debug hooks; fire_event of events of several kinds,
** run in a coroutine that is resumed through every yield). It runs on a
** stock util.events object (0.12's or 13's, see fuzz_lua.h), one whose
** fire_event is Brisk's from the start, and one Brisk takes over midway;
** every result, value count, error message and the trace of calls must be
** identical, else the target aborts. The three share the handler
** functions, as the order of equal priorities comes from pairs() over them,
** and the collector is stopped while an input runs: when a handler is
** removed and added again, where its key lands in the event's table (so
** its place among equal priorities) depends on whether the collector has
** cleared the removed key meanwhile, for stock objects as much as for
** Brisk's, so two stock objects given the same calls can differ.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "fuzz_lua.h"

int luaopen_brisk_events(lua_State *L);

static lua_State *L;

static const char script[] =
  "local events = require 'util.events'\n"
  "local core = require 'brisk.events'\n"
  "local function upvalue(f, name)\n"
  "  for i = 1, math.huge do local n, v = debug.getupvalue(f, i); if n == nil then return end; if n == name then return i, v end end\n"
  "end\n"
  "local probe = events.new(); probe.add_handler(1, false)\n"
  "local _, perr = pcall(probe.fire_event, 1)\n"
  "local prefix, suffix = perr:match('^(.*attempt to call a )boolean( value.*)$')\n"
  "local function take_over(e)\n"
  "  local fire = e.fire_event\n"
  "  local gw = upvalue(fire, 'global_wrappers'); local _, wrappers = upvalue(fire, 'wrappers')\n"
  "  local _, inner = upvalue(fire, '_fire_event'); local _, handlers = upvalue(inner, 'handlers')\n"
  "  local hook = upvalue(inner, 'active_debug_hook')\n"
  "  e.fire_event = core.fire_event({ stock = fire, gw = gw, inner = inner, hook = hook, handlers = handlers,\n"
  "    wrappers = wrappers, call_error_prefix = prefix, call_error_suffix = suffix })\n"
  "  return e\n"
  "end\n"
  "local EV = { 'a', 'b', 'c', 1, true }\n"
  "local cur\n"
  "local function log(s) cur.trace[#cur.trace + 1] = s end\n"
  "local function show(v) return (math.type(v) or type(v)) .. ':' .. (type(v) == 'table' and (v.tag or 'table') or tostring(v)) end\n"
  "local function packed(r) local s = { r.n }; for i = 1, r.n do s[#s + 1] = show(r[i]) end; return table.concat(s, ',') end\n"
  "local function run(data)\n"
  "  local pos, n = 1, #data\n"
  "  local function byte() local b = data:byte(pos) or 0; pos = pos + 1; return b end\n"
  "  local pool = {}\n"
  "  for k = 1, 8 do\n"
  "    local kind = byte() % 10\n"
  "    pool[k] = function(d)\n"
  "      log('h' .. k .. show(d))\n"
  "      if kind == 1 then return 'r' .. k elseif kind == 2 then return false\n"
  "      elseif kind == 3 then error('boom' .. k) elseif kind == 4 then error({ tag = 'e' .. k })\n"
  "      elseif kind == 5 then cur.obj.add_handler(EV[k % 3 + 1], pool[k % 8 + 1], k % 2)\n"
  "      elseif kind == 6 then cur.obj.remove_handler(EV[k % 3 + 1], pool[(k + 2) % 8 + 1])\n"
  "      elseif kind == 7 and cur.depth < 3 then cur.depth = cur.depth + 1\n"
  "        log(packed(table.pack(cur.obj.fire_event(EV[k % 2 + 2], 'n' .. k)))); cur.depth = cur.depth - 1\n"
  "      elseif kind == 8 then log('res' .. show(coroutine.yield(k))) end\n"
  "    end\n"
  "  end\n"
  "  pool[9] = false; pool[10] = setmetatable({}, { __call = function(_, d) log('call' .. show(d)) end })\n"
  "  pool[11] = setmetatable({}, { __name = 'Thing' })\n"
  "  local wraps = { function(h, e, d) log('w1'); return h(e, d) end, function(h, e, d) log('w2'); return 'short' end }\n"
  "  local hook = function(h, e, d) log('hook'); return h(d) end\n"
  "  local worlds = { { obj = events.new() }, { obj = take_over(events.new()) }, { obj = events.new() } }\n"
  "  for _, w in ipairs(worlds) do w.trace = {}; w.depth = 0 end\n"
  "  local adopt_at = byte() % 32\n"
  "  local ops = 0\n"
  "  while pos <= n and ops < 150 do\n"
  "    ops = ops + 1\n"
  "    if ops == adopt_at then take_over(worlds[3].obj) end\n"
  "    local op, a, b, c = byte() % 10, byte(), byte(), byte()\n"
  "    local res = {}\n"
  "    for i, w in ipairs(worlds) do\n"
  "      cur = w\n"
  "      local o = w.obj\n"
  "      local r\n"
  "      if op <= 2 then r = table.pack(pcall(o.add_handler, EV[a % 5 + 1], pool[b % 11 + 1], ({ nil, 0, 1, -1, 0.5, 1 })[c % 6 + 1]))\n"
  "      elseif op == 3 then r = table.pack(pcall(o.remove_handler, EV[a % 5 + 1], pool[b % 11 + 1]))\n"
  "      elseif op == 4 then r = table.pack(pcall(o[a % 2 == 0 and 'add_handlers' or 'remove_handlers'], { a = pool[b % 8 + 1], b = pool[c % 8 + 1] }))\n"
  "      elseif op == 5 then r = table.pack(pcall(o[b % 3 == 0 and 'remove_wrapper' or 'add_wrapper'], a % 3 == 0 and false or EV[a % 3 + 1], wraps[c % 2 + 1]))\n"
  "      elseif op == 6 then r = table.pack(o.set_debug_hook(a % 4 == 0 and hook or nil) == hook)\n"
  "      else\n"
  "        local co = coroutine.create(o.fire_event)\n"
  "        r = table.pack(coroutine.resume(co, ({ EV[a % 5 + 1], nil, 0/0 })[b % 8 < 6 and 1 or b % 2 + 2], 'd' .. ops))\n"
  "        while coroutine.status(co) == 'suspended' do log('y' .. show(r[2])); r = table.pack(coroutine.resume(co, 'v')) end\n"
  "      end\n"
  "      res[i] = packed(r) .. ' ' .. table.concat(w.trace, ' ')\n"
  "    end\n"
  "    for i = 2, 3 do\n"
  "      if res[i] ~= res[1] then error(('op %d differs (object %d):\\n stock %s\\n other %s'):format(op, i, res[1], res[i])) end\n"
  "    end\n"
  "  end\n"
  "end\n"
  "return function(data)\n"
  "  collectgarbage('stop')\n"
  "  local ok, err = pcall(run, data)\n"
  "  collectgarbage('restart')\n"
  "  if not ok then error(err, 0) end\n"
  "end\n";

static void init(void) {
  L = fuzz_lua_open("brisk.events", luaopen_brisk_events, script, "events_diff_fuzz");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned runs;
  if (L == NULL) init();
  lua_getfield(L, LUA_REGISTRYINDEX, "events_diff_fuzz");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "events_diff_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
