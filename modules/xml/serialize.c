/*
** serialize.c — brisk.xml's replacements for util.stanza's serializer.
**
** util.stanza turns a stanza into XML with a recursive Lua function
** (_dostring) that builds a table of fragments and concatenates it. This file
** does the same walk in C, writing straight into one growable buffer, with an
** explicit stack instead of recursion so that no nesting depth can overflow
** the C stack.
**
** Exactness is the first rule: the output must be byte-identical to stock.
** The walk reads stanzas exactly as stock does (lua_gettable/lua_geti honour
** __index like t.name and t[n], lua_len honours __len like #t; lua_next
** visits attributes in the order of pairs). Anything stock would not
** serialize plainly — a child that is not a string or an element, a name
** that is not a string or number, a missing or exotic attr table — is not
** interpreted here: the call is handed, whole, to the stock Lua function,
** which then produces its own output or raises its own error, message and
** location included.
**
** Speed: most of the time goes to the Lua API calls exactness needs (about
** 13 per element and 5 per attribute, lua_next alone a fifth of it), so the
** C side keeps its own work small: one buffer reservation per attribute or
** tag, short copies without memcpy calls, escaping scanned 16 bytes at a
** time. Fields are read raw first (get_field, get_index), which is exact
** for every table because __index only runs when the raw value is nil, and
** a little cheaper. #t stays lua_len: proving that an element has no __len
** (to use lua_rawlen) takes more calls than lua_len costs. top_tag caches,
** per sequence of attribute keys, the order stock's attribute copy iterates
** in (see TTCache). docs/xml-serializer.md has the measurements.
**
** serializer(stanza_mt, stock_tostring, stock_top_tag) makes the two
** functions for one util.stanza: each falls back on the stock function it
** is given. Putting them in place (and back) is the Lua side's job
** (lualib/brisk/patch/xml.lua). xml_escape is util.stanza.xml_escape, with
** the same escape scan as the walk.
*/
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "xml.h"

/* Buffers larger than this are not kept for reuse after a call. */
#define OUT_KEEP_MAX (256 * 1024)

#define OUT_MT "brisk.xml.Out"

/*
** One open element of the walk: the last child visited, the count, its
** name for the closing tag, and its raw attr.xmlns for the children's
** comparison: NS_STRING with the bytes in ns/nsl, or NS_OTHER (a number,
** say) compared with lua_rawequal. Both strings are anchored in the
** element's stack slots while the level is open, so the pointers stay
** valid even if a metamethod edits the element meanwhile.
*/
typedef struct WalkLevel {
  lua_Integer n, len;
  const char *name, *ns;
  size_t nl, nsl;
  int nst;
} WalkLevel;

#define NS_NONE   0 /* attr.xmlns is nil */
#define NS_STRING 1
#define NS_OTHER  2

/*
** The output buffer and the walk's integer stack, both allocated with the
** Lua state's allocator and owned by a full userdata whose __gc frees them,
** so an error anywhere in the walk leaks nothing.
*/
typedef struct Out {
  char *p;
  size_t n, cap;
  WalkLevel *lv;
  size_t nlv;
  int busy; /* a call is using it (or one was unwound by an error) */
  lua_Alloc f;
  void *ud;
} Out;

/*
** Upvalues shared by every serializer entry point. The two keys the walk
** reads on every element are kept as strings: pushing a C string key
** (lua_getfield) costs a strcmp in Lua's string cache each time, and the
** walk copies them into stack slots, which are cheaper to read than
** upvalues. (attr.xmlns is picked up while iterating the attributes.)
*/
#define UV_CACHE   1 /* a reusable Out */
#define UV_MT      2 /* util.stanza's stanza_mt */
#define UV_STOCK   3 /* the stock function this one stands in for */
#define UV_KNAME   4 /* "name" */
#define UV_KATTR   5 /* "attr" */
#define UV_COUNT   5
/* top_tag's closures only: */
#define UV_TTCACHE  6 /* its order cache (a TTCache userdata) */
#define UV_TTANCHOR 7 /* a table keeping the cached keys alive */
#define UV_TTCOUNT  7

/* t[key] for one of the key upvalues; honours __index just as t.name does. */
static inline int get_key(lua_State *L, int t, int key) {
  lua_pushvalue(L, lua_upvalueindex(key));
  return lua_gettable(L, t);
}

/*
** Push t[k] for the table at t and the key at stack index k, exactly as
** t[k] in Lua: a raw lookup first, since __index is only consulted when the
** raw value is nil, and lua_gettable (honouring __index) only then. The raw
** lookup is a little cheaper than lua_gettable's.
*/
static inline int get_field(lua_State *L, int t, int k) {
  int type;
  lua_pushvalue(L, k);
  if ((type = lua_rawget(L, t)) != LUA_TNIL) return type;
  lua_pushvalue(L, k);
  lua_replace(L, -2);
  return lua_gettable(L, t);
}

/* The same for t[n]. */
static inline int get_index(lua_State *L, int t, lua_Integer n) {
  int type;
  if ((type = lua_rawgeti(L, t, n)) != LUA_TNIL) return type;
  lua_pop(L, 1);
  return lua_geti(L, t, n);
}

static int l_tostring(lua_State *L);
static int l_top_tag(lua_State *L);

/* ---------------------------------------------------------------- Out */

static int out_gc(lua_State *L) {
  Out *o = (Out *)luaL_checkudata(L, 1, OUT_MT);
  if (o->p) o->f(o->ud, o->p, o->cap, 0);
  if (o->lv) o->f(o->ud, o->lv, o->nlv * sizeof(WalkLevel), 0);
  o->p = NULL;
  o->lv = NULL;
  o->cap = o->nlv = o->n = 0;
  return 0;
}

static Out *out_new(lua_State *L) {
  Out *o = (Out *)lua_newuserdatauv(L, sizeof(Out), 0);
  memset(o, 0, sizeof *o);
  o->f = lua_getallocf(L, &o->ud);
  luaL_setmetatable(L, OUT_MT);
  return o;
}

/*
** Push the closure's cached buffer, or a fresh one when the cached one is
** busy: a re-entrant call (from an __index metamethod, say) or one left
** marked by a call an error unwound. A fresh buffer replaces the cached one
** when released, so a buffer lost to an error costs one allocation.
*/
static Out *out_acquire(lua_State *L, int *fresh) {
  Out *o = (Out *)lua_touserdata(L, lua_upvalueindex(UV_CACHE));
  if (o != NULL && !o->busy) {
    lua_pushvalue(L, lua_upvalueindex(UV_CACHE));
    *fresh = 0;
  } else {
    o = out_new(L);
    *fresh = 1;
  }
  o->busy = 1;
  o->n = 0;
  return o;
}

/* Done with the buffer at index idx; a large one gives its memory back. */
static void out_release(lua_State *L, Out *o, int idx, int fresh) {
  o->busy = 0;
  if (o->cap > OUT_KEEP_MAX) {
    o->f(o->ud, o->p, o->cap, 0);
    o->p = NULL;
    o->cap = 0;
  }
  if (fresh) {
    lua_pushvalue(L, idx);
    lua_replace(L, lua_upvalueindex(UV_CACHE));
  }
}

static void out_grow(lua_State *L, Out *o, size_t need) {
  size_t cap = o->cap ? o->cap : 512;
  char *p;
  if (need > ((size_t)-1) / 2 - o->n)
    brisk_raise(L, "brisk.xml: serialized stanza too large");
  while (cap < o->n + need) cap *= 2;
  p = (char *)o->f(o->ud, o->p, o->cap, cap);
  if (p == NULL) brisk_raise(L, "not enough memory");
  o->p = p;
  o->cap = cap;
}

static inline void out_add(lua_State *L, Out *o, const char *s, size_t len) {
  if (o->cap - o->n < len) out_grow(L, o, len);
  memcpy(o->p + o->n, s, len);
  o->n += len;
}

#define out_lit(L, o, s) out_add((L), (o), "" s, sizeof(s) - 1)

static inline void out_char(lua_State *L, Out *o, char c) {
  if (o->n == o->cap) out_grow(L, o, 1);
  o->p[o->n++] = c;
}

/*
** Copy n bytes to w and return the end. Attribute names, values and element
** names are mostly a few bytes long, where a call to memcpy costs more than
** the copy: up to 16 bytes are moved with two overlapping loads and stores
** that never read outside the source.
*/
static inline char *put(char *w, const char *s, size_t n) {
  if (n <= 16) {
    if (n >= 8) {
      uint64_t a, b;
      memcpy(&a, s, 8);
      memcpy(&b, s + n - 8, 8);
      memcpy(w, &a, 8);
      memcpy(w + n - 8, &b, 8);
    } else if (n >= 4) {
      uint32_t a, b;
      memcpy(&a, s, 4);
      memcpy(&b, s + n - 4, 4);
      memcpy(w, &a, 4);
      memcpy(w + n - 4, &b, 4);
    } else if (n > 0) {
      w[0] = s[0];
      w[n / 2] = s[n / 2];
      w[n - 1] = s[n - 1];
    }
    return w + n;
  }
  memcpy(w, s, n);
  return w + n;
}

/* Make room for need more bytes; returns where they go. */
static inline char *out_reserve(lua_State *L, Out *o, size_t need) {
  if (o->cap - o->n < need) out_grow(L, o, need);
  return o->p + o->n;
}

/* Decimal form of a small positive counter, as Lua's ".." writes it. */
static void out_int(lua_State *L, Out *o, lua_Integer v) {
  char tmp[24];
  int i = (int)sizeof tmp;
  do {
    tmp[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  out_add(L, o, tmp + i, sizeof tmp - (size_t)i);
}

/* The five bytes util.stanza escapes, and what each becomes. */
static const unsigned char esc_class[256] = {
  ['\''] = 1, ['"'] = 2, ['<'] = 3, ['>'] = 4, ['&'] = 5
};
static const char esc_text[6][7] = {
  "", "&apos;", "&quot;", "&lt;\0\0", "&gt;\0\0", "&amp;\0"
};
static const unsigned char esc_len[6] = { 0, 6, 6, 4, 4, 5 };

#if defined(__SSE2__)
/*
** Bit i set when byte i of x is one of the five. Three compares, not
** five: '&' (0x26) and '\'' (0x27) are the bytes that become 0x27 when
** bit 0 is set, '<' (0x3c) and '>' (0x3e) those that become 0x3e when
** bit 1 is set.
*/
static inline unsigned special_mask(__m128i x) {
  __m128i m = _mm_or_si128(
      _mm_or_si128(
          _mm_cmpeq_epi8(_mm_or_si128(x, _mm_set1_epi8(0x01)),
                         _mm_set1_epi8('\'')),
          _mm_cmpeq_epi8(_mm_or_si128(x, _mm_set1_epi8(0x02)),
                         _mm_set1_epi8('>'))),
      _mm_cmpeq_epi8(x, _mm_set1_epi8('"')));
  return (unsigned)_mm_movemask_epi8(m);
}
#endif

/*
** Index of the first byte of s[i..len) that needs escaping, or len. With
** SSE2, 16 (or 8) bytes at a time; the last block overlaps bytes already
** found clean rather than reading past the string.
*/
/* Forced inline: as a call it cost a tenth of the attribute loop. */
static inline __attribute__((always_inline)) size_t
next_special(const char *s, size_t i, size_t len) {
#if defined(__SSE2__)
  if (len - i >= 16) {
    unsigned bits;
    for (; i + 16 <= len; i += 16) {
      bits = special_mask(_mm_loadu_si128((const __m128i *)(const void *)(s + i)));
      if (bits) return i + (size_t)__builtin_ctz(bits);
    }
    if (i == len) return len;
    i = len - 16;
    bits = special_mask(_mm_loadu_si128((const __m128i *)(const void *)(s + i)));
    return bits ? i + (size_t)__builtin_ctz(bits) : len;
  }
  if (len - i >= 8) {
    unsigned bits;
    bits = special_mask(_mm_loadl_epi64((const __m128i *)(const void *)(s + i))) & 0xffu;
    if (bits) return i + (size_t)__builtin_ctz(bits);
    i = len - 8;
    bits = special_mask(_mm_loadl_epi64((const __m128i *)(const void *)(s + i))) & 0xffu;
    return bits ? i + (size_t)__builtin_ctz(bits) : len;
  }
  if (len - i >= 4) {
    /* 4 to 7 bytes: the first four and the last four, overlapping, in one
       register; a special byte in the second half that the first half
       covers was already found there. */
    uint32_t a, b;
    unsigned bits;
    memcpy(&a, s + i, 4);
    memcpy(&b, s + len - 4, 4);
    bits = special_mask(_mm_set_epi32(0, 0, (int)b, (int)a)) & 0xffu;
    if (bits & 0xfu) return i + (size_t)__builtin_ctz(bits);
    return bits ? len - 8 + (size_t)__builtin_ctz(bits) : len;
  }
#endif
  for (; i < len; i++)
    if (esc_class[(unsigned char)s[i]]) return i;
  return len;
}

/*
** Append s escaped as util.stanza.xml_escape does: runs between special
** bytes are copied whole. out_escaped_slow takes over at s[i], the first
** byte that needs escaping (found by the caller's scan), so the common case
** (nothing to escape) is one scan and one copy.
*/
static void out_escaped_slow(lua_State *L, Out *o, const char *s, size_t len,
                             size_t i) {
  size_t start = 0;
  do {
    unsigned char c = esc_class[(unsigned char)s[i]];
    char *w = out_reserve(L, o, i - start + 6);
    w = put(w, s + start, i - start);
    memcpy(w, esc_text[c], 6); /* all six bytes exist; only esc_len count */
    o->n = (size_t)(w - o->p) + esc_len[c];
    start = i + 1;
  } while ((i = next_special(s, start, len)) < len);
  out_add(L, o, s + start, len - start);
}

static inline void out_escaped(lua_State *L, Out *o, const char *s,
                               size_t len) {
  size_t i = next_special(s, 0, len);
  if (i == len) {
    char *w = out_reserve(L, o, len);
    o->n = (size_t)(put(w, s, len) - o->p);
    return;
  }
  out_escaped_slow(L, o, s, len, i);
}

/*
** Ensure room for the walk's integer stack at the given depth (the walk
** goes one level deeper at a time, so doubling is always enough).
*/
static WalkLevel *level_grow(lua_State *L, Out *o, size_t depth) {
  size_t n = o->nlv ? o->nlv * 2 : 32;
  WalkLevel *lv = (WalkLevel *)o->f(o->ud, o->lv, o->nlv * sizeof(WalkLevel),
                            n * sizeof(WalkLevel));
  if (lv == NULL) brisk_raise(L, "not enough memory");
  o->lv = lv;
  o->nlv = n;
  return &o->lv[depth];
}

static inline WalkLevel *level_at(lua_State *L, Out *o, size_t depth) {
  return depth < o->nlv ? &o->lv[depth] : level_grow(L, o, depth);
}

/* ---------------------------------------------------------------- walk */

/* Does the attribute name contain the namespace separator "\1"? Names
   are short: a plain loop beats a call to memchr. */
#define ONES64 0x0101010101010101u
#define HIGHS64 0x8080808080808080u
/* Non-zero when some byte of x is 0x01 (x ^ ONES has a zero byte there). */
static inline uint64_t sep_in(uint64_t x) {
  x ^= ONES64;
  return (x - ONES64) & ~x & HIGHS64;
}

static inline int has_sep(const char *k, size_t kl) {
  uint64_t a = 0, b = 0;
  if (kl >= 8) {
    if (kl > 16) return memchr(k, '\1', kl) != NULL;
    memcpy(&a, k, 8);
    memcpy(&b, k + kl - 8, 8);
  } else if (kl >= 4) {
    uint32_t a4, b4;
    memcpy(&a4, k, 4);
    memcpy(&b4, k + kl - 4, 4);
    /* The upper bytes stay zero, which is not 0x01. */
    a = a4;
    b = b4;
  } else {
    size_t i;
    for (i = 0; i < kl; i++)
      if (k[i] == '\1') return 1;
    return 0;
  }
  return (sep_in(a) | sep_in(b)) != 0;
}

/*
** Write " k='v'" with v escaped. One reservation covers it all unless v
** needs escaping. Inlined into the walk, where it runs for every attribute.
*/
static inline __attribute__((always_inline)) void
out_attr(lua_State *L, Out *o, const char *k, size_t kl, const char *v, size_t vl) {
  size_t i;
  char *w = out_reserve(L, o, kl + vl + 5);
  *w++ = ' ';
  w = put(w, k, kl);
  *w++ = '=';
  *w++ = '\'';
  if ((i = next_special(v, 0, vl)) == vl) {
    w = put(w, v, vl);
    *w++ = '\'';
    o->n = (size_t)(w - o->p);
  } else {
    o->n = (size_t)(w - o->p);
    out_escaped_slow(L, o, v, vl, i);
    out_char(L, o, '\'');
  }
}

/*
** Write a namespaced attribute k ("ns\1name", value at vi) as stock does:
** " xmlns:nsN='ns' nsN:name='value'". Returns 0 when stock must handle it.
** Rare, so kept out of write_attrs' loop.
*/
static int __attribute__((noinline))
write_ns_attr(lua_State *L, Out *o, const char *k, size_t kl, int vi,
              lua_Integer nsid) {
  const char *sep = (const char *)memchr(k, '\1', kl), *v;
  size_t vl;
  if ((v = lua_tolstring(L, vi, &vl)) == NULL) return 0;
  out_lit(L, o, " xmlns:ns");
  out_int(L, o, nsid);
  out_lit(L, o, "='");
  out_escaped(L, o, k, (size_t)(sep - k));
  out_lit(L, o, "' ns");
  out_int(L, o, nsid);
  out_char(L, o, ':');
  out_add(L, o, sep + 1, kl - (size_t)(sep - k) - 1);
  out_lit(L, o, "='");
  out_escaped(L, o, v, vl);
  out_char(L, o, '\'');
  return 1;
}

/*
** Does the string value v (vl bytes) equal the parent's attr.xmlns under
** stock's "v == parentns"? Two strings are equal when their bytes are:
** interned short strings are usually the same pointer, so that is tried
** first. A string never equals a non-string.
*/
static inline int same_ns(const WalkLevel *parent, const char *v, size_t vl) {
  return parent != NULL && parent->nst == NS_STRING &&
         (parent->ns == v ||
          (parent->nsl == vl && memcmp(parent->ns, v, vl) == 0));
}

/*
** Write " key='value'" for every attribute of the table at index attr (on
** top of the stack, no metatable), in lua_next order, which is the order of
** stock's pairs. parent is the enclosing element's level (NULL at the top,
** stock's parentns nil there), its raw attr.xmlns in stack slot parentns:
** an xmlns equal to it is left out, as stock does. A namespaced attribute
** ("ns\1name") gets its own xmlns:nsN declaration, numbered from 1 in
** each element. The raw attr.xmlns is anchored in slot nsslot and noted in
** self for the children. Returns 0 when stock must handle the stanza.
** Inlined into the walk, where it runs for every element.
*/
static inline __attribute__((always_inline)) int
attrs_inline(lua_State *L, Out *o, int attr, const WalkLevel *parent,
             int parentns, WalkLevel *self, int nsslot) {
  const int ki = attr + 1, vi = attr + 2;
  lua_Integer nsid = 0;
  self->nst = NS_NONE;
  lua_pushnil(L);
  while (lua_next(L, attr)) {
    const char *k, *v;
    size_t kl, vl;
    int kt = lua_type(L, ki);
    if (kt == LUA_TSTRING) {
      k = lua_tolstring(L, ki, &kl);
      if (kl == 5 && memcmp(k, "xmlns", 5) == 0) {
        /* The raw value, before any conversion, is what the children
           compare with; the slot keeps it alive while they do. */
        lua_copy(L, vi, nsslot);
        if (lua_type(L, vi) == LUA_TSTRING) {
          v = lua_tolstring(L, vi, &vl);
          self->nst = NS_STRING;
          self->ns = v;
          self->nsl = vl;
          if (same_ns(parent, v, vl)) {
            lua_settop(L, ki);
            continue;
          }
          goto write;
        }
        /* rawequal is stock's == here: __eq never applies to a number,
           and any value but a string or number goes to stock below. */
        self->nst = NS_OTHER;
        if (parent != NULL && parent->nst == NS_OTHER &&
            lua_rawequal(L, vi, parentns)) {
          lua_settop(L, ki);
          continue;
        }
      } else if (has_sep(k, kl)) {
        if (!write_ns_attr(L, o, k, kl, vi, ++nsid)) return 0;
        lua_settop(L, ki);
        continue;
      }
    } else if (kt == LUA_TNUMBER) {
      /* Convert a copy: converting the key itself would break lua_next.
         A number never holds the separator nor spells "xmlns". */
      lua_pushvalue(L, ki);
      k = lua_tolstring(L, -1, &kl);
    } else {
      return 0;
    }
    /* lua_tolstring converts a number value in place, in our slot, the way
       gsub would; anything but a string or number is stock's error. */
    if ((v = lua_tolstring(L, vi, &vl)) == NULL) return 0;
  write:
    out_attr(L, o, k, kl, v, vl);
    lua_settop(L, ki); /* keep the key for lua_next */
  }
  return 1;
}

/* The same as a plain function, for top_tag. */
static int write_attrs(lua_State *L, Out *o, int attr, int nsslot) {
  WalkLevel self;
  return attrs_inline(L, o, attr, NULL, 0, &self, nsslot);
}

/*
** Stack slots of one open element: the element, its name (as a string),
** its raw attr.xmlns (the children's parentns), attr, and #element.
*/
#define SLOTS 5

/*
** Stack slots the walk reserves at a time: enough for a stanza three
** elements deep, the common case; deeper ones grow it a chunk at a time.
** Keep it small: stanzas are serialized on the sending session's coroutine,
** whose stack the collector shrinks in every cycle, so a large reservation
** regrew a 4-8 KiB stack on nearly every tostring() at fleet scale (160
** made presence churn 14% slower than stock; docs/benchmarks.md).
*/
#define STACK_CHUNK 32

/*
** Serialize the value at index root into o. Returns 1 on success, 0 when
** stock must handle it; either way the stack is back to its entry height.
** Open elements live on the Lua stack, SLOTS each from base + 1, their
** counters in o->lv: an explicit stack, so depth is bounded by Lua's stack
** limit (a Lua error), never by the C stack. One flat loop, everything
** inlined: per element, the calls and register saves of helper functions
** cost as much as the bookkeeping they do.
*/
static int walk(lua_State *L, Out *o, int root) {
  const int top = lua_gettop(L), keys = top + 1, base = top + 2;
  int limit = top + STACK_CHUNK, t = base + 1;
  size_t depth = 0;
  WalkLevel *lv; /* the innermost open element's, in o->lv[depth - 1] */
  if (lua_type(L, root) != LUA_TTABLE) return 0;
  if (!lua_checkstack(L, STACK_CHUNK))
    brisk_raise(L, "brisk.xml: stanza nested too deeply to serialize");
  /* The keys on the stack: a stack slot is cheaper to read than an
     upvalue. */
  lua_pushvalue(L, lua_upvalueindex(UV_KNAME));
  lua_pushvalue(L, lua_upvalueindex(UV_KATTR));
  lua_pushvalue(L, root);
  get_field(L, base + 1, keys);
  for (;;) {
    /*
    ** Open the element at t, whose name (read once: stock's child.name and
    ** t.name read the same field) is at t + 1, the top. Its slots: t + 2
    ** its raw attr.xmlns, t + 3 attr, t + 4 #t.
    */
    WalkLevel *self = level_at(L, o, depth); /* may move o->lv */
    WalkLevel *parent = depth > 0 ? self - 1 : NULL;
    const char *name;
    size_t nl;
    lua_Integer len;
    int isnum;
    char *w;
    /* In our own slot, so a number name may be converted as ".." would. */
    if ((name = lua_tolstring(L, t + 1, &nl)) == NULL) goto fallback;
    lua_pushnil(L); /* t + 2: attr.xmlns, nil unless the attributes have it */
    /* attr must be a plain table: pairs would honour __pairs, and
       t.attr.xmlns __index, in ways a raw walk cannot follow. */
    if (get_field(L, t, keys + 1) != LUA_TTABLE || lua_getmetatable(L, t + 3))
      goto fallback;
    w = out_reserve(L, o, nl + 1);
    *w++ = '<';
    o->n = (size_t)(put(w, name, nl) - o->p);
    if (!attrs_inline(L, o, t + 3, parent, t - SLOTS + 2, self, t + 2))
      goto fallback;
    lua_len(L, t); /* t + 4: #t, honouring __len as stock's "#t" does */
    len = lua_tointegerx(L, t + 4, &isnum);
    /* Stock tests "len == 0", which a string from __len never passes
       (its for loop would still take "3" as 3). */
    if (!isnum || (len == 0 && lua_type(L, t + 4) != LUA_TNUMBER))
      goto fallback;
    if (len == 0) {
      w = out_reserve(L, o, 2);
      w[0] = '/';
      w[1] = '>';
      o->n += 2;
      lua_settop(L, t - 1);
      t -= SLOTS;
      lv = parent;
    } else {
      out_char(L, o, '>');
      self->n = 0;
      self->len = len;
      self->name = name;
      self->nl = nl;
      depth++;
      lv = self;
    }
    /* The next child of the innermost open element (lv, at t; NULL when
       the root is done), closing the ones that are done. */
    for (;;) {
      int type;
      if (lv == NULL) goto done;
      if (lv->n >= lv->len) {
        w = out_reserve(L, o, lv->nl + 3);
        *w++ = '<';
        *w++ = '/';
        w = put(w, lv->name, lv->nl);
        *w++ = '>';
        o->n = (size_t)(w - o->p);
        lua_settop(L, t - 1);
        t -= SLOTS;
        lv = --depth > 0 ? lv - 1 : NULL;
        continue;
      }
      if (t + 2 * SLOTS + 8 > limit) {
        /* A child needs SLOTS slots after ours, its attributes three
           more. */
        if (!lua_checkstack(L, STACK_CHUNK))
          brisk_raise(L, "brisk.xml: stanza nested too deeply to serialize");
        limit = lua_gettop(L) + STACK_CHUNK;
      }
      type = get_index(L, t, ++lv->n);
      if (type == LUA_TSTRING) {
        size_t sl;
        const char *s = lua_tolstring(L, -1, &sl);
        out_escaped(L, o, s, sl);
        lua_settop(L, t + SLOTS - 1);
        continue;
      }
      /* child.name decides element or text; stock takes a table with a
         false name as text (an error) and errs on a name that is not a
         string or number: both for stock to report, as is any child
         that is neither a string nor a table. */
      if (type != LUA_TTABLE) goto fallback;
      t += SLOTS;
      get_field(L, t, keys);
      break;
    }
  }
done:
  lua_settop(L, top);
  return 1;
fallback:
  lua_settop(L, top);
  return 0;
}

/* ------------------------------------------------------- entry points */

/* Call the stock function this closure stands in for (UV_STOCK) with the
** first nargs arguments; return its one result. */
static int call_stock(lua_State *L, int nargs) {
  lua_settop(L, nargs);
  lua_pushvalue(L, lua_upvalueindex(UV_STOCK));
  lua_insert(L, 1);
  lua_call(L, nargs, 1);
  return 1;
}

/*
** __tostring(stanza): the stanza as XML.
*/
static int l_tostring(lua_State *L) {
  Out *o;
  int fresh;
  /* tostring() passes exactly one argument: no lua_settop to pay then. */
  if (lua_gettop(L) != 1) lua_settop(L, 1);
  o = out_acquire(L, &fresh); /* 2 */
  if (!walk(L, o, 1)) {
    out_release(L, o, 2, fresh);
    return call_stock(L, 1);
  }
  lua_pushlstring(L, o->p, o->n);
  out_release(L, o, 2, fresh);
  return 1;
}

/* A table pairs() walks raw: no metatable at all. */
static int plain_table(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  if (lua_getmetatable(L, idx)) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/*
** top_tag's order cache. Stock writes the attributes in the pairs order of
** a fresh copy of attr, filled by "attr[k] = v" in the original's pairs
** order; the copy can iterate in another order than the original. The
** copy's layout, and so its order, depends only on the sequence of keys
** inserted (their hashes and the insertion order: Lua's inserts and
** rehashes are deterministic, and values play no part), so for a key
** sequence seen before the order is looked up instead of built: each
** entry holds a sequence of string keys (identified by their bytes'
** address, which is one string object's while that object lives) and the
** copy's order as indices into it. The keys of every entry are kept alive
** by the anchor table (upvalue UV_TTANCHOR), so an address in the cache is
** never reused by another string. Attribute tables with more keys, or
** with a key that is not a string, are copied as stock does each time.
** Two ways per set, the one used less recently replaced: with one way,
** two frequent sequences that collide would each miss every time, and a
** miss costs more than stock's copy alone.
*/
#define TT_KEYS 12
/* Longer keys are not cached: the anchor keeps at most TT_WAYS * TT_KEYS
   keys alive, which must stay a small amount of memory whatever names
   clients send. */
#define TT_KEYLEN 64
#define TT_SETS 128 /* a power of 2: the set is the hash's top bits */
#define TT_SETBITS 7
#define TT_WAYS (2 * TT_SETS)

typedef struct TTEntry {
  int n; /* keys in the sequence; 0 for an unused entry */
  const char *key[TT_KEYS];
  unsigned char order[TT_KEYS];
} TTEntry;

typedef struct TTCache {
  TTEntry e[TT_WAYS]; /* set s: e[2s] and e[2s + 1] */
  unsigned char recent[TT_SETS]; /* the way of the set last used */
} TTCache;

/*
** Learn the copy's order for the n string keys at stack slots first,
** first + 2, ... (values after each) whose bytes are at kp, into order:
** the copy is built as stock's clone builds it and walked with lua_next.
** Then the entry e (way w) is filled, after every allocation, so that no
** Lua code (a finalizer run by a GC step) can come between anchoring the
** keys and recording them. Returns 0 if the copy does not give the keys
** back one for one (it always should).
*/
static int tt_learn(lua_State *L, TTEntry *e, int w, const char **kp, int n,
                    int first, unsigned char *order) {
  int i, pos = 0, copy, keys;
  e->n = 0; /* unusable until filled in below */
  lua_createtable(L, 0, 0); /* stock's "local attr = {}" */
  copy = lua_gettop(L);
  for (i = 0; i < n; i++) {
    lua_pushvalue(L, first + 2 * i);
    lua_pushvalue(L, first + 2 * i + 1);
    lua_rawset(L, copy); /* "attr[k] = v" on a table without metatable */
  }
  lua_pushnil(L);
  while (lua_next(L, copy)) {
    const char *k = lua_tolstring(L, -2, NULL);
    int j = 0;
    while (j < n && kp[j] != k) j++;
    if (j == n || pos == n) {
      lua_settop(L, copy - 1);
      return 0;
    }
    order[pos++] = (unsigned char)j;
    lua_pop(L, 1);
  }
  if (pos != n) {
    lua_settop(L, copy - 1);
    return 0;
  }
  lua_createtable(L, n, 0); /* the keys, to anchor */
  keys = lua_gettop(L);
  for (i = 0; i < n; i++) {
    lua_pushvalue(L, first + 2 * i);
    lua_rawseti(L, keys, i + 1);
  }
  /* The anchor's array part was made with every way present, so this
     store allocates nothing and no GC step runs before e is filled. */
  lua_rawseti(L, lua_upvalueindex(UV_TTANCHOR), w + 1);
  memcpy(e->key, kp, (size_t)n * sizeof *kp);
  memcpy(e->order, order, (size_t)n);
  e->n = n;
  lua_settop(L, copy - 1);
  return 1;
}

/*
** Write the top tag from the n keys and values on the stack (key i at
** first + 2i, its value above it, bytes at kp/kl) in the given order.
** Returns 0 when stock must handle it.
*/
static int tt_write(lua_State *L, Out *o, int first, const char **kp,
                    const size_t *kl, int n, const unsigned char *order) {
  lua_Integer nsid = 0;
  int i;
  for (i = 0; i < n; i++) {
    int j = order[i], vi = first + 2 * j + 1;
    const char *k = kp[j], *v;
    size_t kn = kl[j], vl;
    if (has_sep(k, kn)) {
      if (!write_ns_attr(L, o, k, kn, vi, ++nsid)) return 0;
      continue;
    }
    /* At the top, xmlns is compared with stock's nil parentns: it is an
       ordinary attribute. Numbers are converted in our own slot. */
    if ((v = lua_tolstring(L, vi, &vl)) == NULL) return 0;
    out_attr(L, o, k, kn, v, vl);
  }
  return 1;
}

/* Does entry e hold exactly the n keys at kp, in that order? */
static inline int tt_match(const TTEntry *e, const char **kp, int n) {
  return e->n == n && memcmp(e->key, kp, (size_t)n * sizeof *kp) == 0;
}

/*
** top_tag with the attributes walked once and their order taken from the
** cache (stack: 1 stanza, 2 attr, 3 namespaces, 4 name). Returns -1 when
** the attributes cannot be cached (the caller copies them instead), 0 when
** stock must handle the stanza, 1 with the result pushed.
*/
static int top_tag_cached(lua_State *L) {
  const char *kp[TT_KEYS];
  size_t kl[TT_KEYS];
  unsigned char order[TT_KEYS];
  uint64_t h = 0;
  int n = 0, fresh, first, ok;
  Out *o;
  TTCache *c = (TTCache *)lua_touserdata(L, lua_upvalueindex(UV_TTCACHE));
  if (c == NULL || !lua_checkstack(L, 2 * TT_KEYS + 8)) return -1;
  o = out_acquire(L, &fresh); /* 5 */
  first = 6;
  /* pairs over the original, keeping every key and value on the stack:
     key i at first + 2i, its value above it. */
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    int ki = first + 2 * n;
    if (n == TT_KEYS || lua_type(L, ki) != LUA_TSTRING) {
      out_release(L, o, 5, fresh);
      lua_settop(L, 4);
      return -1;
    }
    kp[n] = lua_tolstring(L, ki, &kl[n]);
    if (kl[n] > TT_KEYLEN) { /* not kept alive in the cache: see TT_KEYLEN */
      out_release(L, o, 5, fresh);
      lua_settop(L, 4);
      return -1;
    }
    h = (h + (uint64_t)(uintptr_t)kp[n]) * 0x9e3779b97f4a7c15u;
    n++;
    lua_pushvalue(L, ki); /* the key lua_next continues from */
  }
  if (n > 0) {
    int set = (int)(h >> (64 - TT_SETBITS)), w = -1;
    if (tt_match(&c->e[2 * set], kp, n)) w = 2 * set;
    else if (tt_match(&c->e[2 * set + 1], kp, n)) w = 2 * set + 1;
    if (w >= 0) {
      /* A local copy: a finalizer run while writing may reuse the way. */
      memcpy(order, c->e[w].order, (size_t)n);
      c->recent[set] = (unsigned char)(w & 1);
    } else {
      w = 2 * set + (c->recent[set] ^ 1);
      c->recent[set] = (unsigned char)(w & 1);
      if (!tt_learn(L, &c->e[w], w, kp, n, first, order)) {
        out_release(L, o, 5, fresh);
        lua_settop(L, 4);
        return -1;
      }
    }
  }
  {
    size_t nl;
    const char *name = lua_tolstring(L, 4, &nl);
    char *w = out_reserve(L, o, nl + 1);
    *w++ = '<';
    o->n = (size_t)(put(w, name, nl) - o->p);
  }
  ok = tt_write(L, o, first, kp, kl, n, order);
  if (ok) {
    out_char(L, o, '>');
    lua_pushlstring(L, o->p, o->n);
    lua_replace(L, 1);
  }
  out_release(L, o, 5, fresh);
  lua_settop(L, 1);
  return ok;
}

/*
** top_tag(stanza): the opening tag alone, "<name attrs>". Stock builds it
** from clone(stanza, true), whose attr table is a fresh copy filled in pairs
** order; the copy can iterate in a different order than the original, so
** its order is the one written: from the cache above, or from a copy made
** here the same way.
*/
static int l_top_tag(lua_State *L) {
  Out *o;
  int fresh, r;
  lua_settop(L, 1);
  /* clone() insists on a stanza (getmetatable(s) == stanza_mt). */
  if (!lua_getmetatable(L, 1) || !lua_rawequal(L, 2, lua_upvalueindex(UV_MT)))
    return call_stock(L, 1);
  lua_settop(L, 1);
  get_key(L, 1, UV_KATTR);          /* 2 */
  lua_getfield(L, 1, "namespaces"); /* 3: clone copies it with pairs */
  get_key(L, 1, UV_KNAME);          /* 4 */
  if (!plain_table(L, 2) || (lua_toboolean(L, 3) && !plain_table(L, 3)) ||
      lua_tolstring(L, 4, NULL) == NULL)
    return call_stock(L, 1);
  if ((r = top_tag_cached(L)) == 1) return 1;
  if (r == 0) return call_stock(L, 1);
  lua_newtable(L);                  /* 5: the copy, as "attr[k] = v" */
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 5);
  }
  lua_pushnil(L);                   /* 6: attr.xmlns, unused */
  o = out_acquire(L, &fresh);       /* 7 */
  lua_pushvalue(L, 5);              /* 8: write_attrs wants it on top */
  out_char(L, o, '<');
  {
    size_t nl;
    const char *name = lua_tolstring(L, 4, &nl);
    out_add(L, o, name, nl);
  }
  if (!write_attrs(L, o, 8, 6)) {
    out_release(L, o, 7, fresh);
    return call_stock(L, 1);
  }
  out_char(L, o, '>');
  lua_pushlstring(L, o->p, o->n);
  out_release(L, o, 7, fresh);
  return 1;
}

/*
** Push a closure of fn with its own upvalues: a buffer, the stanza_mt and
** the stock function at the given stack indices, and the keys.
*/
static void push_closure(lua_State *L, lua_CFunction fn, int mt, int stock) {
  out_new(L);
  lua_pushvalue(L, mt);
  lua_pushvalue(L, stock);
  lua_pushliteral(L, "name");
  lua_pushliteral(L, "attr");
  if (fn == l_top_tag) {
    int i;
    TTCache *c = (TTCache *)lua_newuserdatauv(L, sizeof(TTCache), 0);
    memset(c, 0, sizeof *c);
    /* Every way present from the start, in the array part, so that
       replacing one never allocates (see tt_learn). */
    lua_createtable(L, TT_WAYS, 0);
    for (i = 1; i <= TT_WAYS; i++) {
      lua_pushboolean(L, 0);
      lua_rawseti(L, -2, i);
    }
    lua_pushcclosure(L, fn, UV_TTCOUNT);
    return;
  }
  lua_pushcclosure(L, fn, UV_COUNT);
}

/*
** serializer(stanza_mt, stock_tostring, stock_top_tag): Brisk's __tostring
** and top_tag for the util.stanza whose metatable is stanza_mt. Whatever
** they do not serialize plainly goes to the stock function given.
*/
static int l_serializer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  push_closure(L, l_tostring, 1, 2);
  push_closure(L, l_top_tag, 1, 3);
  return 2;
}

/*
** xml_escape(s): byte-identical to util.stanza.xml_escape, which is
** string.gsub(s, "['&<>\"]", table). Like gsub it accepts numbers
** (converted with Lua's own rules), and for any other type it raises the
** error stock raises (its local alias of gsub is named s_gsub, and it
** always passes one argument, so a missing one reads "got nil"). Other
** bytes, valid UTF-8 or not, are copied through, as stock does.
*/
static int l_xml_escape(lua_State *L) {
  size_t len, i, start = 0;
  const char *s;
  luaL_Buffer b;
  int t = lua_type(L, 1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    return luaL_error(L, "bad argument #1 to 's_gsub' (string expected, got %s)",
                      t == LUA_TNONE ? "nil" : luaL_typename(L, 1));
  s = lua_tolstring(L, 1, &len);
  i = next_special(s, 0, len);
  if (i == len) {
    /* nothing to escape: the string itself (gsub returns a string, never
    ** a number) */
    lua_settop(L, 1);
    if (t == LUA_TNUMBER) lua_pushlstring(L, s, len);
    return 1;
  }
  luaL_buffinit(L, &b);
  do {
    unsigned char c = esc_class[(unsigned char)s[i]];
    luaL_addlstring(&b, s + start, i - start);
    luaL_addlstring(&b, esc_text[c], esc_len[c]);
    start = i + 1;
  } while ((i = next_special(s, start, len)) < len);
  luaL_addlstring(&b, s + start, len - start);
  luaL_pushresult(&b);
  return 1;
}

static const luaL_Reg serializer_funcs[] = {
  {"serializer", l_serializer},
  {"xml_escape", l_xml_escape},
  {NULL, NULL}
};

void xml_open_serializer(lua_State *L, int mod) {
  mod = lua_absindex(L, mod);
  if (luaL_newmetatable(L, OUT_MT)) {
    lua_pushcfunction(L, out_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushvalue(L, mod);
  luaL_setfuncs(L, serializer_funcs, 0);
  lua_pop(L, 1);
}
