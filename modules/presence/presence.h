/*
** presence.h — what the parts of brisk.presence share: the JID glob
** compiler (glob.c), the compiled rule set (rules.c) the device engine
** (engine.c) runs, and the openers that register each part's functions in
** the module table (presence.c calls them).
*/
#ifndef PRESENCE_H
#define PRESENCE_H

#include <math.h>
#include <stdint.h>
#include "brisk.h"

/* ------------------------------------------------------------------ globs */

/* Tokens of a compiled glob: a byte value 0..255 stands for itself. */
#define PRESENCE_GLOB_STAR (-1)   /* any run of characters, possibly empty */
#define PRESENCE_GLOB_ANY  (-2)   /* exactly one UTF-8 character */

/* The longest pattern accepted, in bytes: a bare JID is at most 2047 bytes. */
#define PRESENCE_GLOB_MAXLEN 2047

/*
** Compile pattern p (len bytes) into tok, which must have room for len + 2
** tokens. Returns the number of tokens, or -1 and sets *err to a static
** message. A pattern with no '@' names a host and means "*@host".
*/
int presence_glob_compile(const char *p, size_t len, int16_t *tok,
                          const char **err);

/* 1 when the bare JID s (len bytes) matches the n compiled tokens. */
int presence_glob_match(const int16_t *tok, int n, const char *s,
                        size_t len);

/* ------------------------------------------------------------------ rules */

/* Transition kinds, as events and rules name them (presence_kind_names). */
enum {
  PRESENCE_NONE, PRESENCE_ONLINE, PRESENCE_OFFLINE, PRESENCE_STATE,
  PRESENCE_FLAPPING, PRESENCE_SILENT, PRESENCE_KINDS
};
extern const char *const presence_kind_names[];

#define PRESENCE_MAX_RULES 64       /* rule sets are 64-bit masks */
#define PRESENCE_MAX_DETECTORS 8    /* distinct (transitions, within) pairs */
#define PRESENCE_MAX_RING 16        /* largest "transitions" of a flapping rule */

/* A compiled JID glob in a block of its own ("size" bytes). */
typedef struct Match {
  int16_t *tok;       /* NULL: matches every device */
  int ntok;
  size_t size;
} Match;

/* A bound of a condition ("below = 20"), kept as Lua kept it. */
typedef struct Bound {
  uint8_t set, isint;
  lua_Integer i;
  lua_Number n;
} Bound;

typedef struct Rule {
  Match match;
  uint8_t kind;
  uint8_t det;        /* flapping detector index */
  uint32_t after;     /* cs */
  /* Condition on the device's presence (online and state rules). */
  int8_t cond;        /* index among the rules with a condition; -1: none */
  uint8_t hasshow;    /* a "show" condition was given ... */
  uint8_t shows;      /* ... allowing these: bit i for presence_show_values[i] */
  char *status;       /* Lua pattern the status must match (NUL-terminated), or NULL */
  size_t statuslen;
  Bound below, above; /* the status' first capture, read as a number */
} Rule;

/*
** The rules of one engine and the tables derived from them, so that an
** update or a tick finds the rules it fires with a few mask operations.
*/
typedef struct Rules {
  Rule rule[PRESENCE_MAX_RULES];
  int n;
  uint64_t immmask[PRESENCE_KINDS];          /* after == 0, by kind */
  uint32_t deb[PRESENCE_KINDS][PRESENCE_MAX_RULES];  /* sorted distinct afters */
  uint64_t debmask[PRESENCE_KINDS][PRESENCE_MAX_RULES];
  int ndeb[PRESENCE_KINDS];
  uint32_t sil[PRESENCE_MAX_RULES];          /* sorted distinct silences */
  uint64_t silmask[PRESENCE_MAX_RULES];
  int nsil;
  uint32_t det_n[PRESENCE_MAX_DETECTORS], det_within[PRESENCE_MAX_DETECTORS];
  uint64_t detmask[PRESENCE_MAX_DETECTORS];
  int ndet;
  uint32_t ring;      /* the largest "transitions": transitions a device keeps */
  uint64_t condmask[PRESENCE_KINDS];         /* rules with a condition, by kind */
  int ncond;
} Rules;

/* The values a "show" condition may name: bit i of Rule.shows. */
extern const char *const presence_show_values[];

/*
** Read and check the list of rules at stack index t into rs (zeroed by the
** caller); errors name the rule and the problem. Blocks are allocated
** through presence_realloc and counted in *bytes; presence_rules_free gives
** them back, also after reading raised half-way. presence_compile_glob
** compiles the glob at the top of the stack into m the same way; "what"
** names it in errors.
*/
void presence_rules_read(lua_State *L, Rules *rs, int t, size_t *bytes);

/*
** The rules of mask (rules with a condition) whose condition holds for a
** presence with this <show/> and <status/> (NULL: the element is absent).
** Calls Lua's string.match for status patterns; never raises for a status
** Lua cannot match ("pattern too complex": the condition does not hold).
*/
uint64_t presence_rules_hold(lua_State *L, const Rules *rs, uint64_t mask,
                             const char *show, size_t showlen,
                             const char *status, size_t statuslen);
void presence_rules_free(lua_State *L, Rules *rs, size_t *bytes);
void presence_compile_glob(lua_State *L, Match *m, const char *what,
                           size_t *bytes);

/* ------------------------------------------------------------- utilities */

/*
** Resize p from old to sz bytes through the Lua state's allocator, keeping
** *bytes up to date (sz 0 frees p). Out of memory raises and leaves p as
** it was, still owned by whoever points to it.
*/
static inline void *presence_realloc(lua_State *L, size_t *bytes, void *p,
                                     size_t old, size_t sz) {
  void *q;
  if (sz == 0) {
    brisk_free(L, p, old);
    *bytes -= old;
    return NULL;
  }
  q = brisk_alloc(L, p, old, sz);
  if (q == NULL) brisk_raise(L, "brisk.presence: out of memory");
  *bytes = *bytes - old + sz;
  return q;
}

/* Seconds as centiseconds, the engine's unit of time (saturating). */
#define PRESENCE_NO_DUE UINT32_MAX
static inline uint32_t presence_cs(double secs) {
  double v = floor(secs * 100.0 + 1e-6);
  if (!(v > 0)) return 0;
  if (v >= (double)PRESENCE_NO_DUE - 1) return PRESENCE_NO_DUE - 1;
  return (uint32_t)v;
}

/* ---------------------------------------------------------------- openers */

void presence_open_glob(lua_State *L, int mod);
void presence_open_engine(lua_State *L, int mod);
void presence_open_sign(lua_State *L, int mod);

#endif
