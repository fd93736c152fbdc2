/*
** rules.c — the rule compiler of brisk.presence.
**
** presence.new hands its "rules" list here. Every field the engine uses is
** checked (the event, the match glob, the timings) and an error names the
** rule and the problem, "rule 'freezer-offline': unknown event 'gone'", the
** way an operator wrote it in iot_rules. The result is a Rules table: per
** kind, masks of the rules that fire immediately, sorted distinct debounce
** and silence steps, and the flapping detectors.
*/
#include <string.h>
#include "presence.h"

const char *const presence_kind_names[] = {
  "unknown", "online", "offline", "state", "flapping", "silent", NULL
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
    brisk_raise(L, "%s: bad pattern: pattern too long", what);
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

static void read_rule(lua_State *L, Rules *rs, int t, int r, size_t *bytes) {
  Rule *ru = &rs->rule[r];
  char what[160];
  const char *on;
  double after, within;
  int kind;
  lua_getfield(L, t, "name");
  if (lua_type(L, -1) == LUA_TSTRING)
    snprintf(what, sizeof what, "rule '%.100s'", lua_tostring(L, -1));
  else
    snprintf(what, sizeof what, "rule #%d", r + 1);
  lua_pop(L, 1);
  lua_getfield(L, t, "on");
  on = lua_tostring(L, -1);
  for (kind = PRESENCE_ONLINE; kind < PRESENCE_KINDS; kind++)
    if (on && strcmp(on, presence_kind_names[kind]) == 0) break;
  if (kind == PRESENCE_KINDS) {
    if (on) brisk_raise(L, "%s: unknown event '%s' (expected online, offline, state, flapping or silent)", what, on);
    brisk_raise(L, "%s: missing 'on' (the event: online, offline, state, flapping or silent)", what);
  }
  lua_pop(L, 1);
  ru->kind = (uint8_t)kind;
  lua_getfield(L, t, "match");
  if (!lua_isnil(L, -1)) presence_compile_glob(L, &ru->match, what, bytes);
  lua_pop(L, 1);
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
}

void presence_rules_read(lua_State *L, Rules *rs, int t, size_t *bytes) {
  int r, n = (int)luaL_len(L, t);
  if (n > PRESENCE_MAX_RULES) brisk_raise(L, "at most %d rules", PRESENCE_MAX_RULES);
  for (r = 0; r < n; r++) {
    lua_rawgeti(L, t, r + 1);
    if (!lua_istable(L, -1)) brisk_raise(L, "rule #%d: not a table", r + 1);
    read_rule(L, rs, lua_gettop(L), r, bytes);
    rs->n = r + 1;
    lua_pop(L, 1);
  }
}

void presence_rules_free(lua_State *L, Rules *rs, size_t *bytes) {
  int r;
  /* All slots, not just n: a rule that failed validation half-way may
  ** already own its compiled pattern. */
  for (r = 0; r < PRESENCE_MAX_RULES; r++) {
    presence_realloc(L, bytes, rs->rule[r].match.tok, rs->rule[r].match.size, 0);
    rs->rule[r].match.tok = NULL;
  }
}
