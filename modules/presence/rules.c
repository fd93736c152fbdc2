/*
** rules.c — the rule compiler of brisk.presence.
**
** presence.new hands its "rules" list here. This file owns every field the
** engine uses: the name, the event ("on"), the match glob, the timings
** ("after", "transitions", "within") and the condition on the device's
** presence ("status", "below", "above", "show"). Each is checked once, here,
** and an error names the rule and the problem the way an operator wrote it
** in iot_rules: "rule 'freezer-offline': unknown event 'gone' (...)". Any
** other field is an error too; mod_brisk_iot takes the targets (webhook,
** notify, pubsub, log), which it checks itself, out of a rule before
** passing it on. The result is a Rules table: per kind, masks of the rules
** that fire immediately, sorted distinct debounce and silence steps, the
** flapping detectors, and the conditions.
*/
#include <string.h>
#include "presence.h"

const char *const presence_kind_names[] = {
  "unknown", "online", "offline", "state", "flapping", "silent", NULL
};

const char *const presence_show_values[] = {
  "available", "away", "chat", "dnd", "xa", NULL
};

static const char *const rule_fields[] = {
  "name", "on", "match", "after", "transitions", "within",
  "status", "below", "above", "show", NULL
};

#define MAX_AFTER 100000000.0  /* seconds (about 3 years) */

void presence_compile_glob(lua_State *L, Match *m, const char *what,
                           size_t *bytes) {
  size_t len;
  const char *p, *err = NULL;
  int16_t *tok;
  int n;
  if (lua_type(L, -1) != LUA_TSTRING)
    brisk_raise(L, "%s: pattern must be a string", what);
  p = lua_tolstring(L, -1, &len);
  if (len > PRESENCE_GLOB_MAXLEN)
    brisk_raise(L, "%s: bad pattern '%s': pattern too long", what, p);
  tok = (int16_t *)presence_realloc(L, bytes, NULL, 0, (len + 2) * sizeof(int16_t));
  n = presence_glob_compile(p, len, tok, &err);
  if (n < 0) {
    presence_realloc(L, bytes, tok, (len + 2) * sizeof(int16_t), 0);
    brisk_raise(L, "%s: bad pattern '%s': %s", what, p, err);
  }
  m->tok = tok;
  m->ntok = n;
  m->size = (len + 2) * sizeof(int16_t);
}

static double opt_number_field(lua_State *L, int t, const char *k, double def,
                               const char *what) {
  double v;
  int isnum;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return def; }
  v = lua_tonumberx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || !isfinite(v) || v < 0 || v > MAX_AFTER)
    brisk_raise(L, "%s: '%s' must be a number of seconds between 0 and %f",
               what, k, MAX_AFTER);
  return v;
}

/* Insert value v into the sorted distinct list, returning its index. */
static int add_step(uint32_t *list, uint64_t *masks, int *n, uint32_t v) {
  int i, j;
  for (i = 0; i < *n; i++) {
    if (list[i] == v) return i;
    if (list[i] > v) break;
  }
  for (j = *n; j > i; j--) { list[j] = list[j - 1]; masks[j] = masks[j - 1]; }
  list[i] = v;
  masks[i] = 0;
  (*n)++;
  return i;
}

/* ------------------------------------------------------------ conditions */

/*
** Lua's string.match, found the way ("").match finds it: through the
** string metatable, so this file neither requires anything nor reads a
** global. Status conditions are Lua patterns, matched by Lua itself.
*/
static void push_string_match(lua_State *L) {
  lua_pushliteral(L, "");
  if (luaL_getmetafield(L, -1, "__index") != LUA_TTABLE)
    brisk_raise(L, "brisk.presence: status conditions need Lua's string library");
  lua_getfield(L, -1, "match");
  lua_replace(L, -3);
  lua_pop(L, 1);
  if (lua_type(L, -1) != LUA_TFUNCTION)
    brisk_raise(L, "brisk.presence: status conditions need Lua's string library");
}

/* Index of the ']' closing the class whose '[' is at p[j], or n and a
** message in *err. A ']' right after '[' or '[^' is a literal. */
static size_t class_end(const char *p, size_t n, size_t j, const char **err) {
  int first = 1;
  j++;
  if (j < n && p[j] == '^') j++;
  for (;;) {
    if (j >= n) { *err = "malformed pattern (missing ']')"; return n; }
    if (p[j] == '%') {
      if (j == n - 1) { *err = "malformed pattern (ends with '%')"; return n; }
      j += 2;
    } else if (p[j] == ']' && !first) {
      return j;
    } else {
      j++;
    }
    first = 0;
  }
}

/*
** Check the syntax of Lua pattern p (n bytes) completely: string.match only
** parses as far as a match attempt gets, so "(%d" passes it on an empty
** subject and would fail on the first status that reaches the capture.
** NULL when the pattern is sound, or what is wrong in Lua's own words.
** Open captures form a stack of increasing numbers; only those up to 9 can
** be referred to (%1..%9), so those are kept and the rest only counted.
*/
static const char *check_pattern(const char *p, size_t n) {
  static const char *const bad_index[] = {
    "invalid capture index %0", "invalid capture index %1",
    "invalid capture index %2", "invalid capture index %3",
    "invalid capture index %4", "invalid capture index %5",
    "invalid capture index %6", "invalid capture index %7",
    "invalid capture index %8", "invalid capture index %9"
  };
  const char *err = NULL;
  size_t i = 0, parens = 0;
  int count = 0, nsmall = 0, small[9];
  size_t nbig = 0;
  unsigned closed = 0;      /* bit k: capture k (1..9) is closed */
  while (i < n) {
    char c = p[i];
    if (c == '(') {
      count++;
      if (count <= 9) small[nsmall++] = count; else nbig++;
      i++;
    } else if (c == ')') {
      if (nbig > 0) nbig--;
      else if (nsmall > 0) closed |= 1u << small[--nsmall];
      else return "invalid pattern capture";
      i++;
    } else if (c == '[') {
      i = class_end(p, n, i, &err);
      if (err) return err;
      i++;
    } else if (c == '%') {
      char d;
      if (i == n - 1) return "malformed pattern (ends with '%')";
      d = p[i + 1];
      if (d == 'b') {
        if (i + 3 >= n) return "missing arguments to '%b'";
        i += 4;
      } else if (d == 'f') {
        if (i + 2 >= n || p[i + 2] != '[') return "missing '[' after '%f' in pattern";
        i = class_end(p, n, i + 2, &err);
        if (err) return err;
        i++;
      } else if (d >= '0' && d <= '9') {
        if (!(closed & (1u << (d - '0')))) return bad_index[d - '0'];
        i += 2;
      } else {
        i += 2;
      }
    } else {
      i++;
    }
  }
  if (nsmall > 0 || nbig > 0) return "unfinished capture";
  for (i = 0; i < n; i++)
    if (p[i] == '(') parens++;
  if (parens > 32) return "too many captures";   /* LUA_MAXCAPTURES */
  return NULL;
}

static void read_bound(lua_State *L, int t, const char *k, Bound *b,
                       int hasstatus, const char *what) {
  lua_getfield(L, t, k);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER ||
        (!lua_isinteger(L, -1) && isnan(lua_tonumber(L, -1))))
      brisk_raise(L, "%s: '%s' must be a number", what, k);
    if (!hasstatus)
      brisk_raise(L, "%s: '%s' needs a 'status' pattern with a capture holding the number", what, k);
    b->set = 1;
    b->isint = (uint8_t)lua_isinteger(L, -1);
    if (b->isint) b->i = lua_tointeger(L, -1);
    else b->n = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
}

/* One value of a "show" condition, at the top of the stack. */
static void read_show(lua_State *L, Rule *ru, const char *what) {
  int i;
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  for (i = 0; s && presence_show_values[i]; i++)
    if (strcmp(s, presence_show_values[i]) == 0 &&
        lua_rawlen(L, -1) == strlen(s)) {
      ru->shows |= (uint8_t)(1u << i);
      return;
    }
  brisk_raise(L, "%s: 'show' must be available, away, chat, dnd or xa (or a list of them)", what);
}

/* The condition fields of rule r (table at t): status, below, above, show. */
static void read_condition(lua_State *L, Rules *rs, int t, int r,
                           const char *what, size_t *bytes) {
  Rule *ru = &rs->rule[r];
  static const char *const fields[] = { "status", "below", "above", "show", NULL };
  int i, any = 0;
  for (i = 0; fields[i]; i++) {
    any |= lua_getfield(L, t, fields[i]) != LUA_TNIL;
    lua_pop(L, 1);
  }
  if (!any) return;
  if (ru->kind != PRESENCE_ONLINE && ru->kind != PRESENCE_STATE)
    brisk_raise(L, "%s: 'status', 'show', 'below' and 'above' only apply to 'online' and 'state' rules", what);
  lua_getfield(L, t, "status");
  if (!lua_isnil(L, -1)) {
    size_t len;
    const char *p, *err;
    if (lua_type(L, -1) != LUA_TSTRING)
      brisk_raise(L, "%s: 'status' must be a Lua pattern", what);
    p = lua_tolstring(L, -1, &len);
    err = check_pattern(p, len);
    if (err == NULL) {
      /* What the syntax check may not know, Lua tells on an empty status. */
      push_string_match(L);
      lua_pushliteral(L, "");
      lua_pushvalue(L, -3);
      if (lua_pcall(L, 2, 0, 0) != LUA_OK) err = lua_tostring(L, -1);
    }
    if (err) brisk_raise(L, "%s: bad status pattern '%s': %s", what, p, err);
    ru->status = (char *)presence_realloc(L, bytes, NULL, 0, len + 1);
    memcpy(ru->status, p, len + 1);
    ru->statuslen = len;
  }
  lua_pop(L, 1);
  read_bound(L, t, "below", &ru->below, ru->status != NULL, what);
  read_bound(L, t, "above", &ru->above, ru->status != NULL, what);
  if (lua_getfield(L, t, "show") == LUA_TTABLE) {
    for (i = 1; lua_geti(L, -1, i) != LUA_TNIL; i++) {
      read_show(L, ru, what);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    ru->hasshow = 1;
  } else if (!lua_isnil(L, -1)) {
    read_show(L, ru, what);
    ru->hasshow = 1;
  }
  lua_pop(L, 1);
  if (ru->status || ru->hasshow) {
    ru->cond = (int8_t)rs->ncond++;
    rs->condmask[ru->kind] |= 1ULL << r;
  }
}

/* Index of a <show/> value in presence_show_values (none: "available"),
** or -1 for a value no condition can name. */
static int show_value(const char *show, size_t len) {
  int i;
  if (show == NULL) return 0;
  for (i = 0; presence_show_values[i]; i++)
    if (strlen(presence_show_values[i]) == len &&
        memcmp(show, presence_show_values[i], len) == 0) return i;
  return -1;
}

/* Replace the value at the top by what Lua's tonumber makes of it and
** return 1, or pop it and return 0 when that is no number. */
static int to_number(lua_State *L) {
  size_t len, n;
  const char *s;
  if (lua_type(L, -1) == LUA_TNUMBER) return 1;
  if (lua_type(L, -1) == LUA_TSTRING) {
    s = lua_tolstring(L, -1, &len);
    n = lua_stringtonumber(L, s);
    if (n == len + 1) { lua_remove(L, -2); return 1; }
    if (n != 0) lua_pop(L, 1);   /* converted only up to an embedded NUL */
  }
  lua_pop(L, 1);
  return 0;
}

/* Compare the number at the top with bound b, as Lua compares numbers:
** op LUA_OPLT for "below", and the other way round for "above". */
static int within_bound(lua_State *L, const Bound *b, int below) {
  int ok;
  if (!b->set) return 1;
  if (b->isint) lua_pushinteger(L, b->i); else lua_pushnumber(L, b->n);
  ok = below ? lua_compare(L, -2, -1, LUA_OPLT) : lua_compare(L, -1, -2, LUA_OPLT);
  lua_pop(L, 1);
  return ok;
}

/* Whether rule ru's condition holds: show (index from show_value) is one
** it names, and the status matches its pattern, the first capture read as
** a number within its bounds. */
static int holds(lua_State *L, const Rule *ru, int show, const char *status,
                 size_t statuslen) {
  int ok;
  if (ru->hasshow && (show < 0 || !(ru->shows & (1u << show)))) return 0;
  if (ru->status == NULL) return 1;
  push_string_match(L);
  lua_pushlstring(L, status ? status : "", status ? statuslen : 0);
  lua_pushlstring(L, ru->status, ru->statuslen);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!ru->below.set && !ru->above.set) {
    lua_pop(L, 1);
    return 1;
  }
  if (!to_number(L)) return 0;
  ok = within_bound(L, &ru->below, 1) && within_bound(L, &ru->above, 0);
  lua_pop(L, 1);
  return ok;
}

uint64_t presence_rules_hold(lua_State *L, const Rules *rs, uint64_t mask,
                             const char *show, size_t showlen,
                             const char *status, size_t statuslen) {
  uint64_t held = 0;
  int r, sv = show_value(show, showlen);
  for (r = 0; r < rs->n; r++)
    if (((mask >> r) & 1) && holds(L, &rs->rule[r], sv, status, statuslen))
      held |= 1ULL << r;
  return held;
}

static int known_field(lua_State *L, int idx) {
  int i;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  for (i = 0; rule_fields[i]; i++)
    if (strcmp(lua_tostring(L, idx), rule_fields[i]) == 0) return 1;
  return 0;
}

/* ----------------------------------------------------------------- rules */

/* Rule r, the table at t; names holds the names of the rules before it. */
static void read_rule(lua_State *L, Rules *rs, int t, int r, int names,
                      size_t *bytes) {
  Rule *ru = &rs->rule[r];
  const char *what;
  double after, within;
  int kind;
  ru->cond = -1;
  if (lua_getfield(L, t, "name") == LUA_TNIL) {
    what = lua_pushfstring(L, "rule #%d", r + 1);
  } else {
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      brisk_raise(L, "rule #%d: 'name' must be a non-empty string", r + 1);
    what = lua_pushfstring(L, "rule '%s'", lua_tostring(L, -1));
    lua_pushvalue(L, -2);
    if (lua_rawget(L, names) != LUA_TNIL) brisk_raise(L, "%s: duplicate name", what);
    lua_pop(L, 1);
    lua_pushvalue(L, -2);
    lua_pushboolean(L, 1);
    lua_rawset(L, names);
  }
  lua_remove(L, -2);  /* the name; "what" stays below everything read next */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (!known_field(L, -1))
      brisk_raise(L, "%s: unknown field '%s'", what, luaL_tolstring(L, -1, NULL));
  }
  if (lua_getfield(L, t, "on") == LUA_TNIL)
    brisk_raise(L, "%s: missing 'on' (the event: online, offline, state, flapping or silent)", what);
  for (kind = PRESENCE_ONLINE; kind < PRESENCE_KINDS; kind++)
    if (lua_type(L, -1) == LUA_TSTRING &&
        strcmp(lua_tostring(L, -1), presence_kind_names[kind]) == 0) break;
  if (kind == PRESENCE_KINDS)
    brisk_raise(L, "%s: unknown event '%s' (expected online, offline, state, flapping or silent)",
                what, luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  ru->kind = (uint8_t)kind;
  lua_getfield(L, t, "match");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      brisk_raise(L, "%s: 'match' must be a string pattern", what);
    presence_compile_glob(L, &ru->match, what, bytes);
  }
  lua_pop(L, 1);
  read_condition(L, rs, t, r, what, bytes);
  after = opt_number_field(L, t, "after", 0, what);
  ru->after = presence_cs(after);
  if (after > 0 && ru->after == 0)
    brisk_raise(L, "%s: 'after' below the engine's resolution of 0.01 s", what);
  if (kind == PRESENCE_SILENT) {
    int i;
    if (ru->after == 0)
      brisk_raise(L, "%s: a silent rule needs 'after' (seconds without presence or activity)", what);
    i = add_step(rs->sil, rs->silmask, &rs->nsil, ru->after);
    rs->silmask[i] |= 1ULL << r;
  } else if (kind == PRESENCE_FLAPPING) {
    lua_Integer n;
    int isint, k;
    lua_getfield(L, t, "transitions");
    n = lua_tointegerx(L, -1, &isint);
    lua_pop(L, 1);
    if (!isint || n < 2 || n > PRESENCE_MAX_RING)
      brisk_raise(L, "%s: a flapping rule needs 'transitions', an integer from 2 to %d", what, PRESENCE_MAX_RING);
    within = opt_number_field(L, t, "within", 0, what);
    if (presence_cs(within) == 0)
      brisk_raise(L, "%s: a flapping rule needs 'within' (seconds)", what);
    if (ru->after)
      brisk_raise(L, "%s: 'after' does not apply to flapping rules", what);
    for (k = 0; k < rs->ndet; k++)
      if (rs->det_n[k] == (uint32_t)n && rs->det_within[k] == presence_cs(within)) break;
    if (k == rs->ndet) {
      if (rs->ndet == PRESENCE_MAX_DETECTORS)
        brisk_raise(L, "%s: more than %d distinct (transitions, within) pairs", what, PRESENCE_MAX_DETECTORS);
      rs->det_n[k] = (uint32_t)n;
      rs->det_within[k] = presence_cs(within);
      rs->ndet++;
      if ((uint32_t)n > rs->ring) rs->ring = (uint32_t)n;
    }
    rs->detmask[k] |= 1ULL << r;
    ru->det = (uint8_t)k;
  } else if (ru->after == 0) {
    rs->immmask[kind] |= 1ULL << r;
  } else {
    int i = add_step(rs->deb[kind], rs->debmask[kind], &rs->ndeb[kind], ru->after);
    rs->debmask[kind][i] |= 1ULL << r;
  }
  lua_pop(L, 1);  /* what */
}

void presence_rules_read(lua_State *L, Rules *rs, int t, size_t *bytes) {
  int r, n = (int)luaL_len(L, t), names;
  if (n > PRESENCE_MAX_RULES) brisk_raise(L, "at most %d rules", PRESENCE_MAX_RULES);
  lua_createtable(L, 0, n);
  names = lua_gettop(L);
  for (r = 0; r < n; r++) {
    lua_rawgeti(L, t, r + 1);
    if (!lua_istable(L, -1)) brisk_raise(L, "rule #%d: not a table", r + 1);
    read_rule(L, rs, lua_gettop(L), r, names, bytes);
    rs->n = r + 1;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void presence_rules_free(lua_State *L, Rules *rs, size_t *bytes) {
  int r;
  /* All slots, not just n: a rule that failed validation half-way may
  ** already own its compiled pattern. */
  for (r = 0; r < PRESENCE_MAX_RULES; r++) {
    Rule *ru = &rs->rule[r];
    presence_realloc(L, bytes, ru->match.tok, ru->match.size, 0);
    ru->match.tok = NULL;
    if (ru->status) presence_realloc(L, bytes, ru->status, ru->statuslen + 1, 0);
    ru->status = NULL;
  }
}
