/*
** jid_diff_fuzz.c — libFuzzer target for brisk.jid.
**
** Differential: the input, whole and cut at its first 0xff byte into a JID
** and an ACL, goes through every util.jid function of stock Prosody (0.12's
** or 13's, see fuzz_lua.h) and of brisk.jid built from the same
** util.encodings profiles, with strict = nil, false and true (and, picked by
** the first byte, a strict flag stock rejects); results, value counts and
** error messages must be identical, else the target aborts. So the fuzzer
** finds differences as well as crashes and undefined behaviour.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "fuzz_lua.h"

int luaopen_brisk_jid(lua_State *L);

static lua_State *L;

static const char script[] =
  "local stock = require 'util.jid'\n"
  "local sp = require 'util.encodings'.stringprep\n"
  "local brisk = require 'brisk.jid'.new({ nodeprep = sp.nodeprep, nameprep = sp.nameprep,\n"
  "  resourceprep = sp.resourceprep, stock = stock })\n"
  "local function outcome(f, ...)\n"
  "  local r = table.pack(pcall(f, ...))\n"
  "  local s = { tostring(r.n) }\n"
  "  for i = 1, r.n do s[#s + 1] = type(r[i]) .. ':' .. tostring(r[i]) end\n"
  "  return table.concat(s, '|')\n"
  "end\n"
  "local function check(name, ...)\n"
  "  local a, b = outcome(stock[name], ...), outcome(brisk[name], ...)\n"
  "  if a ~= b then error(('%s differs:\\n stock %q\\n brisk %q'):format(name, a, b)) end\n"
  "end\n"
  "local stricts = { false, true, 1 }\n"
  "return function(data)\n"
  "  local jid, acl = data:match('^(.-)\\255(.*)$')\n"
  "  jid, acl = jid or data, acl or data:sub(2)\n"
  "  for _, j in ipairs({ data, jid, acl }) do\n"
  "    for _, f in ipairs({ 'split', 'bare', 'node', 'host', 'resource', 'escape', 'unescape' }) do check(f, j) end\n"
  "    check('prepped_split', j); check('prep', j)\n"
  "    local strict = stricts[(data:byte(1) or 0) % 3 + 1]\n"
  "    for _, s in ipairs({ false, true, strict }) do check('prepped_split', j, s); check('prep', j, s) end\n"
  "  end\n"
  "  check('compare', jid, acl); check('compare', acl, jid); check('compare', data, jid)\n"
  "  local n, h, r = stock.split(data)\n"
  "  check('join', n, h, r); check('join', jid, acl, nil); check('join', nil, jid, acl)\n"
  "end\n";

static void init(void) {
  L = fuzz_lua_open("brisk.jid", luaopen_brisk_jid, script, "jid_diff_fuzz");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) init();
  if (size > 4096) return 0;
  lua_getfield(L, LUA_REGISTRYINDEX, "jid_diff_fuzz");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "jid_diff_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}
