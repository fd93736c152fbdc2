/*
** heap.c — brisk.heap: Prosody's util.indexedbheap in C.
**
** util.indexedbheap keeps a binary min-heap of priorities in a Lua array,
** a parallel array of ids, a map id -> position updated on every move and
** a map id -> item; server_epoll's timers live in one (every read on a
** connection reschedules its read timeout: reprioritize, a walk down the
** tree; every write that has to wait adds a write timeout and removes it
** once sent). Here the tree is a C array of {priority, slot} entries with a
** C array slot -> position, so a move is two stores. Ids that are numbers
** (server_epoll's and util.timer's are: 1.5, 2.5, ...) map to their slot in
** a C hash table; any other id, and every item, stays a Lua value, in the
** state's two Lua tables (non-number id -> slot; slot -> id and item),
** written on insert and removal only, never on moves.
**
** A Brisk heap is still a plain Lua table, so that a heap Prosody created
** before Brisk loaded (server_epoll's, util.timer's) can be converted in
** place, and every reference to it, wherever it was captured, reaches the C
** heap. The table holds the heap's state (a full userdata) under a private
** light-userdata key and its own C method closures as plain fields; its
** metatable sees to the rest.
**
** Exactness. The methods run stock's algorithm comparison for comparison
** (the same operators on the same operands in the same order), so entries
** with equal priorities come out in stock's order, and return stock's
** values, value count included. Priorities are kept as doubles with a flag
** for integers; Lua compares an integer of at most 2^53 with any number
** exactly as those doubles compare. Number ids are keyed as Lua keys them
** (a float with an integer value is that integer) and returned as given.
** Anything else turns the heap back into stock's own representation, in
** place, and lets stock's method do the work, so values and errors are
** stock's by construction: a priority that is not such a number (a string,
** an integer beyond 2^53), an id that is false or NaN or already in the
** heap (stock's quirks with those depend on its tables), a float position
** given to remove_index, and any read or write of the fields stock's heap
** has (priorities, ids, index, items; writes of current_id; reading
** current_id is answered). Stock's methods called on a Brisk heap read
** those fields first, so they too find a stock heap. A heap's methods
** called on a table that is not a Brisk heap are stock's.
*/
#include <stdint.h>
#include <string.h>

#include "brisk.h"

#define STATE_MT "brisk.heap.State"

/* Integers up to this magnitude are exact doubles. */
#define EXACT_INT ((lua_Integer)1 << 53)

/* Slot numbers are 32 bits; a heap never holds more entries than this. */
#define MAX_SLOTS ((size_t)UINT32_MAX / 4)

/* The key of a heap table's state: the address of this variable. */
static const char state_key = 0;

typedef struct Entry {
  double prio;
  uint32_t slot;
  uint32_t isint; /* prio came from an integer */
} Entry;

/* A slot's id: a number, kept here, or another Lua value, kept in vals. */
#define ID_LUA   0
#define ID_INT   1
#define ID_FLOAT 2

typedef struct Id {
  union {
    lua_Integer i;
    double f;
  } v;
  int kind;
} Id;

/* The number id map: open addressing, linear probing, no tombstones. */
#define KEY_EMPTY 0
#define KEY_INT   1
#define KEY_FLOAT 2

typedef struct MapEnt {
  uint64_t key;
  uint32_t slot;
  uint32_t tag; /* KEY_* */
} MapEnt;

/*
** The state of one heap. e[1..n] is the tree; pos[s] is slot s's position
** in it while s is in use, else the next free slot (0 ends the list); id[s]
** is its id. The arrays have cap + 1 elements, the map mapcap (a power of
** two, at most half full); all are allocated with the Lua state's
** allocator, and the userdata's __gc frees them. User values: 1 the table
** non-number id -> slot, 2 the table holding slot s's id (if not a number)
** at 2s - 1 and its item at 2s.
*/
typedef struct Heap {
  Entry *e;
  uint32_t *pos;
  Id *id;
  MapEnt *map;
  size_t n, cap, mapcap, mapcount;
  uint32_t free, used;
  double cur; /* current_id, the next automatic id */
  int curint;
  int dead; /* turned back into a stock heap */
  lua_Alloc f;
  void *ud;
} Heap;

/*
** Upvalues of every closure this module makes (one set per new() call):
** stock's method table, stock's metatable and the metatable of Brisk heap
** tables (one per new() call, as its closures hold that call's stock
** methods; unnamed, since a heap is a plain table: tostring(h) stays
** stock's "table: 0x..."). A heap's methods are closures of its own, with four more: the
** heap table, its state and the state's two tables, so that a call on the
** heap they belong to finds its state without a lookup.
*/
#define UV_SMETHODS 1
#define UV_SMT      2
#define UV_TMT      3
#define UV_COUNT    3
#define UV_SELF     4
#define UV_UD       5
#define UV_INDEX    6
#define UV_VALS     7
#define UV_METHOD   7

/* Where a method call finds its heap: the state, its userdata and tables. */
typedef struct Call {
  Heap *h;
  int ud, index, vals; /* stack or upvalue indices */
} Call;

static const char *const method_names[] = {
  "insert", "pop", "peek", "reprioritize", "remove_index", "remove", NULL
};

/* The fields of stock's heap table, in the order its constructor sets them. */
static const char *const field_names[] = {
  "ids", "items", "priorities", "index", "current_id", NULL
};

/* ----------------------------------------------------------- numbers */

/* A priority (or current_id) Brisk can hold: any float, integers up to 2^53. */
static int get_num(lua_State *L, int idx, double *d, int *isint) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  if (lua_isinteger(L, idx)) {
    lua_Integer i = lua_tointeger(L, idx);
    if (i > EXACT_INT || i < -EXACT_INT) return 0;
    *d = (double)i;
    *isint = 1;
    return 1;
  }
  *d = lua_tonumber(L, idx);
  *isint = 0;
  return 1;
}

static void push_num(lua_State *L, double d, int isint) {
  if (isint) lua_pushinteger(L, (lua_Integer)d);
  else lua_pushnumber(L, d);
}

/* ---------------------------------------------------------------- ids */

/*
** Read the id at idx, of type t. Returns 0 for NaN (no table key), else 1
** with id set: a number (kept as given) or ID_LUA.
*/
static int get_id_t(lua_State *L, int idx, int t, Id *id) {
  if (t != LUA_TNUMBER) {
    id->kind = ID_LUA;
    return 1;
  }
  if (lua_isinteger(L, idx)) {
    id->kind = ID_INT;
    id->v.i = lua_tointeger(L, idx);
    return 1;
  }
  id->kind = ID_FLOAT;
  id->v.f = lua_tonumber(L, idx);
  return id->v.f == id->v.f;
}

static int get_id(lua_State *L, int idx, Id *id) {
  return get_id_t(L, idx, lua_type(L, idx), id);
}

static void push_id(lua_State *L, const Id *id) {
  if (id->kind == ID_INT) lua_pushinteger(L, id->v.i);
  else lua_pushnumber(L, id->v.f);
}

/* The map key of a number id, as Lua keys it: a float with an integer value is that integer. */
static uint64_t id_key(const Id *id, uint32_t *tag) {
  if (id->kind == ID_FLOAT) {
    double f = id->v.f;
    if (f >= -9223372036854775808.0 && f < 9223372036854775808.0) {
      lua_Integer i = (lua_Integer)f;
      if ((double)i == f) {
        *tag = KEY_INT;
        return (uint64_t)i;
      }
    }
    {
      uint64_t bits;
      memcpy(&bits, &f, sizeof bits);
      *tag = KEY_FLOAT;
      return bits;
    }
  }
  *tag = KEY_INT;
  return (uint64_t)id->v.i;
}

static size_t hash_key(uint64_t key, uint32_t tag, size_t mask) {
  uint64_t x = key ^ ((uint64_t)tag * 0x9e3779b97f4a7c15u);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9u;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebu;
  x ^= x >> 31;
  return (size_t)x & mask;
}

static uint32_t map_find(const Heap *h, uint64_t key, uint32_t tag) {
  size_t mask = h->mapcap - 1, i;
  if (h->mapcap == 0) return 0;
  for (i = hash_key(key, tag, mask);; i = (i + 1) & mask) {
    const MapEnt *m = &h->map[i];
    if (m->tag == KEY_EMPTY) return 0;
    if (m->tag == tag && m->key == key) return m->slot;
  }
}

/* Insert a key known to be absent; the map has room (map_reserve). */
static void map_put(Heap *h, uint64_t key, uint32_t tag, uint32_t slot) {
  size_t mask = h->mapcap - 1, i = hash_key(key, tag, mask);
  while (h->map[i].tag != KEY_EMPTY) i = (i + 1) & mask;
  h->map[i].key = key;
  h->map[i].tag = tag;
  h->map[i].slot = slot;
  h->mapcount++;
}

/* Remove a key (present); later entries of its run shift back into the gap. */
static void map_del(Heap *h, uint64_t key, uint32_t tag) {
  size_t mask = h->mapcap - 1, i = hash_key(key, tag, mask), j;
  while (!(h->map[i].tag == tag && h->map[i].key == key)) i = (i + 1) & mask;
  for (j = (i + 1) & mask; h->map[j].tag != KEY_EMPTY; j = (j + 1) & mask) {
    size_t home = hash_key(h->map[j].key, h->map[j].tag, mask);
    /* j's entry may fill the gap at i unless its home lies cyclically in (i, j] */
    if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
      h->map[i] = h->map[j];
      i = j;
    }
  }
  h->map[i].tag = KEY_EMPTY;
  h->mapcount--;
}

/* Room for want keys at most half full; 0 when out of memory. */
static int map_reserve(Heap *h, size_t want) {
  size_t cap = h->mapcap ? h->mapcap : 16, i;
  MapEnt *old = h->map, *m;
  size_t oldcap = h->mapcap;
  if (want * 2 <= h->mapcap) return 1;
  while (cap < want * 2) cap *= 2;
  m = (MapEnt *)h->f(h->ud, NULL, 0, cap * sizeof(MapEnt));
  if (m == NULL) return 0;
  memset(m, 0, cap * sizeof(MapEnt));
  h->map = m;
  h->mapcap = cap;
  h->mapcount = 0;
  for (i = 0; i < oldcap; i++)
    if (old[i].tag != KEY_EMPTY) map_put(h, old[i].key, old[i].tag, old[i].slot);
  if (old) h->f(h->ud, old, oldcap * sizeof(MapEnt), 0);
  return 1;
}

/* ---------------------------------------------------------- the state */

static void free_arrays(Heap *h) {
  if (h->e) h->f(h->ud, h->e, (h->cap + 1) * sizeof(Entry), 0);
  if (h->pos) h->f(h->ud, h->pos, (h->cap + 1) * sizeof(uint32_t), 0);
  if (h->id) h->f(h->ud, h->id, (h->cap + 1) * sizeof(Id), 0);
  if (h->map) h->f(h->ud, h->map, h->mapcap * sizeof(MapEnt), 0);
  h->e = NULL;
  h->pos = NULL;
  h->id = NULL;
  h->map = NULL;
  h->cap = h->n = h->mapcap = h->mapcount = 0;
  h->free = h->used = 0;
}

static int state_gc(lua_State *L) {
  free_arrays((Heap *)luaL_checkudata(L, 1, STATE_MT));
  return 0;
}

/* Grow the slot arrays to hold at least want slots; 0 when out of memory. */
static int reserve(Heap *h, size_t want) {
  size_t cap = h->cap ? h->cap : 7;
  void *e, *pos, *id;
  if (want <= h->cap) return 1;
  if (want > MAX_SLOTS) return 0;
  while (cap < want) cap = cap * 2 + 1;
  if (cap > MAX_SLOTS) cap = MAX_SLOTS;
  /* allocate all three before giving up any old one */
  e = h->f(h->ud, NULL, 0, (cap + 1) * sizeof(Entry));
  pos = h->f(h->ud, NULL, 0, (cap + 1) * sizeof(uint32_t));
  id = h->f(h->ud, NULL, 0, (cap + 1) * sizeof(Id));
  if (e == NULL || pos == NULL || id == NULL) {
    if (e) h->f(h->ud, e, (cap + 1) * sizeof(Entry), 0);
    if (pos) h->f(h->ud, pos, (cap + 1) * sizeof(uint32_t), 0);
    if (id) h->f(h->ud, id, (cap + 1) * sizeof(Id), 0);
    return 0;
  }
  if (h->e) {
    memcpy(e, h->e, (h->cap + 1) * sizeof(Entry));
    memcpy(pos, h->pos, (h->cap + 1) * sizeof(uint32_t));
    memcpy(id, h->id, (h->cap + 1) * sizeof(Id));
    h->f(h->ud, h->e, (h->cap + 1) * sizeof(Entry), 0);
    h->f(h->ud, h->pos, (h->cap + 1) * sizeof(uint32_t), 0);
    h->f(h->ud, h->id, (h->cap + 1) * sizeof(Id), 0);
  }
  h->e = (Entry *)e;
  h->pos = (uint32_t *)pos;
  h->id = (Id *)id;
  h->cap = cap;
  return 1;
}

/*
** Push a new state userdata (its two tables set) for n entries; returns
** it, or NULL when out of memory (the userdata is pushed either way).
*/
static Heap *new_state(lua_State *L, size_t n) {
  Heap *h = (Heap *)lua_newuserdatauv(L, sizeof(Heap), 2);
  memset(h, 0, sizeof *h);
  h->f = lua_getallocf(L, &h->ud);
  luaL_setmetatable(L, STATE_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  lua_createtable(L, (int)(2 * n < 2048 ? 2 * n : 2048), 0);
  lua_setiuservalue(L, -2, 2);
  return reserve(h, n) && map_reserve(h, n) ? h : NULL;
}

/* ------------------------------------------------------ the algorithm */

static void set_at(Heap *h, size_t k, Entry en) {
  h->e[k] = en;
  h->pos[en.slot] = (uint32_t)k;
}

/* stock's _heap_insert */
static void heap_insert(Heap *h, Entry item) {
  size_t pos = h->n + 1;
  for (;;) {
    size_t half = pos / 2;
    if (half == 0 || item.prio > h->e[half].prio) break;
    set_at(h, pos, h->e[half]);
    pos = half;
  }
  set_at(h, pos, item);
  h->n++;
}

/* stock's _percolate_up */
static size_t percolate_up(Heap *h, size_t k) {
  Entry tmp = h->e[k];
  while (k != 1) {
    size_t parent = k / 2;
    if (tmp.prio >= h->e[parent].prio) break;
    set_at(h, k, h->e[parent]);
    k = parent;
  }
  set_at(h, k, tmp);
  return k;
}

/* stock's _percolate_down */
static size_t percolate_down(Heap *h, size_t k) {
  Entry tmp = h->e[k];
  size_t size = h->n, child = 2 * k;
  while (2 * k <= size) {
    if (child != size && h->e[child].prio > h->e[child + 1].prio) child++;
    if (tmp.prio > h->e[child].prio) set_at(h, k, h->e[child]);
    else break;
    k = child;
    child = 2 * k;
  }
  set_at(h, k, tmp);
  return k;
}

static uint32_t slot_alloc(Heap *h) {
  uint32_t s = h->free;
  if (s != 0) {
    h->free = h->pos[s];
    return s;
  }
  return ++h->used;
}

/* The slot the next slot_alloc will return. */
static uint32_t slot_next(const Heap *h) {
  return h->free ? h->free : h->used + 1;
}

/* Push slot s's id (a number from C, any other value from vals). */
static void push_slot_id(lua_State *L, const Heap *h, uint32_t s, int vals) {
  if (h->id[s].kind == ID_LUA) lua_rawgeti(L, vals, 2 * (lua_Integer)s - 1);
  else push_id(L, &h->id[s]);
}

/*
** Forget slot s: its id's map or index entry, its id and its item; the id
** is left pushed.
*/
static void slot_forget(lua_State *L, Heap *h, uint32_t s, int index, int vals) {
  Id *id = &h->id[s];
  if (id->kind == ID_LUA) {
    lua_rawgeti(L, vals, 2 * (lua_Integer)s - 1);
    lua_pushvalue(L, -1);
    lua_pushnil(L);
    lua_rawset(L, index);
    lua_pushnil(L);
    lua_rawseti(L, vals, 2 * (lua_Integer)s - 1);
  } else {
    uint32_t tag;
    uint64_t key = id_key(id, &tag);
    map_del(h, key, tag);
    push_id(L, id);
  }
  lua_pushnil(L);
  lua_rawseti(L, vals, 2 * (lua_Integer)s);
  h->pos[s] = h->free;
  h->free = s;
}

/* The slot of the id at idx, or 0 when it is not in the heap. */
static uint32_t find_slot(lua_State *L, const Call *c, int idx) {
  Id id;
  lua_Integer s;
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER) {
    uint32_t tag;
    uint64_t key;
    if (!get_id_t(L, idx, t, &id)) return 0; /* NaN */
    key = id_key(&id, &tag);
    return map_find(c->h, key, tag);
  }
  if (t == LUA_TNIL || t == LUA_TNONE) return 0;
  lua_pushvalue(L, idx);
  lua_rawget(L, c->index);
  s = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return (uint32_t)s;
}

/* ------------------------------------------- stock's representation */

/*
** Turn the Brisk heap table at t (its state h at index hidx) into a stock
** heap: stock's five fields, stock's metatable, no methods of its own.
*/
static void degrade(lua_State *L, int t, Heap *h, int hidx) {
  size_t i;
  int vals, f;
  const char *const *m;
  t = lua_absindex(L, t);
  hidx = lua_absindex(L, hidx);
  lua_getiuservalue(L, hidx, 2);
  vals = lua_gettop(L);
  /* vals + 1 .. vals + 5: stock's fields, in field_names' order */
  lua_createtable(L, (int)h->n, 0);  /* ids */
  lua_createtable(L, 0, (int)h->n);  /* items */
  lua_createtable(L, (int)h->n, 0);  /* priorities */
  lua_createtable(L, 0, (int)h->n);  /* index */
  push_num(L, h->cur, h->curint);    /* current_id */
  for (i = 1; i <= h->n; i++) {
    Entry en = h->e[i];
    push_num(L, en.prio, (int)en.isint);
    lua_rawseti(L, vals + 3, (lua_Integer)i);
    push_slot_id(L, h, en.slot, vals);
    lua_pushvalue(L, -1);
    lua_rawseti(L, vals + 1, (lua_Integer)i);
    lua_pushvalue(L, -1);
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, vals + 4);
    lua_rawgeti(L, vals, 2 * (lua_Integer)en.slot); /* the item */
    lua_rawset(L, vals + 2);
  }
  for (m = method_names; *m; m++) {
    lua_pushstring(L, *m);
    lua_pushnil(L);
    lua_rawset(L, t);
  }
  lua_pushnil(L);
  lua_rawsetp(L, t, &state_key);
  for (f = 0; f < 5; f++) {
    lua_pushstring(L, field_names[f]);
    lua_pushvalue(L, vals + 1 + f);
    lua_rawset(L, t);
  }
  lua_settop(L, vals - 1);
  lua_pushvalue(L, lua_upvalueindex(UV_SMT));
  lua_setmetatable(L, t);
  /* The state is garbage now; mark it so that nothing uses it. */
  h->n = 0;
  h->dead = 1;
}

/*
** Prepare a method call: find the heap self (index 1) is. Returns 0 when
** self is no Brisk heap. A method called on its own heap uses its
** upvalues (arguments beyond the top read as none, which the methods treat
** as nil); called on another Brisk heap, it sets the top to nargs and
** pushes that heap's state and tables.
*/
static int enter(lua_State *L, int nargs, Call *c) {
  if (lua_rawequal(L, 1, lua_upvalueindex(UV_SELF))) {
    c->h = (Heap *)lua_touserdata(L, lua_upvalueindex(UV_UD));
    if (!c->h->dead) {
      c->ud = lua_upvalueindex(UV_UD);
      c->index = lua_upvalueindex(UV_INDEX);
      c->vals = lua_upvalueindex(UV_VALS);
      return 1;
    }
  }
  lua_settop(L, nargs);
  if (lua_type(L, 1) != LUA_TTABLE) return 0;
  lua_rawgetp(L, 1, &state_key);
  c->h = (Heap *)lua_touserdata(L, -1);
  if (c->h == NULL) {
    lua_pop(L, 1);
    return 0;
  }
  c->ud = nargs + 1;
  c->index = nargs + 2;
  c->vals = nargs + 3;
  lua_getiuservalue(L, c->ud, 1);
  lua_getiuservalue(L, c->ud, 2);
  return 1;
}

/* Stock's method `name` with the call's nargs arguments; its results. */
static int stock_method(lua_State *L, const char *name, int nargs) {
  lua_settop(L, nargs);
  lua_getfield(L, lua_upvalueindex(UV_SMETHODS), name);
  lua_insert(L, 1);
  lua_call(L, nargs, LUA_MULTRET);
  return lua_gettop(L);
}

/* Turn self into a stock heap, then run stock's method. */
static int fall_back(lua_State *L, const Call *c, const char *name, int nargs) {
  degrade(L, 1, c->h, c->ud);
  return stock_method(L, name, nargs);
}

/* ------------------------------------------------------------ methods */

/* h:insert(item, priority, id): returns the id. */
static int l_insert(lua_State *L) {
  Call c;
  Heap *h;
  Entry en;
  Id id;
  uint32_t tag = 0, s;
  uint64_t key = 0;
  int isint;
  if (!enter(L, 4, &c)) return stock_method(L, "insert", 4);
  h = c.h;
  if (!get_num(L, 3, &en.prio, &isint)) return fall_back(L, &c, "insert", 4);
  en.isint = (uint32_t)isint;
  if (lua_isnoneornil(L, 4)) { /* stock: id = self.current_id; self.current_id = id + 1 */
    if (h->curint && h->cur >= (double)EXACT_INT) /* current_id + 1 would not fit */
      return fall_back(L, &c, "insert", 4);
    if (h->curint) {
      id.kind = ID_INT;
      id.v.i = (lua_Integer)h->cur;
    } else {
      id.kind = ID_FLOAT;
      id.v.f = h->cur;
      if (h->cur != h->cur) return fall_back(L, &c, "insert", 4);
    }
  } else if (!get_id(L, 4, &id) || (lua_type(L, 4) == LUA_TBOOLEAN && !lua_toboolean(L, 4))) {
    return fall_back(L, &c, "insert", 4); /* NaN, false */
  }
  s = slot_next(h);
  if (id.kind == ID_LUA) {
    lua_pushvalue(L, 4);
    if (lua_rawget(L, c.index) != LUA_TNIL) return fall_back(L, &c, "insert", 4); /* already in */
    lua_pop(L, 1);
    if (!reserve(h, (size_t)s)) return luaL_error(L, "not enough memory");
    lua_pushvalue(L, 4);
    lua_rawseti(L, c.vals, 2 * (lua_Integer)s - 1);
    lua_pushvalue(L, 4);
    lua_pushinteger(L, (lua_Integer)s);
    lua_rawset(L, c.index);
  } else {
    key = id_key(&id, &tag);
    if (map_find(h, key, tag) != 0) return fall_back(L, &c, "insert", 4); /* already in */
    if (!reserve(h, (size_t)s) || !map_reserve(h, h->mapcount + 1))
      return luaL_error(L, "not enough memory");
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, c.vals, 2 * (lua_Integer)s);
  /* Nothing below can fail. */
  if (lua_isnoneornil(L, 4)) h->cur += 1;
  s = slot_alloc(h);
  h->id[s] = id;
  if (id.kind != ID_LUA) map_put(h, key, tag, s);
  en.slot = s;
  heap_insert(h, en);
  if (id.kind == ID_LUA) lua_pushvalue(L, 4);
  else push_id(L, &id);
  return 1;
}

/* h:pop(): priority, item, id of the first entry; nothing when empty. */
static int l_pop(lua_State *L) {
  Call c;
  Heap *h;
  Entry top;
  if (!enter(L, 1, &c)) return stock_method(L, "pop", 1);
  h = c.h;
  if (h->n == 0) return 0;
  top = h->e[1];
  push_num(L, top.prio, (int)top.isint);
  lua_rawgeti(L, c.vals, 2 * (lua_Integer)top.slot); /* the item */
  slot_forget(L, h, top.slot, c.index, c.vals);      /* the id */
  if (h->n == 1) {
    h->n = 0;
  } else {
    Entry last = h->e[h->n];
    h->n--;
    set_at(h, 1, last);
    percolate_down(h, 1);
  }
  return 3;
}

/* h:peek(): the first priority, or nil. */
static int l_peek(lua_State *L) {
  Call c;
  if (!enter(L, 1, &c)) return stock_method(L, "peek", 1);
  if (c.h->n == 0) lua_pushnil(L);
  else push_num(L, c.h->e[1].prio, (int)c.h->e[1].isint);
  return 1;
}

/* h:reprioritize(id, priority): nothing. */
static int l_reprioritize(lua_State *L) {
  Call c;
  Heap *h;
  uint32_t s;
  size_t k;
  double d;
  int isint;
  if (!enter(L, 3, &c)) return stock_method(L, "reprioritize", 3);
  h = c.h;
  if ((s = find_slot(L, &c, 2)) == 0) return 0; /* not in the heap */
  if (!get_num(L, 3, &d, &isint)) return fall_back(L, &c, "reprioritize", 3);
  k = h->pos[s];
  h->e[k].prio = d;
  h->e[k].isint = (uint32_t)isint;
  k = percolate_up(h, k);
  percolate_down(h, k);
  return 0;
}

/* remove_index's work on position k (1 <= k <= n): priority, item, id. */
static int remove_at(lua_State *L, const Call *c, size_t k) {
  Heap *h = c->h;
  Entry res = h->e[k];
  size_t size = h->n;
  push_num(L, res.prio, (int)res.isint);
  lua_rawgeti(L, c->vals, 2 * (lua_Integer)res.slot);
  set_at(h, k, h->e[size]);
  h->n--;
  slot_forget(L, h, res.slot, c->index, c->vals);
  if (size > k) {
    k = percolate_up(h, k);
    percolate_down(h, k);
  }
  return 3;
}

/* h:remove_index(k): priority, item, id of the entry at position k; nothing if none. */
static int l_remove_index(lua_State *L) {
  Call c;
  lua_Integer k;
  if (!enter(L, 2, &c)) return stock_method(L, "remove_index", 2);
  if (lua_type(L, 2) != LUA_TNUMBER) return 0;
  if (!lua_isinteger(L, 2)) {
    lua_Number d = lua_tonumber(L, 2);
    if (d >= 1 && d <= (lua_Number)c.h->n && d == (lua_Number)(lua_Integer)d)
      return fall_back(L, &c, "remove_index", 2); /* stock keeps a float position */
    return 0;
  }
  k = lua_tointeger(L, 2);
  if (k < 1 || (lua_Unsigned)k > c.h->n) return 0;
  return remove_at(L, &c, (size_t)k);
}

/* h:remove(id): priority, item, id; nothing if the id is not in the heap. */
static int l_remove(lua_State *L) {
  Call c;
  uint32_t s;
  if (!enter(L, 2, &c)) return stock_method(L, "remove", 2);
  if ((s = find_slot(L, &c, 2)) == 0) return 0;
  return remove_at(L, &c, c.h->pos[s]);
}

static const luaL_Reg heap_methods[] = {
  {"insert", l_insert},
  {"pop", l_pop},
  {"peek", l_peek},
  {"reprioritize", l_reprioritize},
  {"remove_index", l_remove_index},
  {"remove", l_remove},
  {NULL, NULL}
};

/* ------------------------------------------------ the table's metatable */

static int is_field(lua_State *L, int idx) {
  const char *const *f;
  const char *k;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  k = lua_tostring(L, idx);
  for (f = field_names; *f; f++)
    if (strcmp(k, *f) == 0) return 1;
  return 0;
}

/* The Brisk state of the table at index 1, pushed, or NULL and nothing. */
static Heap *state_of(lua_State *L) {
  Heap *h;
  lua_rawgetp(L, 1, &state_key);
  h = (Heap *)lua_touserdata(L, -1);
  if (h == NULL) lua_pop(L, 1);
  return h;
}

/*
** __index(t, k): current_id is answered; stock's other fields turn the heap
** into stock's; any other key is looked up in stock's method table, as
** stock's metatable would.
*/
static int l_index(lua_State *L) {
  Heap *h;
  lua_settop(L, 2);
  if (is_field(L, 2) && (h = state_of(L)) != NULL) {
    if (strcmp(lua_tostring(L, 2), "current_id") == 0) {
      push_num(L, h->cur, h->curint);
      return 1;
    }
    degrade(L, 1, h, 3);
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
  }
  lua_rawget(L, lua_upvalueindex(UV_SMETHODS));
  return 1;
}

/* __newindex(t, k, v): writing one of stock's fields turns the heap into stock's. */
static int l_newindex(lua_State *L) {
  Heap *h;
  lua_settop(L, 3);
  if (is_field(L, 2) && (h = state_of(L)) != NULL) {
    degrade(L, 1, h, 4);
    lua_settop(L, 3);
  }
  lua_rawset(L, 1);
  return 0;
}

/* ---------------------------------------------------------- factories */

/*
** Make the table at t a Brisk heap with the state on top (popped): the
** state under the private key, the heap's own method closures as fields,
** the metatable of Brisk heaps.
*/
static void attach(lua_State *L, int t) {
  const luaL_Reg *r;
  int ud = lua_gettop(L), i;
  t = lua_absindex(L, t);
  lua_pushvalue(L, ud);
  lua_rawsetp(L, t, &state_key);
  for (r = heap_methods; r->name; r++) {
    lua_pushstring(L, r->name);
    for (i = 1; i <= UV_COUNT; i++) lua_pushvalue(L, lua_upvalueindex(i));
    lua_pushvalue(L, t);
    lua_pushvalue(L, ud);
    lua_getiuservalue(L, ud, 1);
    lua_getiuservalue(L, ud, 2);
    lua_pushcclosure(L, r->func, UV_METHOD);
    lua_rawset(L, t);
  }
  lua_settop(L, ud - 1);
  lua_pushvalue(L, lua_upvalueindex(UV_TMT));
  lua_setmetatable(L, t);
}

/* create(): a new, empty Brisk heap (current_id 1.5, as stock's). */
static int l_create(lua_State *L) {
  Heap *h;
  lua_createtable(L, 0, 8);
  h = new_state(L, 0);
  if (h == NULL) return luaL_error(L, "not enough memory");
  h->cur = 1.5;
  h->curint = 0;
  attach(L, -2);
  return 1;
}

/* Is rawget(t, k) a table without a metatable? Leaves it pushed either way. */
static int plain_table_field(lua_State *L, int t, const char *k) {
  lua_pushstring(L, k);
  if (lua_rawget(L, t) != LUA_TTABLE) return 0;
  if (lua_getmetatable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static int refuse(lua_State *L) {
  luaL_pushfail(L);
  return 1;
}

static size_t count_keys(lua_State *L, int t) {
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    n++;
  }
  return n;
}

/*
** adopt(t): convert the stock heap t, in place, into a Brisk heap with the
** same entries at the same positions, ids, items and current_id. Returns
** true, or fail and leaves t alone when t is not a stock heap in a state
** Brisk holds exactly (see the top of this file).
*/
static int l_adopt(lua_State *L) {
  int pri, ids, items, index, isint;
  size_t n, i;
  double cur, d;
  Heap *h;
  const char *const *f;
  lua_settop(L, 1);
  if (lua_type(L, 1) != LUA_TTABLE || !lua_getmetatable(L, 1)) return refuse(L);
  if (!lua_rawequal(L, -1, lua_upvalueindex(UV_SMT))) return refuse(L);
  if (lua_rawgetp(L, 1, &state_key) != LUA_TNIL) return refuse(L);
  for (f = method_names; *f; f++) {
    lua_pushstring(L, *f);
    if (lua_rawget(L, 1) != LUA_TNIL) return refuse(L); /* its own method */
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  if (!plain_table_field(L, 1, "priorities")) return refuse(L);
  pri = lua_gettop(L);
  if (!plain_table_field(L, 1, "ids")) return refuse(L);
  ids = lua_gettop(L);
  if (!plain_table_field(L, 1, "items")) return refuse(L);
  items = lua_gettop(L);
  if (!plain_table_field(L, 1, "index")) return refuse(L);
  index = lua_gettop(L);
  lua_pushliteral(L, "current_id");
  lua_rawget(L, 1);
  if (!get_num(L, -1, &cur, &isint) || cur != cur) return refuse(L);
  lua_pop(L, 1);
  n = lua_rawlen(L, pri);
  if (lua_rawlen(L, ids) != n || n > MAX_SLOTS) return refuse(L);
  if (count_keys(L, pri) != n || count_keys(L, ids) != n || count_keys(L, index) != n)
    return refuse(L);
  for (i = 1; i <= n; i++) {
    int it;
    Id id;
    lua_rawgeti(L, pri, (lua_Integer)i);
    if (!get_num(L, -1, &d, &it)) return refuse(L);
    lua_pop(L, 1);
    lua_rawgeti(L, ids, (lua_Integer)i);
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
        || !get_id(L, -1, &id))
      return refuse(L);
    lua_rawget(L, index);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) != (lua_Integer)i) return refuse(L);
    lua_pop(L, 1);
  }
  /* every item belongs to an entry */
  lua_pushnil(L);
  while (lua_next(L, items)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, index) == LUA_TNIL) return refuse(L);
    lua_pop(L, 1);
  }
  /* Adopt: slot i for position i. */
  h = new_state(L, n);
  if (h == NULL) return luaL_error(L, "not enough memory");
  h->cur = cur;
  h->curint = isint;
  {
    int ud = lua_gettop(L);
    lua_getiuservalue(L, ud, 1);
    lua_getiuservalue(L, ud, 2);
    for (i = 1; i <= n; i++) {
      Entry en;
      Id id;
      int it;
      lua_rawgeti(L, pri, (lua_Integer)i);
      get_num(L, -1, &en.prio, &it);
      lua_pop(L, 1);
      en.isint = (uint32_t)it;
      en.slot = (uint32_t)i;
      h->e[i] = en;
      h->pos[i] = (uint32_t)i;
      lua_rawgeti(L, ids, (lua_Integer)i);
      get_id(L, -1, &id);
      h->id[i] = id;
      if (id.kind == ID_LUA) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, ud + 2, 2 * (lua_Integer)i - 1);
        lua_pushvalue(L, -1);
        lua_pushinteger(L, (lua_Integer)i);
        lua_rawset(L, ud + 1);
      } else {
        uint32_t tag;
        uint64_t key = id_key(&id, &tag);
        map_put(h, key, tag, (uint32_t)i);
      }
      lua_rawget(L, items);
      lua_rawseti(L, ud + 2, 2 * (lua_Integer)i);
    }
    h->n = n;
    h->used = (uint32_t)n;
    lua_settop(L, ud);
  }
  for (f = field_names; *f; f++) {
    lua_pushstring(L, *f);
    lua_pushnil(L);
    lua_rawset(L, 1);
  }
  attach(L, 1);
  lua_pushboolean(L, 1);
  return 1;
}

/* release(t): turn the Brisk heap t back into a stock heap; fail if it is none. */
static int l_release(lua_State *L) {
  Heap *h;
  lua_settop(L, 1);
  if (lua_type(L, 1) != LUA_TTABLE || (h = state_of(L)) == NULL) {
    luaL_pushfail(L);
    return 1;
  }
  degrade(L, 1, h, 2);
  lua_pushboolean(L, 1);
  return 1;
}

/* is_brisk(t): is t a Brisk heap (not turned back into stock's)? */
static int l_is_brisk(lua_State *L) {
  lua_settop(L, 1);
  lua_pushboolean(L, lua_type(L, 1) == LUA_TTABLE && state_of(L) != NULL);
  return 1;
}

static const luaL_Reg factory_funcs[] = {
  {"create", l_create},
  {"adopt", l_adopt},
  {"release", l_release},
  {"is_brisk", l_is_brisk},
  {NULL, NULL}
};

/* Push a closure of f with the shared upvalues from stack slots base.. */
static void push_closure(lua_State *L, lua_CFunction f, int base) {
  int i;
  for (i = 0; i < UV_COUNT; i++) lua_pushvalue(L, base + i);
  lua_pushcclosure(L, f, UV_COUNT);
}

/*
** new{ methods = <stock's method table>, mt = <stock's metatable> }: a
** table { create, adopt, release, is_brisk } for this Prosody's
** util.indexedbheap (stock's methods are what Brisk falls back to).
*/
static int l_new(lua_State *L) {
  const luaL_Reg *r;
  const char *const *f;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (lua_getfield(L, 1, "methods") != LUA_TTABLE)      /* 2 */
    return luaL_error(L, "brisk.heap.new: methods must be stock's method table");
  for (f = method_names; *f; f++) {
    if (lua_getfield(L, 2, *f) != LUA_TFUNCTION)
      return luaL_error(L, "brisk.heap.new: stock has no method %s", *f);
    lua_pop(L, 1);
  }
  if (lua_getfield(L, 1, "mt") != LUA_TTABLE)           /* 3 */
    return luaL_error(L, "brisk.heap.new: mt must be stock's metatable");
  lua_newtable(L);                                      /* 4: metatable of Brisk heaps */
  push_closure(L, l_index, 2);
  lua_setfield(L, 4, "__index");
  push_closure(L, l_newindex, 2);
  lua_setfield(L, 4, "__newindex");
  lua_newtable(L);                                      /* 5: the result */
  for (r = factory_funcs; r->name; r++) {
    push_closure(L, r->func, 2);
    lua_setfield(L, 5, r->name);
  }
  return 1;
}

static const luaL_Reg module_funcs[] = {
  {"new", l_new},
  {NULL, NULL}
};

BRISK_EXPORT int luaopen_brisk_heap(lua_State *L) {
  if (luaL_newmetatable(L, STATE_MT)) {
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, module_funcs);
  brisk_set_version(L);
  return 1;
}
