/*
** engine.c — the device presence engine of brisk.presence.
**
** One engine tracks every device (a bare JID) of a host in compact
** fixed-size slots, turns the presence Prosody sees into transitions
** (online, offline, state, flapping, silent), and keeps one binary heap of
** timers for all devices for debounced rules ("after = 30") and silence.
** Time is always passed in by the caller (engine:update(jid, now, ...),
** engine:tick(now)), so tests drive it with a fake clock and never sleep.
** Events are queued inside the engine and taken out with engine:pop(),
** which also decides which rules with a status/show condition fire: such
** a rule is edge-triggered, and the engine remembers per device which of
** those conditions it has reported as holding. Rules come from rules.c.
*/
#include <math.h>
#include <string.h>
#include "presence.h"

#define ENGINE_META "brisk.presence.Engine"

static const char *const show_names[] = {
  "", "away", "chat", "dnd", "xa", "other"
};

#define DEV_CHUNK 1024      /* device slots per allocation */
#define NAME_CHUNK 65536    /* bytes of JID text per allocation */
#define NO_DUE PRESENCE_NO_DUE
/* Durations are kept in centiseconds in 32 bits. The epoch moves forward
** (rebase) before the clock gets near 2^31 cs (about 248 days), so that
** differences of stored times never wrap. */
#define REBASE_AT 2000000000u

#define F_ONLINE 1
#define F_KNOWN 2

/*
** A device slot: 40 bytes, plus 4 bytes per remembered transition for
** flapping detection (only as many as the largest "transitions" of any
** flapping rule; none when there is no flapping rule), plus two bits per
** rule with a condition (none when no rule has one): whether the condition
** holds for the presence of the device's last online/state transition
** (debounced events are judged by it when they come due), and whether it
** was reported as holding ("latched": an edge-triggered rule fires again
** only after its condition was seen not to hold). The bits follow the
** ring, at e->condoff.
*/
typedef struct Device {
  uint64_t hash;      /* hash of show, status, priority and payload */
  uint32_t since;     /* cs: when the current online/offline state began */
  uint32_t last;      /* cs: last transition of any kind (debounce base) */
  uint32_t seen;      /* cs: last presence or activity (silence base) */
  uint32_t name;      /* JID: name chunk << 16 | offset */
  uint32_t heappos;   /* 1-based position in the timer heap, 0 when none */
  uint16_t maskid;    /* index into the table of distinct rule sets */
  uint8_t flags;      /* F_ONLINE, F_KNOWN */
  uint8_t show;       /* index into show_names */
  int8_t prio;        /* XMPP priority, -128..127 exactly */
  uint8_t kind;       /* kind of the last transition, for debounce */
  uint8_t didx;       /* next debounce step of that kind not yet fired */
  uint8_t sidx;       /* next silence step not yet fired */
  uint8_t flap;       /* detectors that have reported this device */
  uint8_t ringhead;   /* next ring slot to write */
  uint8_t ringlen;    /* transitions remembered */
  uint32_t ring[];    /* cs of the latest online/offline transitions */
} Device;

/* A device's presence as update() gets it. */
typedef struct Presence {
  const char *show, *status;  /* NULL when the element is absent */
  size_t showlen, statuslen;
  uint64_t hash;      /* of everything that counts as state; 0: offline */
  int8_t prio;
  uint8_t showi;      /* index into show_names */
} Presence;

typedef struct HeapEntry {
  uint32_t due;       /* cs; a lower bound of the device's next due time */
  uint32_t dev;
} HeapEntry;

typedef struct Event {
  double at;          /* seconds (caller's clock) */
  uint64_t mask;      /* rules whose event, device and timing this is */
  uint64_t held;      /* those of them with a condition that holds */
  uint32_t dev;
  uint32_t after;     /* cs: debounce or silence step, 0 when immediate */
  uint32_t dur;       /* cs: time spent in the previous state */
  uint32_t since;     /* cs: start of the state now current */
  uint8_t kind, prev, prev_show, det;
  int8_t prev_prio;
  uint8_t count;      /* flapping: transitions seen within the window */
} Event;

typedef struct Engine {
  double epoch;       /* caller's clock value of cs 0 */
  size_t bytes;       /* every byte allocated by this engine */
  /* devices */
  uint8_t **chunks; uint32_t nchunks, capchunks;
  uint32_t ndev, nonline, slot;
  uint32_t condoff, condbytes;  /* condition bits: offset in a slot, bytes per set */
  /* JID text */
  char **names; uint32_t nnames, capnames, nameused;
  /* index: open addressing over device index + 1 */
  uint32_t *index; uint32_t capindex;
  /* timers */
  HeapEntry *heap; uint32_t nheap, capheap;
  /* queued events, taken from head */
  Event *ev; uint32_t nev, evhead, capev;
  /* distinct rule sets, so that a device stores 16 bits and not 64 */
  uint64_t *masks; uint32_t nmasks, capmasks;
  /* selection: devices are the JIDs matching any of these (all if none) */
  Match *sel; int nsels, capsels;
  Rules rs;           /* the rules and the tables derived from them */
  double now;         /* latest clock value seen */
} Engine;

/* ---------------------------------------------------------------- memory */

/* Every block the engine owns is counted in e->bytes (presence_realloc)
** and given back by l_gc with the size it has. */
static void *eng_realloc(lua_State *L, Engine *e, void *p, size_t old,
                         size_t sz) {
  return presence_realloc(L, &e->bytes, p, old, sz);
}

/* Grow an array to hold at least need elements, by half again each time. */
static void *grow(lua_State *L, Engine *e, void *p, uint32_t *cap,
                  uint32_t need, size_t elem, uint32_t first) {
  uint32_t c = *cap;
  if (need <= c) return p;
  if (need > UINT32_MAX / 2 || (size_t)need * elem / elem != need)
    brisk_raise(L, "brisk.presence: too many entries");
  if (c == 0) c = first;
  while (c < need) c = c + c / 2 + 1;
  p = eng_realloc(L, e, p, (size_t)*cap * elem, (size_t)c * elem);
  *cap = c;
  return p;
}

static Device *dev_at(Engine *e, uint32_t i) {
  return (Device *)(e->chunks[i / DEV_CHUNK] + (size_t)(i % DEV_CHUNK) * e->slot);
}

static const char *dev_name(Engine *e, const Device *d, size_t *len) {
  const char *p = e->names[d->name >> 16] + (d->name & 0xFFFF);
  uint16_t l;
  memcpy(&l, p, 2);
  *len = l;
  return p + 2;
}

/* The device's condition bits: hold (which == 0) or latched (which == 1),
** one bit per rule with a condition, at the rule's index among those. */
static uint8_t *cond_bits(Engine *e, Device *d, int which) {
  return (uint8_t *)d + e->condoff + (size_t)which * e->condbytes;
}

static int bit_get(const uint8_t *bits, int i) { return (bits[i >> 3] >> (i & 7)) & 1; }

static void bit_set(uint8_t *bits, int i, int v) {
  if (v) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
  else bits[i >> 3] &= (uint8_t)~(1u << (i & 7));
}

/* ------------------------------------------------------------------ time */

static void rebase(Engine *e, uint32_t shift);

/* The caller's clock value as cs after the epoch; moves the epoch forward
** when the clock has run far enough for 32 bits to get tight. The clock may
** not go backwards: an older value is taken as the latest one seen. */
static uint32_t clock_cs(Engine *e, double now) {
  uint32_t cs;
  if (now < e->now) now = e->now;
  e->now = now;
  cs = presence_cs(now - e->epoch);
  if (cs >= REBASE_AT) {
    uint32_t shift = cs - REBASE_AT / 2;
    rebase(e, shift);
    cs -= shift;
  }
  return cs;
}

static uint32_t sub0(uint32_t a, uint32_t b) { return a > b ? a - b : 0; }

static void rebase(Engine *e, uint32_t shift) {
  uint32_t i, k;
  for (i = 0; i < e->ndev; i++) {
    Device *d = dev_at(e, i);
    d->since = sub0(d->since, shift);
    d->last = sub0(d->last, shift);
    d->seen = sub0(d->seen, shift);
    for (k = 0; k < d->ringlen; k++) d->ring[k] = sub0(d->ring[k], shift);
  }
  for (i = 0; i < e->nheap; i++) e->heap[i].due = sub0(e->heap[i].due, shift);
  for (i = e->evhead; i < e->nev; i++) e->ev[i].since = sub0(e->ev[i].since, shift);
  e->epoch += shift / 100.0;
}

/* ------------------------------------------------------------------ heap */

static int heap_less(const HeapEntry *a, const HeapEntry *b) {
  return a->due < b->due || (a->due == b->due && a->dev < b->dev);
}

static void heap_set(Engine *e, uint32_t pos, HeapEntry h) {
  e->heap[pos] = h;
  dev_at(e, h.dev)->heappos = pos + 1;
}

static void heap_up(Engine *e, uint32_t pos) {
  HeapEntry h = e->heap[pos];
  while (pos > 0) {
    uint32_t parent = (pos - 1) / 2;
    if (!heap_less(&h, &e->heap[parent])) break;
    heap_set(e, pos, e->heap[parent]);
    pos = parent;
  }
  heap_set(e, pos, h);
}

static void heap_down(Engine *e, uint32_t pos) {
  HeapEntry h = e->heap[pos];
  for (;;) {
    uint32_t c = 2 * pos + 1;
    if (c >= e->nheap) break;
    if (c + 1 < e->nheap && heap_less(&e->heap[c + 1], &e->heap[c])) c++;
    if (!heap_less(&e->heap[c], &h)) break;
    heap_set(e, pos, e->heap[c]);
    pos = c;
  }
  heap_set(e, pos, h);
}

static void heap_pop(Engine *e) {
  dev_at(e, e->heap[0].dev)->heappos = 0;
  if (--e->nheap > 0) {
    e->heap[0] = e->heap[e->nheap];
    heap_down(e, 0);
  }
}

/* The next time something is due for device d: its next debounce step or
** its next silence step, or NO_DUE. */
static uint32_t dev_due(Engine *e, const Device *d, int *which) {
  uint32_t due = NO_DUE;
  *which = 0;
  if (d->kind != PRESENCE_NONE && d->didx < e->rs.ndeb[d->kind]) {
    due = d->last + e->rs.deb[d->kind][d->didx];
    *which = 1;
  }
  if ((d->flags & F_ONLINE) && d->sidx < e->rs.nsil) {
    uint32_t s = d->seen + e->rs.sil[d->sidx];
    if (s < due) { due = s; *which = 2; }
  }
  return due;
}

/*
** Make sure the heap holds an entry for d no later than its next due time.
** An entry that is already earlier is left alone (it is only a lower
** bound: tick() recomputes the real time when it comes up), so activity
** from a device, the common case, costs no heap work at all.
*/
static void schedule(lua_State *L, Engine *e, uint32_t di, Device *d) {
  int which;
  uint32_t due = dev_due(e, d, &which);
  if (due == NO_DUE) return;
  if (d->heappos) {
    uint32_t pos = d->heappos - 1;
    if (due < e->heap[pos].due) {
      e->heap[pos].due = due;
      heap_up(e, pos);
    }
    return;
  }
  e->heap = (HeapEntry *)grow(L, e, e->heap, &e->capheap, e->nheap + 1,
                              sizeof(HeapEntry), 64);
  e->heap[e->nheap].due = due;
  e->heap[e->nheap].dev = di;
  e->nheap++;
  heap_up(e, e->nheap - 1);
}

/* ---------------------------------------------------------------- events */

static Event *push_event(lua_State *L, Engine *e, uint8_t kind, uint32_t di,
                         uint64_t mask, double at) {
  Event *ev;
  if (e->evhead == e->nev) e->evhead = e->nev = 0;
  e->ev = (Event *)grow(L, e, e->ev, &e->capev, e->nev + 1, sizeof(Event), 16);
  ev = &e->ev[e->nev++];
  memset(ev, 0, sizeof *ev);
  ev->kind = kind;
  ev->dev = di;
  ev->mask = mask;
  ev->at = at;
  return ev;
}

/* --------------------------------------------------------------- devices */

static uint64_t hash_bytes(uint64_t h, const char *s, size_t len) {
  size_t i;
  for (i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static uint64_t hash_mix(uint64_t h) {
  h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

static uint32_t jid_hash(const char *s, size_t len) {
  return (uint32_t)hash_mix(hash_bytes(0xcbf29ce484222325ULL, s, len));
}

static int selected(Engine *e, const char *jid, size_t len) {
  int i;
  if (e->nsels == 0) return 1;
  for (i = 0; i < e->nsels; i++)
    if (presence_glob_match(e->sel[i].tok, e->sel[i].ntok, jid, len)) return 1;
  return 0;
}

static uint16_t mask_id(lua_State *L, Engine *e, uint64_t m) {
  uint32_t i;
  for (i = 0; i < e->nmasks; i++)
    if (e->masks[i] == m) return (uint16_t)i;
  if (e->nmasks >= 65535) brisk_raise(L, "brisk.presence: too many distinct rule sets");
  e->masks = (uint64_t *)grow(L, e, e->masks, &e->capmasks, e->nmasks + 1,
                              sizeof(uint64_t), 8);
  e->masks[e->nmasks] = m;
  return (uint16_t)e->nmasks++;
}

static void index_insert(Engine *e, uint32_t di, uint32_t h) {
  uint32_t m = e->capindex - 1, p = h & m;
  while (e->index[p]) p = (p + 1) & m;
  e->index[p] = di + 1;
}

static void index_grow(lua_State *L, Engine *e) {
  uint32_t i, old = e->capindex, cap = old ? old * 2 : 1024;
  uint32_t *idx = (uint32_t *)eng_realloc(L, e, NULL, 0, (size_t)cap * sizeof(uint32_t));
  memset(idx, 0, (size_t)cap * sizeof(uint32_t));
  eng_realloc(L, e, e->index, (size_t)old * sizeof(uint32_t), 0);
  e->index = idx;
  e->capindex = cap;
  for (i = 0; i < e->ndev; i++) {
    size_t len;
    const char *s = dev_name(e, dev_at(e, i), &len);
    index_insert(e, i, jid_hash(s, len));
  }
}

/* Device index of jid, or UINT32_MAX. */
static uint32_t lookup(Engine *e, const char *jid, size_t len) {
  uint32_t m, p;
  if (e->capindex == 0) return UINT32_MAX;
  m = e->capindex - 1;
  p = jid_hash(jid, len) & m;
  while (e->index[p]) {
    uint32_t di = e->index[p] - 1;
    size_t l;
    const char *s = dev_name(e, dev_at(e, di), &l);
    if (l == len && memcmp(s, jid, len) == 0) return di;
    p = (p + 1) & m;
  }
  return UINT32_MAX;
}

static uint32_t store_name(lua_State *L, Engine *e, const char *jid, size_t len) {
  uint16_t l = (uint16_t)len;
  char *p;
  if (e->nnames == 0 || e->nameused + 2 + len > NAME_CHUNK) {
    e->names = (char **)grow(L, e, e->names, &e->capnames, e->nnames + 1,
                             sizeof(char *), 8);
    e->names[e->nnames] = NULL;
    e->names[e->nnames] = (char *)eng_realloc(L, e, NULL, 0, NAME_CHUNK);
    e->nnames++;
    e->nameused = 0;
  }
  p = e->names[e->nnames - 1] + e->nameused;
  memcpy(p, &l, 2);
  memcpy(p + 2, jid, len);
  e->nameused += (uint32_t)(2 + len);
  return (e->nnames - 1) << 16 | (uint32_t)(p - e->names[e->nnames - 1]);
}

/* Create the device slot for jid (known not to exist yet). */
static uint32_t create(lua_State *L, Engine *e, const char *jid, size_t len,
                       uint32_t now) {
  uint32_t di = e->ndev;
  uint64_t m = 0;
  Device *d;
  int r;
  if (di == UINT32_MAX - 1) brisk_raise(L, "brisk.presence: too many devices");
  for (r = 0; r < e->rs.n; r++)
    if (!e->rs.rule[r].match.tok ||
        presence_glob_match(e->rs.rule[r].match.tok, e->rs.rule[r].match.ntok, jid, len))
      m |= 1ULL << r;
  if ((uint64_t)(e->ndev + 1) * 4 > (uint64_t)e->capindex * 3) index_grow(L, e);
  if (di / DEV_CHUNK >= e->nchunks) {
    e->chunks = (uint8_t **)grow(L, e, e->chunks, &e->capchunks, e->nchunks + 1,
                                 sizeof(uint8_t *), 16);
    e->chunks[e->nchunks] = (uint8_t *)eng_realloc(L, e, NULL, 0,
                                                   (size_t)DEV_CHUNK * e->slot);
    e->nchunks++;
  }
  d = dev_at(e, di);
  memset(d, 0, e->slot);
  d->maskid = mask_id(L, e, m);
  d->name = store_name(L, e, jid, len);
  d->since = d->last = d->seen = now;
  e->ndev++;
  index_insert(e, di, jid_hash(jid, len));
  return di;
}

/* Count ring entries within the last "within" cs. */
static int ring_count(const Device *d, uint32_t now, uint32_t within) {
  int k, c = 0;
  for (k = 0; k < d->ringlen; k++)
    if (now - d->ring[k] < within || d->ring[k] > now) c++;
  return c;
}

/* An online/offline transition happened at now: remember it and report
** every flapping detector that has now seen its count within its window. */
static void flapping(lua_State *L, Engine *e, uint32_t di, Device *d,
                     uint32_t now, double at) {
  int k;
  uint64_t dm = e->masks[d->maskid];
  if (e->rs.ring == 0) return;
  d->ring[d->ringhead] = now;
  d->ringhead = (uint8_t)((d->ringhead + 1) % e->rs.ring);
  if (d->ringlen < e->rs.ring) d->ringlen++;
  for (k = 0; k < e->rs.ndet; k++) {
    int c = ring_count(d, now, e->rs.det_within[k]);
    if ((uint32_t)c >= e->rs.det_n[k]) {
      if (!(d->flap & (1u << k)) && (dm & e->rs.detmask[k])) {
        Event *ev;
        d->flap |= (uint8_t)(1u << k);
        ev = push_event(L, e, PRESENCE_FLAPPING, di, dm & e->rs.detmask[k], at);
        d = dev_at(e, di);
        ev->det = (uint8_t)k;
        ev->count = (uint8_t)c;
        ev->since = d->since;
        ev->prev = (d->flags & F_ONLINE) ? PRESENCE_OFFLINE : PRESENCE_ONLINE;
        ev->prev_show = d->show;
        ev->prev_prio = d->prio;
      }
    } else {
      d->flap &= (uint8_t)~(1u << k);
    }
  }
}

/* The <show/> of a presence as an index into show_names (none: 0). */
static uint8_t show_index(const char *s) {
  int i;
  if (s == NULL) return 0;
  for (i = 1; i <= 4; i++)
    if (strcmp(s, show_names[i]) == 0) return (uint8_t)i;
  return 5;
}

/* Remember, for the rules of cm, which conditions hold (held). */
static void store_held(Engine *e, Device *d, uint64_t cm, uint64_t held) {
  int r;
  for (r = 0; cm; r++, cm >>= 1)
    if (cm & 1) bit_set(cond_bits(e, d, 0), e->rs.rule[r].cond, (int)((held >> r) & 1));
}

/* Of the rules of cm, those whose condition held at the last transition. */
static uint64_t load_held(Engine *e, Device *d, uint64_t cm) {
  uint64_t held = 0;
  int r;
  for (r = 0; cm; r++, cm >>= 1)
    if ((cm & 1) && bit_get(cond_bits(e, d, 0), e->rs.rule[r].cond)) held |= 1ULL << r;
  return held;
}

/*
** The heart: a device's presence as a whole is now (available, show,
** priority, hash of everything that counts as its state).
*/
static int apply(lua_State *L, Engine *e, uint32_t di, uint32_t now, double at,
                 int avail, const Presence *p) {
  Device *d = dev_at(e, di);
  uint64_t dm = e->masks[d->maskid], cm = 0, held = 0;
  uint32_t before = e->nev - e->evhead;
  int known = d->flags & F_KNOWN;
  Event *ev;
  /* An online or state transition: first judge the conditions of the
  ** device's rules of that kind on this presence (Lua's string.match may
  ** run), before anything about the device changes. */
  if (avail && (!(d->flags & F_ONLINE) || p->hash != d->hash)) {
    cm = dm & e->rs.condmask[(d->flags & F_ONLINE) ? PRESENCE_STATE : PRESENCE_ONLINE];
    if (cm) held = presence_rules_hold(L, &e->rs, cm, p->show, p->showlen,
                                       p->status, p->statuslen);
  }
  d->seen = now;
  d->sidx = 0;
  d->flags |= F_KNOWN;
  if (avail && !(d->flags & F_ONLINE)) {
    ev = push_event(L, e, PRESENCE_ONLINE, di, dm & e->rs.immmask[PRESENCE_ONLINE], at);
    d = dev_at(e, di);
    ev->prev = known ? PRESENCE_OFFLINE : PRESENCE_NONE;
    ev->dur = known ? now - d->since : 0;
    ev->prev_show = d->show;
    ev->prev_prio = d->prio;
    ev->since = now;
    d->flags |= F_ONLINE;
    e->nonline++;
    d->since = d->last = now;
    d->kind = PRESENCE_ONLINE;
    d->didx = 0;
    d->hash = p->hash; d->show = p->showi; d->prio = p->prio;
    ev->held = held;
    store_held(e, d, cm, held);
    flapping(L, e, di, d, now, at);
  } else if (avail) {
    if (p->hash != d->hash) {
      ev = push_event(L, e, PRESENCE_STATE, di, dm & e->rs.immmask[PRESENCE_STATE], at);
      d = dev_at(e, di);
      ev->prev = PRESENCE_ONLINE;
      ev->dur = now - d->last;
      ev->prev_show = d->show;
      ev->prev_prio = d->prio;
      ev->since = d->since;
      d->last = now;
      d->kind = PRESENCE_STATE;
      d->didx = 0;
      d->hash = p->hash; d->show = p->showi; d->prio = p->prio;
      ev->held = held;
      store_held(e, d, cm, held);
    }
  } else if (d->flags & F_ONLINE) {
    ev = push_event(L, e, PRESENCE_OFFLINE, di, dm & e->rs.immmask[PRESENCE_OFFLINE], at);
    d = dev_at(e, di);
    ev->prev = PRESENCE_ONLINE;
    ev->dur = now - d->since;
    ev->prev_show = d->show;
    ev->prev_prio = d->prio;
    ev->since = now;
    d->flags &= (uint8_t)~F_ONLINE;
    e->nonline--;
    d->since = d->last = now;
    d->kind = PRESENCE_OFFLINE;
    d->didx = 0;
    d->hash = 0; d->show = 0; d->prio = 0;
    flapping(L, e, di, d, now, at);
  }
  schedule(L, e, di, dev_at(e, di));
  return (int)(e->nev - e->evhead - before);
}

/* ------------------------------------------------------------ Lua: engine */

static Engine *check_engine(lua_State *L) {
  Engine *e = (Engine *)luaL_checkudata(L, 1, ENGINE_META);
  if (e->slot == 0) brisk_raise(L, "brisk.presence: engine is closed");
  return e;
}

static double check_time(lua_State *L, int arg) {
  double t = luaL_checknumber(L, arg);
  luaL_argcheck(L, isfinite(t), arg, "time must be a finite number");
  return t;
}

static const char *check_jid(lua_State *L, int arg, size_t *len) {
  const char *s = luaL_checklstring(L, arg, len);
  luaL_argcheck(L, *len > 0 && *len <= PRESENCE_GLOB_MAXLEN, arg, "bad JID length");
  return s;
}

/* Priority is read the way mod_presence reads it: an integer, clamped to
** -128..127. This is the one place that clamps, for update() and for
** presence.priority() alike. */
static lua_Integer clamp_priority(lua_Integer prio) {
  return prio < -128 ? -128 : prio > 127 ? 127 : prio;
}

/*
** presence.priority(text) -> the priority of a presence whose <priority/>
** holds text (nil when it has none): "[+-]digits" as an integer, clamped;
** anything else is 0. The same reading as mod_presence's, so that the
** module picks a device's leading resource the way Prosody does.
*/
static int l_priority(lua_State *L) {
  size_t len, i = 0;
  const char *s = luaL_optlstring(L, 1, NULL, &len);
  lua_Integer v = 0;
  int neg = 0;
  if (s != NULL && len > 0 && (s[0] == '+' || s[0] == '-')) {
    neg = s[0] == '-';
    i = 1;
  }
  if (s == NULL || i == len) { lua_pushinteger(L, 0); return 1; }
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') { lua_pushinteger(L, 0); return 1; }
    if (v <= 128) v = v * 10 + (s[i] - '0');  /* beyond 128 it clamps anyway */
  }
  lua_pushinteger(L, clamp_priority(neg ? -v : v));
  return 1;
}

/*
** engine:update(jid, now, available, show, status, priority, payload)
** Feed the device's aggregate presence. Returns the number of events
** queued, or fail when jid is not a device of this engine.
*/
static int l_update(lua_State *L) {
  Engine *e = check_engine(L);
  size_t len, sl = 0, pl = 0, shl = 0;
  const char *jid = check_jid(L, 2, &len);
  double at = check_time(L, 3);
  int avail = lua_toboolean(L, 4);
  const char *show = luaL_optlstring(L, 5, NULL, &shl);
  const char *status = luaL_optlstring(L, 6, NULL, &sl);
  lua_Integer prio = clamp_priority(luaL_optinteger(L, 7, 0));
  const char *payload = luaL_optlstring(L, 8, NULL, &pl);
  uint32_t now = clock_cs(e, at), di;
  uint64_t h = 0;
  Presence p;
  di = lookup(e, jid, len);
  if (di == UINT32_MAX) {
    if (!selected(e, jid, len)) { luaL_pushfail(L); return 1; }
    di = create(L, e, jid, len, now);
  }
  if (avail) {
    /* Each field is prefixed by its length (or -1 when absent), so that
    ** moving bytes between fields always changes the hash input. */
    int64_t pre[4];
    pre[0] = show ? (int64_t)shl : -1;
    pre[1] = status ? (int64_t)sl : -1;
    pre[2] = payload ? (int64_t)pl : -1;
    pre[3] = (int64_t)prio;
    h = hash_bytes(0xcbf29ce484222325ULL, (const char *)pre, sizeof pre);
    if (show) h = hash_bytes(h, show, shl);
    if (status) h = hash_bytes(h, status, sl);
    if (payload) h = hash_bytes(h, payload, pl);
    h = hash_mix(h) | 1;   /* never 0, which marks "offline" */
  }
  p.show = show; p.showlen = shl;
  p.status = status; p.statuslen = sl;
  p.hash = h;
  p.prio = (int8_t)prio;
  p.showi = show_index(show);
  lua_pushinteger(L, apply(L, e, di, now, at, avail, &p));
  return 1;
}

/* engine:touch(jid, now): activity from the device (resets silence).
** Returns true when jid is a tracked device, fail when it is not. */
static int l_touch(lua_State *L) {
  Engine *e = check_engine(L);
  size_t len;
  const char *jid = check_jid(L, 2, &len);
  uint32_t now = clock_cs(e, check_time(L, 3));
  uint32_t di = lookup(e, jid, len);
  Device *d;
  if (di == UINT32_MAX) { luaL_pushfail(L); return 1; }
  d = dev_at(e, di);
  if (d->seen != now || d->sidx != 0) {
    d->seen = now;
    d->sidx = 0;
    schedule(L, e, di, d);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** engine:tick(now): fire every debounce and silence step due by now, in
** order of due time. Returns the number of events queued.
*/
static int l_tick(lua_State *L) {
  Engine *e = check_engine(L);
  uint32_t now = clock_cs(e, check_time(L, 2));
  uint32_t before = e->nev - e->evhead;
  while (e->nheap > 0 && e->heap[0].due <= now) {
    uint32_t di = e->heap[0].dev;
    Device *d = dev_at(e, di);
    int which;
    uint32_t due = dev_due(e, d, &which);
    if (due > e->heap[0].due) {
      /* Only a lower bound came up: move the entry to the real time, which
      ** may still be due now but after other devices' entries. */
      if (due == NO_DUE) heap_pop(e);
      else { e->heap[0].due = due; heap_down(e, 0); }
      continue;
    }
    {
      uint64_t dm = e->masks[d->maskid], m;
      Event *ev;
      double at = e->epoch + due / 100.0;
      if (which == 1) {
        m = dm & e->rs.debmask[d->kind][d->didx];
        if (m) {
          ev = push_event(L, e, d->kind, di, m, at);
          d = dev_at(e, di);
          ev->after = e->rs.deb[d->kind][d->didx];
          ev->prev = d->kind == PRESENCE_STATE ? PRESENCE_ONLINE
                   : d->kind == PRESENCE_ONLINE ? PRESENCE_OFFLINE : PRESENCE_ONLINE;
          ev->dur = due - d->last;
          ev->since = d->since;
          ev->prev_show = d->show;
          ev->prev_prio = d->prio;
          /* Judged by the presence that started the debounce: anything
          ** since would have been a transition, and cancelled this. */
          ev->held = load_held(e, d, m & e->rs.condmask[d->kind]);
        }
        d->didx++;
      } else {
        m = dm & e->rs.silmask[d->sidx];
        if (m) {
          ev = push_event(L, e, PRESENCE_SILENT, di, m, at);
          d = dev_at(e, di);
          ev->after = e->rs.sil[d->sidx];
          ev->prev = PRESENCE_ONLINE;
          ev->dur = due - d->seen;
          ev->since = d->since;
          ev->prev_show = d->show;
          ev->prev_prio = d->prio;
        }
        d->sidx++;
      }
      due = dev_due(e, d, &which);
      if (due == NO_DUE) heap_pop(e);
      else { e->heap[0].due = due; heap_down(e, 0); }
    }
  }
  lua_pushinteger(L, (lua_Integer)(e->nev - e->evhead - before));
  return 1;
}

static void push_state(lua_State *L, const Device *d) {
  lua_pushstring(L, !(d->flags & F_KNOWN) ? "unknown"
                    : (d->flags & F_ONLINE) ? "online" : "offline");
}

/* The queue is empty: a burst (a whole fleet reconnecting) may have grown
** it far beyond what steady state needs, so give that memory back. */
static void drained(lua_State *L, Engine *e) {
  e->evhead = e->nev = 0;
  if (e->capev > 256) {
    e->ev = (Event *)eng_realloc(L, e, e->ev, (size_t)e->capev * sizeof(Event),
                                 256 * sizeof(Event));
    e->capev = 256;
  }
}

/*
** Deliver event ev: the rules it fires. A rule without a condition fires
** whenever the engine queued it. A rule with a condition is edge-triggered:
** it fires when its condition holds and the device's latch for it is not
** set (then it is set), and a condition that does not hold clears the
** latch. An offline transition clears every latch of the device. Latches
** change when an event is delivered, not when it is queued, so events
** dropped unseen (engine:clear()) leave them as they were.
*/
static uint64_t deliver(Engine *e, const Event *ev) {
  Device *d = dev_at(e, ev->dev);
  uint64_t fired = ev->mask, cm = ev->mask;
  int r;
  if (e->condbytes == 0) return fired;
  cm &= e->rs.condmask[PRESENCE_ONLINE] | e->rs.condmask[PRESENCE_STATE];
  for (r = 0; cm; r++, cm >>= 1) {
    if (cm & 1) {
      uint8_t *latched = cond_bits(e, d, 1);
      int c = e->rs.rule[r].cond;
      if (((ev->held >> r) & 1) && !bit_get(latched, c)) {
        bit_set(latched, c, 1);
      } else {
        if (!((ev->held >> r) & 1)) bit_set(latched, c, 0);
        fired &= ~(1ULL << r);
      }
    }
  }
  if (ev->kind == PRESENCE_OFFLINE) memset(cond_bits(e, d, 1), 0, e->condbytes);
  return fired;
}

/*
** engine:pop() -> the oldest queued event as a table, or fail. Its "rules"
** are those it fires (see deliver). A debounced or silence event that
** fires no rule exists only for its rules, so it is skipped.
*/
static int l_pop(lua_State *L) {
  Engine *e = check_engine(L);
  Event *ev = NULL;
  Device *d;
  size_t len;
  const char *jid;
  uint64_t fired = 0;
  int r, n = 0;
  while (e->evhead < e->nev) {
    Event *x = &e->ev[e->evhead++];
    fired = deliver(e, x);
    if (x->after == 0 || fired) { ev = x; break; }
  }
  if (ev == NULL) {
    if (e->nev > 0) drained(L, e);
    luaL_pushfail(L);
    return 1;
  }
  d = dev_at(e, ev->dev);
  jid = dev_name(e, d, &len);
  lua_createtable(L, 0, 16);
  lua_pushstring(L, presence_kind_names[ev->kind]); lua_setfield(L, -2, "kind");
  lua_pushlstring(L, jid, len); lua_setfield(L, -2, "jid");
  lua_pushnumber(L, ev->at); lua_setfield(L, -2, "time");
  lua_pushnumber(L, e->epoch + ev->since / 100.0); lua_setfield(L, -2, "since");
  lua_pushstring(L, presence_kind_names[ev->prev]); lua_setfield(L, -2, "previous");
  lua_pushnumber(L, ev->dur / 100.0); lua_setfield(L, -2, "duration");
  lua_pushnumber(L, ev->after / 100.0); lua_setfield(L, -2, "after");
  push_state(L, d); lua_setfield(L, -2, "state");
  if (d->flags & F_ONLINE) {
    lua_pushstring(L, show_names[d->show]); lua_setfield(L, -2, "show_class");
    lua_pushinteger(L, d->prio); lua_setfield(L, -2, "priority");
  }
  lua_pushstring(L, show_names[ev->prev_show]); lua_setfield(L, -2, "previous_show_class");
  lua_pushinteger(L, ev->prev_prio); lua_setfield(L, -2, "previous_priority");
  if (ev->kind == PRESENCE_FLAPPING) {
    lua_pushinteger(L, ev->count); lua_setfield(L, -2, "transitions");
    lua_pushnumber(L, e->rs.det_within[ev->det] / 100.0); lua_setfield(L, -2, "within");
  }
  lua_createtable(L, 4, 0);
  for (r = 0; r < e->rs.n; r++)
    if (fired & (1ULL << r)) {
      lua_pushinteger(L, r + 1);
      lua_rawseti(L, -2, ++n);
    }
  lua_setfield(L, -2, "rules");
  if (e->evhead == e->nev) drained(L, e);
  return 1;
}

/*
** engine:clear() -> drop every queued event without delivering it, and
** return how many there were. mod_brisk_iot enters the devices online when
** it loads this way, silently: as if it had always known them.
*/
static int l_clear(lua_State *L) {
  Engine *e = check_engine(L);
  lua_Integer n = (lua_Integer)(e->nev - e->evhead);
  if (e->nev > 0) drained(L, e);
  lua_pushinteger(L, n);
  return 1;
}

/* engine:pending() -> number of queued events. */
static int l_pending(lua_State *L) {
  Engine *e = check_engine(L);
  lua_pushinteger(L, e->nev - e->evhead);
  return 1;
}

/* engine:next_due() -> caller's clock time of the earliest timer, or fail. */
static int l_next_due(lua_State *L) {
  Engine *e = check_engine(L);
  if (e->nheap == 0) { luaL_pushfail(L); return 1; }
  lua_pushnumber(L, e->epoch + e->heap[0].due / 100.0);
  return 1;
}

static void push_device(lua_State *L, Engine *e, uint32_t di) {
  Device *d = dev_at(e, di);
  size_t len;
  const char *jid = dev_name(e, d, &len);
  int k, flap = 0;
  uint32_t now = presence_cs(e->now - e->epoch);
  lua_createtable(L, 0, 10);
  lua_pushlstring(L, jid, len); lua_setfield(L, -2, "jid");
  push_state(L, d); lua_setfield(L, -2, "state");
  lua_pushnumber(L, e->epoch + d->since / 100.0); lua_setfield(L, -2, "since");
  lua_pushnumber(L, e->epoch + d->seen / 100.0); lua_setfield(L, -2, "seen");
  lua_pushnumber(L, e->epoch + d->last / 100.0); lua_setfield(L, -2, "changed");
  if (d->flags & F_ONLINE) {
    lua_pushstring(L, show_names[d->show]); lua_setfield(L, -2, "show_class");
    lua_pushinteger(L, d->prio); lua_setfield(L, -2, "priority");
  }
  for (k = 0; k < e->rs.ndet; k++)
    if ((d->flap & (1u << k)) &&
        (uint32_t)ring_count(d, now, e->rs.det_within[k]) >= e->rs.det_n[k])
      flap = 1;
  lua_pushboolean(L, flap); lua_setfield(L, -2, "flapping");
}

/* engine:get(jid) -> a table describing the device, or fail. */
static int l_get(lua_State *L) {
  Engine *e = check_engine(L);
  size_t len;
  const char *jid = check_jid(L, 2, &len);
  uint32_t di = lookup(e, jid, len);
  if (di == UINT32_MAX) { luaL_pushfail(L); return 1; }
  push_device(L, e, di);
  return 1;
}

/* engine:device(i) -> the i-th device (1-based, creation order), or fail. */
static int l_device(lua_State *L) {
  Engine *e = check_engine(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  if (i < 1 || (lua_Unsigned)i > e->ndev) { luaL_pushfail(L); return 1; }
  push_device(L, e, (uint32_t)(i - 1));
  return 1;
}

/* engine:stats() -> counts and memory. */
static int l_stats(lua_State *L) {
  Engine *e = check_engine(L);
  uint32_t i, known = 0;
  for (i = 0; i < e->ndev; i++)
    if (dev_at(e, i)->flags & F_KNOWN) known++;
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, e->ndev); lua_setfield(L, -2, "devices");
  lua_pushinteger(L, e->nonline); lua_setfield(L, -2, "online");
  lua_pushinteger(L, known - e->nonline); lua_setfield(L, -2, "offline");
  lua_pushinteger(L, e->ndev - known); lua_setfield(L, -2, "unknown");
  lua_pushinteger(L, e->nheap); lua_setfield(L, -2, "timers");
  lua_pushinteger(L, e->nev - e->evhead); lua_setfield(L, -2, "pending");
  lua_pushinteger(L, (lua_Integer)e->bytes); lua_setfield(L, -2, "memory");
  lua_pushinteger(L, e->slot); lua_setfield(L, -2, "slot_size");
  return 1;
}

/* engine:memory() -> bytes allocated by the engine (all of it). */
static int l_memory(lua_State *L) {
  Engine *e = check_engine(L);
  lua_pushinteger(L, (lua_Integer)e->bytes);
  return 1;
}

static int l_gc(lua_State *L) {
  Engine *e = (Engine *)luaL_checkudata(L, 1, ENGINE_META);
  uint32_t i;
  int r;
  for (i = 0; i < e->nchunks; i++)
    eng_realloc(L, e, e->chunks[i], (size_t)DEV_CHUNK * e->slot, 0);
  for (i = 0; i < e->nnames; i++) eng_realloc(L, e, e->names[i], NAME_CHUNK, 0);
  eng_realloc(L, e, e->chunks, (size_t)e->capchunks * sizeof *e->chunks, 0);
  eng_realloc(L, e, e->names, (size_t)e->capnames * sizeof *e->names, 0);
  eng_realloc(L, e, e->index, (size_t)e->capindex * sizeof *e->index, 0);
  eng_realloc(L, e, e->heap, (size_t)e->capheap * sizeof *e->heap, 0);
  eng_realloc(L, e, e->ev, (size_t)e->capev * sizeof *e->ev, 0);
  eng_realloc(L, e, e->masks, (size_t)e->capmasks * sizeof *e->masks, 0);
  presence_rules_free(L, &e->rs, &e->bytes);
  for (r = 0; r < e->nsels; r++) eng_realloc(L, e, e->sel[r].tok, e->sel[r].size, 0);
  eng_realloc(L, e, e->sel, (size_t)e->capsels * sizeof *e->sel, 0);
  memset(e, 0, sizeof *e);
  return 0;
}

/* ------------------------------------------------------ Lua: construction */

/*
** presence.new{ now = t, rules = { {name=, on=, match=, after=,
** transitions=, within=, status=, below=, above=, show=}, ... },
** devices = { glob, ... } }
** Raises an error naming the rule and the problem on a bad rule (rules.c),
** a field no rule has among them: the configuration is wrong, and the
** module that passes it on does not load.
*/
static int l_new(lua_State *L) {
  Engine *e;
  int r, n;
  luaL_checktype(L, 1, LUA_TTABLE);
  e = (Engine *)lua_newuserdatauv(L, sizeof(Engine), 0);
  memset(e, 0, sizeof *e);
  luaL_setmetatable(L, ENGINE_META);
  lua_getfield(L, 1, "now");
  e->epoch = e->now = lua_isnil(L, -1) ? 0 : check_time(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "rules");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    presence_rules_read(L, &e->rs, lua_gettop(L), &e->bytes);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "devices");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    n = (int)luaL_len(L, -1);
    if (n > 0) {
      e->sel = (Match *)eng_realloc(L, e, NULL, 0, (size_t)n * sizeof(Match));
      e->capsels = n;
      for (r = 0; r < n; r++) {
        lua_rawgeti(L, -1, r + 1);
        presence_compile_glob(L, &e->sel[r], "devices", &e->bytes);
        e->nsels = r + 1;
        lua_pop(L, 1);
      }
    }
  }
  lua_pop(L, 1);
  e->condoff = (uint32_t)(sizeof(Device) + e->rs.ring * sizeof(uint32_t));
  e->condbytes = (uint32_t)(e->rs.ncond + 7) / 8;
  e->slot = (e->condoff + 2 * e->condbytes + 7) & ~7u;
  return 1;
}

static const luaL_Reg engine_methods[] = {
  {"update", l_update},
  {"touch", l_touch},
  {"tick", l_tick},
  {"pop", l_pop},
  {"clear", l_clear},
  {"pending", l_pending},
  {"next_due", l_next_due},
  {"get", l_get},
  {"device", l_device},
  {"stats", l_stats},
  {"memory", l_memory},
  {NULL, NULL}
};

void presence_open_engine(lua_State *L, int mod) {
  luaL_newmetatable(L, ENGINE_META);
  luaL_newlib(L, engine_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_new);
  lua_setfield(L, mod, "new");
  lua_pushcfunction(L, l_priority);
  lua_setfield(L, mod, "priority");
}
