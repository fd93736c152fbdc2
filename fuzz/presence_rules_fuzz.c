/*
** presence_rules_fuzz.c — libFuzzer target for brisk.presence's rule and
** pattern compiler.
**
** Input: "pattern\nsubject\nrest". The glob compiler and matcher are checked
** against a plain recursive matcher (an oracle written for clarity, not
** speed); then the pattern goes through presence.new as a rule's "match"
** and a device selector, and (by bits of rest[0]) as the rule's "status"
** Lua pattern, with a "show" and a "below" condition. A status pattern the
** rule compiler accepts must never make Lua's own string.match call it
** malformed. The rest of the input drives a few engine updates (the
** subject as the status) and ticks, all under a protected call: bad input
** must give a Lua error, never a crash, a leak or a sanitizer report.
** Lua patterns backtrack, so an operator's pattern may be slow on a long
** status by design (Lua's matcher, as ever); a status pattern and the
** status are kept to STATUS_MAX bytes here, so that a timeout still means
** a loop in Brisk.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "../modules/presence/presence.h"

int luaopen_brisk_presence(lua_State *L);

/* Obviously-correct matcher: '*' any run, '?' one UTF-8 character. */
static int oracle(const int16_t *t, int n, const char *s, size_t len) {
  size_t i;
  if (n == 0) return len == 0;
  if (t[0] == PRESENCE_GLOB_STAR) {
    for (i = 0; i <= len; i++) {
      if (i > 0 && i < len && ((unsigned char)s[i] & 0xC0) == 0x80) continue;
      if (oracle(t + 1, n - 1, s + i, len - i)) return 1;
    }
    return 0;
  }
  if (len == 0) return 0;
  if (t[0] == PRESENCE_GLOB_ANY) {
    i = 1;
    while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
    return oracle(t + 1, n - 1, s + i, len - i);
  }
  return t[0] == (unsigned char)s[0] && oracle(t + 1, n - 1, s + 1, len - 1);
}

/* The status pattern was accepted: Lua may find it too complex for a
** subject, but never malformed. */
static void check_status(lua_State *L, const char *pat, size_t plen,
                         const char *subj, size_t slen) {
  int top = lua_gettop(L);
  lua_getglobal(L, "string");
  lua_getfield(L, -1, "match");
  lua_pushlstring(L, subj, slen);
  lua_pushlstring(L, pat, plen);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK &&
      strstr(lua_tostring(L, -1), "pattern too complex") == NULL) {
    fprintf(stderr, "accepted status pattern refused by Lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, top);
}

#define STATUS_MAX 16

static int drive(lua_State *L) {
  size_t plen, slen, rlen, i;
  const char *pat = lua_tolstring(L, 1, &plen);
  const char *subj = lua_tolstring(L, 2, &slen);
  const char *rest = lua_tolstring(L, 3, &rlen);
  static const char *const kinds[] = { "online", "offline", "state", "flapping", "silent", "bogus" };
  static const char *const shows[] = { "available", "away", "chat", "dnd", "xa", "", "bogus" };
  unsigned char flags = rlen ? (unsigned char)rest[0] : 0;
  int mod;
  if (plen > STATUS_MAX) flags &= (unsigned char)~0x40;
  luaL_requiref(L, "brisk.presence", luaopen_brisk_presence, 0);
  mod = lua_gettop(L);
  lua_getfield(L, mod, "new");
  lua_createtable(L, 0, 3);
  lua_createtable(L, 2, 0);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kinds[flags % 6]);
  lua_setfield(L, -2, "on");
  if (!(flags & 0x40)) {       /* the pattern is the glob, or the status pattern */
    lua_pushlstring(L, pat, plen);
    lua_setfield(L, -2, "match");
  }
  lua_pushnumber(L, rlen > 1 ? (unsigned char)rest[1] / 16.0 : 0);
  lua_setfield(L, -2, "after");
  lua_pushinteger(L, rlen > 2 ? (unsigned char)rest[2] % 20 : 3);
  lua_setfield(L, -2, "transitions");
  lua_pushnumber(L, 10);
  lua_setfield(L, -2, "within");
  if (flags & 0x40) {
    lua_pushlstring(L, pat, plen);
    lua_setfield(L, -2, "status");
  }
  if (flags & 0x80) {
    lua_pushstring(L, shows[(rlen > 1 ? (unsigned char)rest[1] : 0) % 7]);
    lua_setfield(L, -2, "show");
  }
  if (flags & 0x20) {
    lua_pushinteger(L, rlen > 2 ? (unsigned char)rest[2] : 0);
    lua_setfield(L, -2, "below");
  }
  lua_rawseti(L, -2, 1);
  lua_setfield(L, -2, "rules");
  if (!(flags & 0x40)) {
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, pat, plen);
    lua_rawseti(L, -2, 1);
    lua_setfield(L, -2, "devices");
  }
  lua_call(L, 1, 1);           /* errors on a bad rule: fine */
  if (flags & 0x40) check_status(L, pat, plen, subj, slen > STATUS_MAX ? STATUS_MAX : slen);
  for (i = 3; i < rlen; i++) {
    unsigned char c = (unsigned char)rest[i];
    double now = (double)i / 4.0;
    if (c % 3 == 0) {
      lua_getfield(L, -1, "tick");
      lua_pushvalue(L, -2);
      lua_pushnumber(L, now + c);
      lua_call(L, 2, 1);
    } else {
      lua_getfield(L, -1, "update");
      lua_pushvalue(L, -2);
      lua_pushlstring(L, subj, slen > 64 ? 64 : slen);
      lua_pushnumber(L, now);
      lua_pushboolean(L, c & 1);
      lua_pushstring(L, (c & 4) ? "away" : NULL);
      if (flags & 0x40) lua_pushlstring(L, subj, slen > STATUS_MAX ? STATUS_MAX : slen);
      else lua_pushlstring(L, rest + i, 1);
      lua_pushinteger(L, (int)c - 128);
      lua_call(L, 7, 1);
    }
    lua_pop(L, 1);
    for (;;) {
      int done;
      lua_getfield(L, -1, "pop");
      lua_pushvalue(L, -2);
      lua_call(L, 1, 1);
      done = lua_isnil(L, -1);
      lua_pop(L, 1);
      if (done) break;
    }
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *d = (const char *)data, *nl1, *nl2;
  size_t plen, slen;
  int16_t *tok;
  const char *err = NULL;
  int n;
  lua_State *L;
  nl1 = memchr(d, '\n', size);
  if (!nl1) return 0;
  plen = (size_t)(nl1 - d);
  nl2 = memchr(nl1 + 1, '\n', size - plen - 1);
  slen = nl2 ? (size_t)(nl2 - nl1 - 1) : size - plen - 1;
  if (plen <= PRESENCE_GLOB_MAXLEN) {
    tok = malloc((plen + 2) * sizeof(int16_t));
    n = presence_glob_compile(d, plen, tok, &err);
    if (n >= 0 && slen <= 64) {
      int a = presence_glob_match(tok, n, nl1 + 1, slen);
      int b = oracle(tok, n, nl1 + 1, slen);
      if (a != b) abort();
    } else if (n < 0 && err == NULL) {
      abort();
    }
    free(tok);
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_pushcfunction(L, drive);
  lua_pushlstring(L, d, plen);
  lua_pushlstring(L, nl1 + 1, slen);
  if (nl2) lua_pushlstring(L, nl2 + 1, size - (size_t)(nl2 + 1 - d));
  else lua_pushliteral(L, "");
  (void)lua_pcall(L, 3, 0, 0);
  lua_close(L);
  return 0;
}
