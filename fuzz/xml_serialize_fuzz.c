/*
** xml_serialize_fuzz.c — libFuzzer target for brisk.xml's serializer.
**
** Differential: each input is read as a little program that builds a stanza
** tree in a Lua state (elements, text, attributes with any bytes,
** namespaced attributes, xmlns equal to the parent's or not, and the odd
** shapes other modules can leave: numbers, booleans, plain tables, holes,
** removed children, a missing attr table, deep chains). The tree is then
** serialized by stock util.stanza (Prosody 0.12's or 13's, see fuzz_lua.h) and by
** brisk.xml, with __tostring and top_tag; results, or error messages, must
** be identical, else the target aborts. So the fuzzer finds differences as
** well as crashes, leaks and undefined behaviour under ASan/UBSan.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "fuzz_lua.h"

int luaopen_brisk_xml(lua_State *L);

static lua_State *L;

static const char script[] =
  "local st = require 'util.stanza'\n"
  "local bx = require 'brisk.xml'\n"
  "-- Brisk's serializer for this util.stanza (called directly, not installed)\n"
  "local brisk_fns = require 'brisk.patch.stanza'.functions(bx)\n"
  "local stock_tostring, stock_top_tag = st.stanza_mt.__tostring, st.stanza_mt.top_tag\n"
  "local names = { 'message', 'body', 'x', 'a', 'stream:error', 'caf\\195\\169', '1' }\n"
  "local keys = { 'to', 'from', 'id', 'type', 'xml:lang', 'xmlns', 'a', 'b', 'c', 'd' }\n"
  "local function outcome(f, s)\n"
  "  local ok, r = pcall(f, s)\n"
  "  return (ok and 'ok ' or 'err ') .. tostring(r)\n"
  "end\n"
  "return function(data)\n"
  "  local pos, n = 1, #data\n"
  "  local function byte() local b = data:byte(pos) or 0; pos = pos + 1; return b end\n"
  "  local function bytes() local len = byte() % 24; local s = data:sub(pos, pos + len - 1); pos = pos + len; return s end\n"
  "  local function elem(name) return setmetatable({ name = name, attr = {}, tags = {} }, st.stanza_mt) end\n"
  "  local root = elem('message')\n"
  "  local stack = { root }\n"
  "  local ops, budget = 0, 1000 -- bounded work per input\n"
  "  while pos <= n and ops < 400 do\n"
  "    ops = ops + 1\n"
  "    local top = stack[#stack]\n"
  "    local op = byte() % 16\n"
  "    if op <= 3 then\n"
  "      local c = elem(op == 3 and bytes() or names[byte() % #names + 1])\n"
  "      if c.name == '' then c.name = 'e' end\n"
  "      top[#top + 1] = c; top.tags[#top.tags + 1] = c\n"
  "      if #stack < 64 then stack[#stack + 1] = c end\n"
  "    elseif op <= 5 then\n"
  "      if #stack > 1 then stack[#stack] = nil end\n"
  "    elseif op <= 7 then\n"
  "      top[#top + 1] = bytes()\n"
  "    elseif op == 8 then\n"
  "      local k = byte() % 2 == 0 and keys[byte() % #keys + 1] or bytes()\n"
  "      if k ~= '' then (top.attr or {})[k] = bytes() end\n"
  "    elseif op == 9 then\n"
  "      (top.attr or {})[bytes() .. '\\1' .. bytes()] = bytes()\n"
  "    elseif op == 10 then\n"
  "      local parent = stack[#stack - 1]\n"
  "      local pns = parent and parent.attr and parent.attr.xmlns\n"
  "      if top.attr then top.attr.xmlns = (pns and byte() % 2 == 0) and pns or bytes() end\n"
  "    elseif op == 11 then\n"
  "      local k = byte() % 6\n"
  "      local odd = ({ 42, 1.5, true, {}, { name = false }, { name = 'plain', attr = { q = 'v' }, 'in' } })[k + 1]\n"
  "      top[#top + 1] = odd\n"
  "    elseif op == 12 then\n"
  "      local k = byte() % 5\n"
  "      (top.attr or {})[keys[byte() % #keys + 1]] = ({ 7, 2.25, {}, false, -0.0 })[k + 1]\n"
  "    elseif op == 13 then\n"
  "      if #top > 0 then table.remove(top, byte() % #top + 1) end\n"
  "    elseif op == 14 then\n"
  "      local k = byte() % 4\n"
  "      if k == 0 then top.name = byte() elseif k == 1 then top.attr = nil\n"
  "      elseif k == 2 then top[#top + 2] = 'hole' else (top.attr or {})[byte()] = bytes() end\n"
  "    else\n"
  "      local t = top\n"
  "      local depth = math.min(byte() * 8, budget)\n"
  "      budget = budget - depth\n"
  "      for _ = 1, depth do local c = elem('d'); t[#t + 1] = c; t = c end\n"
  "    end\n"
  "  end\n"
  "  for _, s in ipairs({ root, stack[#stack] }) do\n"
  "    local a, b = outcome(stock_tostring, s), outcome(brisk_fns.__tostring, s)\n"
  "    if a ~= b then error(('tostring differs:\\n stock %q\\n brisk %q'):format(a, b)) end\n"
  "    a, b = outcome(stock_top_tag, s), outcome(brisk_fns.top_tag, s)\n"
  "    if a ~= b then error(('top_tag differs:\\n stock %q\\n brisk %q'):format(a, b)) end\n"
  "  end\n"
  "end\n";

static void init(void) {
  L = fuzz_lua_open("brisk.xml", luaopen_brisk_xml, script, "xml_serialize_fuzz");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned runs;
  if (L == NULL) init();
  lua_getfield(L, LUA_REGISTRYINDEX, "xml_serialize_fuzz");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "xml_serialize_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  /* Collect now and then so that the buffers' __gc runs too. */
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
