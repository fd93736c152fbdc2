/*
** glob.c — the JID pattern compiler of brisk.presence.
**
** Device selectors and rule "match" fields are globs over bare JIDs:
** '*' matches any run of characters, '?' exactly one character, '\' makes
** the next character literal. Prosody hands us JIDs already normalised
** (nodeprep and nameprep lower-case them), so patterns are lower-cased
** (ASCII) when compiled and matching is then an exact byte comparison.
*/
#include <string.h>
#include "presence.h"

#define GLOB_META "brisk.presence.Glob"

/*
** Whether s is well-formed UTF-8 as far as its structure goes: each lead
** byte followed by as many continuation bytes as it announces, and no
** continuation byte anywhere else. '*' and '?' step over whole characters
** while literals compare bytes; a literal that is a stray continuation
** byte could then match where no star can stop, and the one-backtrack
** matcher below would disagree with a full search. Valid JIDs are UTF-8,
** so a pattern that is not can only be a mistake.
*/
static int valid_utf8(const char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    unsigned char c = (unsigned char)s[i++];
    int more = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
             : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
    if (more < 0) return 0;
    while (more-- > 0)
      if (i >= len || ((unsigned char)s[i++] & 0xC0) != 0x80) return 0;
  }
  return 1;
}

int presence_glob_compile(const char *p, size_t len, int16_t *tok,
                          const char **err) {
  size_t i;
  int n = 0, ats = 0, afterat = 0;
  if (len == 0) { *err = "empty pattern"; return -1; }
  if (len > PRESENCE_GLOB_MAXLEN) { *err = "pattern too long"; return -1; }
  if (!valid_utf8(p, len)) { *err = "pattern is not valid UTF-8"; return -1; }
  /* A pattern naming only a host ("devices.example.com") selects every
  ** account of that host; find out first whether an unescaped '@' exists. */
  for (i = 0; i < len; i++) {
    if (p[i] == '\\') i++;
    else if (p[i] == '@') ats++;
  }
  if (ats > 1) { *err = "more than one '@'"; return -1; }
  if (ats == 0) {
    tok[n++] = PRESENCE_GLOB_STAR;
    tok[n++] = '@';
    afterat = 1;
  }
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)p[i];
    int literal = 0;
    if (c == '\\') {
      if (++i == len) { *err = "pattern ends with '\\'"; return -1; }
      c = (unsigned char)p[i];
      literal = 1;
    }
    if (c < 0x20 || c == 0x7f || c == ' ') {
      *err = "control character or space in pattern"; return -1;
    }
    if (c == '/') {
      *err = "patterns match bare JIDs: '/' is not allowed"; return -1;
    }
    if (!literal && c == '*') {
      /* Consecutive stars mean the same as one and would only slow the
      ** backtracking matcher down. */
      if (n > 0 && tok[n - 1] == PRESENCE_GLOB_STAR) continue;
      tok[n++] = PRESENCE_GLOB_STAR;
      continue;
    }
    if (!literal && c == '?') { tok[n++] = PRESENCE_GLOB_ANY; continue; }
    if (!literal && c == '@') {
      if (i + 1 == len) { *err = "nothing after '@'"; return -1; }
      afterat = 1;
    }
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
    tok[n++] = (int16_t)c;
  }
  if (!afterat) { *err = "no host part"; return -1; }
  return n;
}

/* Length of the UTF-8 character starting at s[i] (continuation bytes are
** skipped, so a malformed sequence still advances). */
static size_t utf8_next(const char *s, size_t i, size_t len) {
  i++;
  while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
  return i;
}

/*
** Iterative matcher with a single backtracking point (the last star seen):
** when a later literal fails, the last star absorbs one more character.
** That is enough for globs whose only wildcard runs are '*', and it runs in
** O(len(pattern) * len(subject)) at worst, with no recursion.
*/
int presence_glob_match(const int16_t *tok, int n, const char *s,
                        size_t len) {
  int pi = 0, star = -1;
  size_t si = 0, mark = 0;
  while (si < len) {
    if (pi < n && tok[pi] == PRESENCE_GLOB_ANY) {
      pi++;
      si = utf8_next(s, si, len);
    } else if (pi < n && tok[pi] >= 0 && tok[pi] == (unsigned char)s[si]) {
      pi++;
      si++;
    } else if (pi < n && tok[pi] == PRESENCE_GLOB_STAR) {
      star = pi++;
      mark = si;
    } else if (star >= 0) {
      pi = star + 1;
      mark = utf8_next(s, mark, len);
      si = mark;
    } else {
      return 0;
    }
  }
  while (pi < n && tok[pi] == PRESENCE_GLOB_STAR) pi++;
  return pi == n;
}

/* Lua side: presence.glob(pattern) -> compiled glob, or nil and a message. */
typedef struct Glob {
  int n;
  int16_t tok[1];
} Glob;

static int l_glob(lua_State *L) {
  size_t len;
  const char *p = luaL_checklstring(L, 1, &len);
  const char *err = NULL;
  Glob *g;
  int n;
  if (len > PRESENCE_GLOB_MAXLEN) {
    luaL_pushfail(L);
    lua_pushliteral(L, "pattern too long");
    return 2;
  }
  g = (Glob *)lua_newuserdatauv(L, sizeof(Glob) + (len + 2) * sizeof(int16_t), 0);
  n = presence_glob_compile(p, len, g->tok, &err);
  if (n < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  g->n = n;
  luaL_setmetatable(L, GLOB_META);
  return 1;
}

static int l_match(lua_State *L) {
  Glob *g = (Glob *)luaL_checkudata(L, 1, GLOB_META);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_pushboolean(L, presence_glob_match(g->tok, g->n, s, len));
  return 1;
}

/* The normalised form, e.g. "*@devices.example.com" for a host pattern. */
static int l_tostring(lua_State *L) {
  Glob *g = (Glob *)luaL_checkudata(L, 1, GLOB_META);
  luaL_Buffer b;
  int i;
  luaL_buffinit(L, &b);
  for (i = 0; i < g->n; i++) {
    if (g->tok[i] == PRESENCE_GLOB_STAR) luaL_addchar(&b, '*');
    else if (g->tok[i] == PRESENCE_GLOB_ANY) luaL_addchar(&b, '?');
    else {
      char c = (char)g->tok[i];
      if (c == '*' || c == '?' || c == '\\') luaL_addchar(&b, '\\');
      luaL_addchar(&b, c);
    }
  }
  luaL_pushresult(&b);
  return 1;
}

static const luaL_Reg glob_methods[] = {
  {"match", l_match},
  {NULL, NULL}
};

void presence_open_glob(lua_State *L, int mod) {
  luaL_newmetatable(L, GLOB_META);
  luaL_newlib(L, glob_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_glob);
  lua_setfield(L, mod, "glob");
}
