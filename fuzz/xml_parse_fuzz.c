/*
** xml_parse_fuzz.c — libFuzzer target for brisk.xml's stream parser.
**
** Differential: every input is fed, in chunks, both to brisk.xml.new and to
** stock util.xmppstream.new (Prosody 0.12's or 13's, see fuzz_lua.h; on LuaExpat)
** in one Lua state, and everything the callbacks see, every feed() result
** and every raised error must be the same; a difference aborts. So the
** fuzzer finds semantic differences as well as crashes, leaks and undefined
** behaviour under ASan/UBSan.
**
** Input layout: byte 0 selects the callback profile, the stanza size limit,
** whether a valid stream header is prepended and whether the stream is
** reset after <auth/> (as mod_c2s does after SASL) and whether handlestanza
** raises at the first or second stanza (stock then keeps building on that
** stanza, which the comparison at the end sees); byte 1 seeds the chunk
** sizes; the rest is the stream. Brisk's own limits (nesting depth and
** attribute count, which stock lacks) end the comparison when they trip.
**
** Brisk runs twice: as is, and hibernating (its parser freed at a stanza
** boundary and rebuilt on the next bytes), which must change nothing. Byte 1
** also picks how: at every feed end where it can (hibernate_eagerly), or by
** brisk.xml.hibernate(0) after every feed (the production sweep), on the same
** random chunks, or eagerly with the stream split after every ">" (so at
** every stanza boundary). After each input every stream must be collected
** and the module hold no C memory.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "fuzz_lua.h"

int luaopen_brisk_xml(lua_State *L);

static lua_State *L;

static const char script[] =
  "local bx = require 'brisk.xml'\n"
  "local stock = require 'util.xmppstream'\n"
  "-- Brisk's util.xmppstream.new, as brisk.patch installs it\n"
  "local brisk_new = require 'brisk.patch.xmppstream'.new(bx)\n"
  "local profiles = {\n"
  "  { default_ns = 'jabber:client' }, { default_ns = 'jabber:server' },\n"
  "  { default_ns = 'jabber:component:accept' },\n"
  "  { stream_ns = 'http://jabber.org/protocol/httpbind', stream_tag = 'body', default_ns = 'jabber:client' },\n"
  "  {}, { stream_ns = '', stream_tag = 'root', default_ns = 'urn:x', error_tag = 'oops' } }\n"
  "local limits = { false, 64, 512, 4096 }\n"
  "local header = \"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \"\n"
  "  .. \"xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' version='1.0'>\"\n"
  "local function same(a, b, seen)\n"
  "  if a == b then return true end\n"
  "  if type(a) ~= 'table' or type(b) ~= 'table' then\n"
  "    return type(a) == 'userdata' and type(b) == 'userdata' end\n"
  "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
  "  -- children are reachable twice (t[i], t.tags[j]): remember compared pairs\n"
  "  seen = seen or {}\n"
  "  if seen[a] == b then return true end\n"
  "  seen[a] = b\n"
  "  -- pairs() order too: brisk.xml replays stock's table writes exactly\n"
  "  local ka, va = next(a)\n"
  "  local kb, vb = next(b)\n"
  "  while ka ~= nil do\n"
  "    if kb == nil or ka ~= kb or not same(va, vb, seen) then return false end\n"
  "    ka, va = next(a, ka)\n"
  "    kb, vb = next(b, kb)\n"
  "  end\n"
  "  return kb == nil\n"
  "end\n"
  "local function run(new, chunks, o, after)\n"
  "  local trace, stream, nst = {}, nil, 0\n"
  "  local session = { notopen = true }\n"
  "  local cbs = {}\n"
  "  for k, v in pairs(o.profile) do cbs[k] = v end\n"
  "  function cbs.streamopened(s, attr) trace[#trace+1] = { 'open', attr }; s.notopen = nil end\n"
  "  function cbs.streamclosed(s) trace[#trace+1] = { 'close' } end\n"
  "  function cbs.handlestanza(s, st)\n"
  "    trace[#trace+1] = { 'stanza', st }\n"
  "    nst = nst + 1\n"
  "    if nst == o.raise_at then error('raised', 0) end\n"
  "    if o.reset and st.name == 'auth' then s.notopen = true; stream:reset() end\n"
  "  end\n"
  "  function cbs.error(s, e, a, b) trace[#trace+1] = { 'error', e, a, b } end\n"
  "  stream = new(session, cbs, o.limit)\n"
  "  for _, c in ipairs(chunks) do\n"
  "    local ok, r1, r2 = pcall(stream.feed, stream, c)\n"
  "    trace[#trace+1] = { ok and 'feed' or 'raise', r1, r2 }\n"
  "    if after then after() end\n"
  "  end\n"
  "  return trace\n"
  "end\n"
  "local function compare(a, b, what)\n"
  "  for i = 1, math.max(#a, #b) do\n"
  "    local x, y = a[i], b[i]\n"
  "    if not (x and y and same(x, y)) then\n"
  "      error(('%s: event %d differs: stock %s %s %s, brisk %s %s %s'):format(what, i,\n"
  "        tostring(x and x[1]), tostring(x and x[2]), tostring(x and x[3]),\n"
  "        tostring(y and y[1]), tostring(y and y[2]), tostring(y and y[3])))\n"
  "    end\n"
  "  end\n"
  "end\n"
  "return function(data)\n"
  "  local m = bx.memory()\n"
  "  if m.streams ~= 0 or m.bytes ~= 0 then\n"
  "    error(('left from the last input: %d streams, %d bytes'):format(m.streams, m.bytes))\n"
  "  end\n"
  "  if #data < 2 then return end\n"
  "  local b0, b1 = data:byte(1, 2)\n"
  "  local o = { profile = profiles[b0 % 6 + 1], limit = limits[(b0 // 6) % 4 + 1] or nil,\n"
  "              reset = (b0 // 24) % 2 == 1, raise_at = b0 // 96 }\n"
  "  local body = data:sub(3)\n"
  "  if (b0 // 48) % 2 == 1 then body = header .. body end\n"
  "  local chunks, pos, seed = {}, 1, b1\n"
  "  while pos <= #body do\n"
  "    seed = (seed * 37 + 11) % 256\n"
  "    local len = seed % 61 + 1\n"
  "    chunks[#chunks+1] = body:sub(pos, pos + len - 1)\n"
  "    pos = pos + len\n"
  "  end\n"
  "  local a = run(stock.new, chunks, o)\n"
  "  compare(a, run(brisk_new, chunks, o), 'awake')\n"
  "  local mode = b1 % 3\n"
  "  if mode == 2 then\n"
  "    chunks, pos = {}, 1\n"
  "    while pos <= #body do\n"
  "      local e = body:find('>', pos, true) or #body\n"
  "      chunks[#chunks+1] = body:sub(pos, e)\n"
  "      pos = e + 1\n"
  "    end\n"
  "    a = run(stock.new, chunks, o)\n"
  "  end\n"
  "  local saved = bx.set_limits({ hibernate_eagerly = mode ~= 1 })\n"
  "  local ok, c = pcall(run, brisk_new, chunks, o, mode == 1 and function() bx.hibernate(0) end)\n"
  "  bx.set_limits(saved)\n"
  "  if not ok then error(c, 0) end\n"
  "  compare(a, c, mode == 1 and 'swept' or 'eager')\n"
  "end\n";

static void init(void) {
  L = fuzz_lua_open("brisk.xml", luaopen_brisk_xml, script, "xml_parse_fuzz");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) init();
  lua_getfield(L, LUA_REGISTRYINDEX, "xml_parse_fuzz");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "xml_parse_fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  /* Collect after every input: streams' __gc (parser frees) runs, and
  ** libFuzzer's leak check sees as many frees as mallocs instead of
  ** scanning the heap after each input. */
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
