/*
** parse.c — brisk.xml's libexpat stream parser, a drop-in for util.xmppstream.
**
** new(session, stream_callbacks, stanza_size_limit) behaves exactly like
** Prosody 0.12's util.xmppstream.new running on LuaExpat 1.5.1: the same
** expat parser configuration (namespace separator "\1", the same handler
** set), the same stanza tables built by the same sequence of table writes
** (so even pairs() order matches), the same byte accounting, callbacks and
** feed() results. The difference is that the per-element work happens here in
** C and Lua is entered only for stream events and complete stanzas.
**
** Lua values a stream needs (session, callbacks, the element stack, ...) are
** kept as user values of the stream's userdata; C state (the expat parsers,
** the character data buffer, counters) lives in the userdata itself and is
** released by __gc, so a Lua error can never leak it.
*/
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <expat.h>

#include "xml.h"

#define NS_SEP '\1'
#define XML_NS "http://www.w3.org/XML/1998/namespace"
#define XML_NS_LEN (sizeof(XML_NS) - 1)
#define DEFAULT_STANZA_SIZE_LIMIT (1024 * 1024)

/*
** Optional limits on nesting depth and attributes per element. Stock has
** none, and by default neither has Brisk: the stanza size limit already
** bounds a stanza's memory, and open elements live in a Lua table, never on
** the C stack. Operators may set lower ones (docs/xml.md).
*/
#define DEFAULT_MAX_DEPTH LUA_MAXINTEGER
#define DEFAULT_MAX_ATTRIBUTES LUA_MAXINTEGER

/* User value slots of a stream userdata. */
enum {
  UV_SESSION = 1,
  UV_STREAMOPENED, UV_STREAMCLOSED, UV_ERROR, UV_HANDLESTANZA,
  UV_STACK,        /* array of open elements: [1] the stanza, [depth] current */
  UV_LANG,         /* the stream's xml:lang, default for top-level stanzas */
  UV_STRINGS,      /* keeps the strings that the C pointers below point into */
  UV_STANZA_MT,
  UV_LIMIT,        /* stanza_size_limit, any Lua value (compared like stock) */
  UV_PENDING,      /* the error a callback raised during the current parse */
  UV_CACHE,        /* the NameCache userdata shared by all streams (push_name) */
  UV_MODULE,       /* the Module userdata whose list holds this stream */
  UV_COUNT = UV_MODULE
};

/*
** What the parser counts for each open element: its entries (children and
** text runs, stanza[1..items]), how many of them are elements, and whether
** its tags table is the real one already (see finish_tags): from its end
** on, or from its start for an element that can be seen before it ends.
*/
typedef struct Level {
  lua_Integer items, kids;
  int built;
} Level;

/*
** Settings for streams created from now on. child_quota says whether the
** stock parser being replaced has a child quota (set_stanza_size_limit's
** max_elements): Prosody 0.12's has, 13's dropped it.
*/
typedef struct Limits {
  lua_Integer max_depth, max_attributes;
  int child_quota;
  int hibernate_eagerly;  /* hibernate at every eligible feed end (see settle) */
} Limits;

/*
** C memory is counted per owner: every allocation of an expat parser
** (through the memory suite below, see Region) and of a stream's own buffers
** carries a header naming the Account it is charged to, so frees need no
** context.
*/
typedef struct Account {
  size_t bytes;
  struct Module *mod;
} Account;

/*
** Each expat parser allocates from a Region of its own: a slab that holds
** what a parser needs after a stream header and a few stanzas, handed out
** by bumping a pointer, with larger or later allocations from the heap.
** Freeing a slab block does nothing; the slab goes when the parser does, and
** then XML_ParserFree is only needed if heap blocks remain. Building and
** freeing a parser is what waking and hibernating cost, and this halves it
** (about 25 mallocs and frees become one each, and expat's walk of its
** structures to free them is skipped). expat frees memory only to replace
** it with more (a buffer or table that grows), so the slab wastes at most
** what it held; a parser holding too much is rebuilt (XMEM_KEEP).
*/
typedef struct Region {
  Account acct;          /* the slab and every heap block of the parser */
  char *next, *end;      /* the free part of the slab */
  char *last;            /* the slab's last block (realloc grows it in place) */
  char *pad;             /* (keeps the slab 16-byte aligned) */
} Region;

/*
** The module's state, one userdata shared by new, set_limits, hibernate and
** memory: the limits for new streams and the list of every stream not yet
** collected (intrusive: each stream links itself in at creation and out in
** __gc; a stream keeps this userdata alive through UV_MODULE).
*/
typedef struct Module {
  Limits limits;
  struct Stream *streams;
  /* test-only fault injection (see l_fail_alloc): when non-zero, the
  ** allocation that brings it to zero fails */
  lua_Integer fail_countdown;
  /* hash salts for rebuilt parsers (see wake_salt) */
  uint64_t salt_key, salt_count;
} Module;

typedef struct Stream {
  XML_Parser cur;       /* the parser feed() uses; replaced by reset() */
  XML_Parser active;    /* the parser inside XML_Parse right now, or NULL */
  lua_State *L;         /* valid while a parse runs */
  int ud;               /* stack index of this userdata while a parse runs */
  int failed;           /* a callback raised: skip handlers until XML_Parse returns */
  int dead;             /* an internal error escaped from inside expat */
  int depth;            /* open elements of the current stanza (0: none) */
  lua_Integer stanza_size, outstanding, non_streamns_depth;
  int has_quota;        /* child quota (stock's max_elements), numbers only */
  lua_Number quota, max_elements;
  int has_max_elements;
  /* character data of the current text run, as stock's chardata list */
  char *text;
  size_t textlen, textcap;
  size_t nchunks;
  /* per open element (index = depth): see finish_tags */
  struct Level *levels;
  size_t levelcap;
  /* stream configuration, copied from stream_callbacks at creation */
  const char *stream_tag;       /* NULL: can never match */
  const char *error_tag;
  const char *default_ns;       /* NULL: nil or not a string, never equal */
  size_t default_ns_len;
  int has_streamopened, has_streamclosed;
  int base;             /* first of the fixed stack slots below, during a parse */
  Limits limits;
  struct NameCache *cache;  /* kept alive by UV_CACHE */
  /* C memory held: the parsers' Regions (cur's, and active's after a
  ** reset() during a feed) and Brisk's buffers (text, levels, hdr) */
  Region *cur_r, *active_r;
  Account bmem;
  /* hibernation (see "hibernation" below): the state of parser cur as far
  ** as a replay must restore it, the root's start tag to replay, and
  ** whether the last feed left cur at a point where it can be rebuilt */
  char *hdr;                    /* raw bytes of the root start tag, or NULL */
  size_t hdrlen;
  XML_Index fed;                /* bytes given to cur so far */
  XML_Index event_end;          /* byte index just after cur's last event */
  int xdepth;                   /* elements open in cur (expat's view) */
  int in_cdata;                 /* inside a CDATA section of cur */
  int noreplay;                 /* cur's prolog cannot be replayed */
  int eligible;                 /* the last feed ended where cur can be rebuilt */
  int hibernating;              /* cur is freed; hdr rebuilds it */
  int stuck_error;              /* enum XML_Error every feed reports (l_feed) */
  double since;                 /* when it became eligible (monotonic s) */
  struct Stream *prev, *next;   /* Module.streams */
  struct Module *mod;           /* NULL once unlinked */
} Stream;

/*
** While a parse runs, its C frame holds, from s->base on: the element stack
** table, util.stanza's stanza_mt, the keys "name", "attr", "tags" and
** "xmlns", and the string cache, so that handlers need no lookups for them.
*/
#define SLOT_STACK(s) ((s)->base)
#define SLOT_MT(s)    ((s)->base + 1)
#define KEY_NAME(s)   ((s)->base + 2)
#define KEY_ATTR(s)   ((s)->base + 3)
#define KEY_TAGS(s)   ((s)->base + 4)
#define KEY_XMLNS(s)  ((s)->base + 5)
#define SLOT_CACHE(s) ((s)->base + 6)

/* Slots of the string cache, a power of two, and the longest string kept. */
#define NAME_CACHE_SIZE 2048
#define NAME_CACHE_MAXLEN 64
#define SHORT_VALUE_MAXLEN 12

/*
** The string cache (see push_name): slot i's Lua string is element i+1 of
** the cache userdata's user value (a table, which keeps it alive), and the
** C side keeps its bytes and length, so a lookup compares memory without
** going through the Lua API; only a hit pushes the string.
*/
typedef struct NameCache {
  struct { const char *str; size_t len; } slot[NAME_CACHE_SIZE];
} NameCache;

static const char *const STREAM_TYPE = "brisk.xml.stream";

/* ---------------------------------------------------------------------- */
/* counted C memory                                                        */
/* ---------------------------------------------------------------------- */

/*
** Every C allocation a stream owns starts with this header: the Account it
** is charged to and its size. 16 bytes, so the block after it keeps
** malloc's alignment.
*/
typedef struct AllocHeader {
  Account *owner;
  size_t size;
} AllocHeader;

_Static_assert(sizeof(AllocHeader) % 16 == 0, "header keeps malloc's alignment");

/* What an allocation of size bytes is counted as: the header included. */
#define CHARGE(size) ((size) + sizeof(AllocHeader))

/* Fault injection (l_fail_alloc): does this allocation fail? */
static int injected_failure(Module *m) {
  return m && m->fail_countdown > 0 && --m->fail_countdown == 0;
}

static void *counted_realloc(Account *a, void *ptr, size_t size) {
  AllocHeader *h = ptr ? (AllocHeader *)ptr - 1 : NULL, *n;
  Account *owner = h ? h->owner : a;
  if (owner == NULL || size > SIZE_MAX / 2) return NULL;
  if (injected_failure(owner->mod)) return NULL;
  n = (AllocHeader *)(h ? realloc(h, CHARGE(size)) : malloc(CHARGE(size)));
  if (n == NULL) return NULL;
  if (h) owner->bytes -= CHARGE(n->size);
  n->owner = owner;
  n->size = size;
  owner->bytes += CHARGE(size);
  return n + 1;
}

static void counted_free(void *ptr) {
  AllocHeader *h;
  if (ptr == NULL) return;
  h = (AllocHeader *)ptr - 1;
  h->owner->bytes -= CHARGE(h->size);
  free(h);
}

/*
** Slab blocks are marked in their header's size; under AddressSanitizer the
** unused part of a slab, the gap after each block and freed blocks are
** poisoned, so overflows and uses after free are still caught there.
*/
#define SLAB_BLOCK ((size_t)1 << (sizeof(size_t) * CHAR_BIT - 1))
#define SLAB_SIZE (12 * 1024)
#define SLAB_CHARGE (sizeof(Region) + SLAB_SIZE)

#if defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define BRISK_ASAN 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#  define BRISK_ASAN 1
#endif
#ifdef BRISK_ASAN
#  include <sanitizer/asan_interface.h>
#  define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#  define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#  define REDZONE 16
#else
#  define POISON(p, n) ((void)0)
#  define UNPOISON(p, n) ((void)0)
#  define REDZONE 0
#endif

_Static_assert(sizeof(Region) % 16 == 0, "the slab after a Region is aligned");

static size_t round16(size_t n) {
  return (n + 15) & ~(size_t)15;
}

/* A Region for a new parser; mod is the stream's module (fault injection). */
static Region *region_new(Module *mod) {
  Region *r;
  if (injected_failure(mod)) return NULL;
  r = (Region *)malloc(SLAB_CHARGE);
  if (r == NULL) return NULL;
  r->acct.bytes = SLAB_CHARGE;
  r->acct.mod = mod;
  r->next = (char *)(r + 1);
  r->end = r->next + SLAB_SIZE;
  r->last = NULL;
  r->pad = NULL;
  POISON(r->next, SLAB_SIZE);
  return r;
}

/* Allocate for r's parser: from the slab when it fits, else the heap. */
static void *region_alloc(Region *r, size_t size) {
  size_t need;
  AllocHeader *h;
  if (size > SLAB_SIZE) return counted_realloc(&r->acct, NULL, size);
  need = sizeof(AllocHeader) + round16(size) + REDZONE;
  if ((size_t)(r->end - r->next) < need) return counted_realloc(&r->acct, NULL, size);
  if (injected_failure(r->acct.mod)) return NULL;
  h = (AllocHeader *)r->next;
  UNPOISON(h, sizeof *h + size);
  h->owner = &r->acct;
  h->size = size | SLAB_BLOCK;
  r->last = (char *)(h + 1);
  r->next += need;
  return h + 1;
}

/*
** Free a parser and its Region. XML_ParserFree only walks the parser's
** structures to free its blocks, so when all of them are in the slab (the
** account holds nothing else) freeing the slab is the same.
*/
static void region_free(XML_Parser p, Region *r) {
  if (r == NULL) return;
  if (p && r->acct.bytes > SLAB_CHARGE) XML_ParserFree(p);
  UNPOISON(r + 1, SLAB_SIZE);
  free(r);
}

/*
** expat's memory suite. Its functions get no context, so new blocks come
** from the Region in expat_region, which is set around every call into
** expat that can allocate (parser creation, XML_Parse) and restored
** afterwards, so nested feeds of other streams from inside callbacks use
** their own. Frees and reallocs find their Region in the block's header. It
** is the only file-scope variable; it is thread-local, and NULL (allocations
** fail) outside those calls.
*/
static _Thread_local Region *expat_region;

static void *XMLCALL mm_malloc(size_t size) {
  return expat_region ? region_alloc(expat_region, size) : NULL;
}

static void XMLCALL mm_free(void *ptr) {
  AllocHeader *h;
  if (ptr == NULL) return;
  h = (AllocHeader *)ptr - 1;
  if (h->size & SLAB_BLOCK) {
    POISON(ptr, h->size & ~SLAB_BLOCK);   /* stays in the slab, unused */
    return;
  }
  counted_free(ptr);
}

static void *XMLCALL mm_realloc(void *ptr, size_t size) {
  AllocHeader *h;
  Region *r;
  size_t old;
  void *n;
  if (ptr == NULL) return mm_malloc(size);
  h = (AllocHeader *)ptr - 1;
  if (!(h->size & SLAB_BLOCK)) return counted_realloc(NULL, ptr, size);
  /* a slab block: the Region whose account its header names */
  r = (Region *)((char *)h->owner - offsetof(Region, acct));
  old = h->size & ~SLAB_BLOCK;
  if ((char *)ptr == r->last && size <= SLAB_SIZE &&
      (size_t)(r->end - (char *)ptr) >= round16(size) + REDZONE) {
    if (injected_failure(r->acct.mod)) return NULL;
    if (size < old) POISON((char *)ptr + size, old - size);
    else UNPOISON(ptr, size);
    h->size = size | SLAB_BLOCK;
    r->next = (char *)ptr + round16(size) + REDZONE;
    return ptr;
  }
  n = region_alloc(r, size);
  if (n == NULL) return NULL;
  memcpy(n, ptr, old < size ? old : size);
  mm_free(ptr);
  return n;
}

static const XML_Memory_Handling_Suite mm_suite = {mm_malloc, mm_realloc, mm_free};

/* ---------------------------------------------------------------------- */
/* expat parsers                                                           */
/* ---------------------------------------------------------------------- */

static void XMLCALL h_start(void *p, const XML_Char *name, const XML_Char **atts);
static void XMLCALL h_end(void *p, const XML_Char *name);
static void XMLCALL h_chars(void *p, const XML_Char *s, int len);
static void XMLCALL h_cdata_start(void *p);
static void XMLCALL h_cdata_end(void *p);
static void XMLCALL h_comment(void *p, const XML_Char *data);
static void XMLCALL h_pi(void *p, const XML_Char *target, const XML_Char *data);
static void XMLCALL h_xmldecl(void *p, const XML_Char *version,
                              const XML_Char *encoding, int standalone);
static void XMLCALL h_doctype(void *p, const XML_Char *name, const XML_Char *sysid,
                              const XML_Char *pubid, int has_internal_subset);

/*
** A parser configured as LuaExpat configures it (namespace separator "\1";
** see set_handlers), in a Region of its own, stored in *rp. NULL when out of
** memory.
*/
static XML_Parser create_parser(Stream *s, Region **rp) {
  static const XML_Char sep[] = {NS_SEP, '\0'};
  Region *prev = expat_region, *r = region_new(s->bmem.mod);
  XML_Parser p;
  if (r == NULL) return NULL;
  expat_region = r;
  p = XML_ParserCreate_MM(NULL, &mm_suite, sep);
  expat_region = prev;
  if (p == NULL) {
    region_free(NULL, r);
    return NULL;
  }
  *rp = r;
  XML_SetUserData(p, s);
  /* Handlers receive the parser itself: byte counts are per parser, and an
  ** old parser may still be finishing its buffer after reset(). */
  XML_UseParserAsHandlerArg(p);
  return p;
}

/*
** Exactly the handlers LuaExpat registers for util.xmppstream's handler
** table, since which handlers exist changes how expat reports events and
** byte counts.
*/
static void set_handlers(XML_Parser p) {
  XML_SetElementHandler(p, h_start, h_end);
  XML_SetCharacterDataHandler(p, h_chars);
  XML_SetCdataSectionHandler(p, h_cdata_start, h_cdata_end);
  XML_SetCommentHandler(p, h_comment);
  XML_SetProcessingInstructionHandler(p, h_pi);
  XML_SetXmlDeclHandler(p, h_xmldecl);
  XML_SetStartDoctypeDeclHandler(p, h_doctype);
}

static Stream *stream_of(XML_Parser p) {
  return (Stream *)XML_GetUserData(p);
}

/* ---------------------------------------------------------------------- */
/* calling Lua                                                             */
/* ---------------------------------------------------------------------- */

/*
** Call the function below nargs arguments on the stack, the way LuaExpat's
** docall does: protected, and on error remember the error value and skip all
** further handlers of this XML_Parse call (expat itself keeps going).
** Returns 0 when the callback failed.
*/
static int call_protected(Stream *s, int nargs) {
  lua_State *L = s->L;
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
    lua_setiuservalue(L, s->ud, UV_PENDING);
    s->failed = 1;
    return 0;
  }
  return 1;
}

/* Push user value "uv" of the running stream. */
static void push_uv(Stream *s, int uv) {
  lua_getiuservalue(s->L, s->ud, uv);
}

/* cb_error(session, e, a, b) with 1 to 3 string arguments. */
static int report(Stream *s, const char *e, const char *a, const char *b) {
  lua_State *L = s->L;
  int n = 2;
  push_uv(s, UV_ERROR);
  push_uv(s, UV_SESSION);
  lua_pushstring(L, e);
  if (a) { lua_pushstring(L, a); n++; }
  if (b) { lua_pushstring(L, b); n++; }
  return call_protected(s, n);
}

static int do_gettable(lua_State *L) {
  lua_gettable(L, 1);
  return 1;
}

/*
** session.notopen, as stock reads it (metamethods included). A plain table
** is read raw; otherwise the read is protected, and an error in it counts as
** a handler error, as it does in stock. Returns -1 on error.
*/
static int session_notopen(Stream *s) {
  lua_State *L = s->L;
  int r;
  push_uv(s, UV_SESSION);
  if (lua_type(L, -1) == LUA_TTABLE && !lua_getmetatable(L, -1)) {
    lua_pushliteral(L, "notopen");
    lua_rawget(L, -2);
  } else {
    if (lua_type(L, -1) == LUA_TTABLE) lua_pop(L, 1); /* its metatable */
    lua_pushcfunction(L, do_gettable);
    lua_insert(L, -2);
    lua_pushliteral(L, "notopen");
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      lua_setiuservalue(L, s->ud, UV_PENDING);
      s->failed = 1;
      return -1;
    }
    lua_pushnil(L); /* balance the pop of two below */
    lua_insert(L, -2);
  }
  r = lua_toboolean(L, -1);
  lua_pop(L, 2);
  return r;
}

/*
** parser:stop() as stock's handlers use it: when expat refuses (the parser
** already finished), stock raises "Failed to abort parsing" from inside the
** handler, which LuaExpat turns into the error feed() raises.
*/
static void stop_parser(Stream *s, XML_Parser p) {
  if (XML_StopParser(p, XML_FALSE) != XML_STATUS_OK) {
    lua_pushliteral(s->L, "Failed to abort parsing");
    lua_setiuservalue(s->L, s->ud, UV_PENDING);
    s->failed = 1;
  }
}

/* ---------------------------------------------------------------------- */
/* the element stack and text                                              */
/* ---------------------------------------------------------------------- */

/* Push the current element (stack[depth]); depth must be > 0. */
static void push_current(Stream *s) {
  lua_rawgeti(s->L, SLOT_STACK(s), s->depth);
}

/*
** Stock keeps a list of character data pieces and inserts their
** concatenation as one text node before the next element event; a run of
** zero pieces inserts nothing. The element to append to is on the top.
*/
static void flush_text(Stream *s) {
  lua_State *L = s->L;
  if (s->nchunks == 0) return;
  lua_pushlstring(L, s->text, s->textlen);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  s->levels[s->depth].items++;
  s->textlen = 0;
  s->nchunks = 0;
}

static void add_text(Stream *s, const char *data, size_t len) {
  if (s->textcap - s->textlen < len) {
    size_t cap = s->textcap ? s->textcap : 256;
    char *n;
    while (cap - s->textlen < len) {
      if (cap > ((size_t)-1) / 2) luaL_error(s->L, "brisk.xml: text too large");
      cap *= 2;
    }
    n = (char *)counted_realloc(&s->bmem, s->text, cap);
    if (n == NULL) luaL_error(s->L, "brisk.xml: not enough memory");
    s->text = n;
    s->textcap = cap;
  }
  memcpy(s->text + s->textlen, data, len);
  s->textlen += len;
  s->nchunks++;
}

/*
** Make room for the counters of depth d and reset them (a new element).
** Depth has no limit by default (as in stock), so the array grows as
** needed; it is owned by the stream, shrunk after a deep stanza (see
** h_end) and freed by __gc.
*/
static void open_level(Stream *s, int d) {
  if ((size_t)d >= s->levelcap) {
    size_t cap = s->levelcap ? s->levelcap : 16;
    Level *n;
    while (cap <= (size_t)d) {
      if (cap > ((size_t)-1) / (2 * sizeof(Level)))
        luaL_error(s->L, "brisk.xml: nesting too deep");
      cap *= 2;
    }
    n = (Level *)counted_realloc(&s->bmem, s->levels, cap * sizeof(Level));
    if (n == NULL) luaL_error(s->L, "brisk.xml: not enough memory");
    s->levels = n;
    s->levelcap = cap;
  }
  s->levels[d].items = 0;
  s->levels[d].kids = 0;
  s->levels[d].built = 0;
}

static void progress(Stream *s, lua_Integer n) {
  s->outstanding -= n;
}

/* ---------------------------------------------------------------------- */
/* hibernation                                                             */
/* ---------------------------------------------------------------------- */

/*
** An idle stream's expat parser is most of its C memory (11-12 KiB), and
** expat never gives back what a large stanza made it grow to. So at a point
** where nothing about the parser matters beyond what its root start tag set
** up, the parser is freed ("hibernation") and rebuilt on the next bytes by
** replaying that start tag's name and namespace declarations (replay_tag)
** into a fresh parser whose only handler counts it: the same namespace
** bindings, and the root element open under the same qualified name (so
** "</stream:stream>" still matches). Everything else a
** stream has lives in the Stream and its user values and is not touched
** (xml:lang, stanza_size, n_outstanding_bytes, the child quota), so nothing
** observable changes. A parser is at such a point when, after a feed:
**
** - its root start tag was parsed, nothing else is open (xdepth == 1, not
**   inside a CDATA section), no error happened and it is not stopped;
** - every byte fed to it was reported through an event: expat holds back a
**   partial token, a trailing CR or "]", a split character, and those would
**   be lost (the end of the last event, from XML_GetCurrentByteIndex and
**   XML_GetCurrentByteCount in every handler, equals the bytes fed);
** - its prolog set up nothing a bare start tag would not: no DOCTYPE (its
**   entities and defaults), no XML declaration naming another version or
**   encoding (stock refuses both, but a raising error callback lets the
**   parse go on), no UTF-16 (the start tag's bytes would hold NULs, which
**   UTF-8 forbids); standalone has no effect without a DTD;
** - and Brisk has no stanza open (a raising handlestanza keeps one open).
**
** The tracking runs in every handler before anything else, also while
** handlers are skipped after a callback error, and only for cur: after
** reset() the old parser finishes its chunk, and its events say nothing
** about the new one.
*/
#define HDR_MAX 4096           /* longer root start tags are never replayed */

/* Brisk's buffers kept after a stanza; larger ones are freed (h_end). */
#define TEXT_KEEP 4096
#define LEVELS_KEEP 64

/*
** A parser holding more than this much (after a big stanza, or many names:
** expat caches every element and attribute name it has seen, and keeps its
** input buffer at the largest chunk it had to hold) is rebuilt at the next
** point where it can be, whether idle or not. After a c2s header a parser
** holds its 12 KiB slab; on the c2s corpus it grows to about 25 KiB when fed
** 1 KiB reads, 29 KiB with 4 KiB reads and 37 KiB with 8 KiB reads, which
** makes it rebuilt about once per 150 KB of such traffic (a rebuild costs
** less than parsing one small stanza).
*/
#define XMEM_KEEP (32 * 1024)

static double monotonic_now(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Record the end of cur's current event. */
static void track_event(Stream *s, XML_Parser p) {
  if (p == s->cur)
    s->event_end = XML_GetCurrentByteIndex(p) + XML_GetCurrentByteCount(p);
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
** Write into out (at least n bytes) the replay tag for the start tag
** t[0..n): "<" its qualified name, its namespace declarations (xmlns and
** xmlns:*) byte for byte, ">". Other attributes set up nothing in expat
** that outlives the tag (only caches of names seen), and leaving them out
** makes waking cheaper. expat has already checked the tag, so a plain scan
** suffices: names end at white space or "=", values at their quote, and
** neither can hold the other's delimiter. Returns the length, or 0 for
** anything unexpected (an empty-element tag, a NUL: UTF-16).
*/
static size_t replay_tag(const char *t, size_t n, char *out) {
  const char *p = t + 1, *end = t + n, *name, *eq, *v;
  size_t o = 0;
  if (n < 3 || t[0] != '<' || t[n - 1] != '>' || t[n - 2] == '/' ||
      memchr(t, 0, n))
    return 0;
  while (p < end && !is_space(*p) && *p != '>') p++;
  memcpy(out, t, (size_t)(p - t));
  o = (size_t)(p - t);
  for (;;) {
    while (p < end && is_space(*p)) p++;
    if (p >= end) return 0;
    if (*p == '>') break;
    name = p;
    while (p < end && !is_space(*p) && *p != '=') p++;
    eq = p;
    while (p < end && is_space(*p)) p++;
    if (p >= end || *p != '=') return 0;
    p++;
    while (p < end && is_space(*p)) p++;
    if (p >= end || (*p != '\'' && *p != '"')) return 0;
    v = p;
    p = memchr(p + 1, *v, (size_t)(end - p - 1));
    if (p == NULL) return 0;
    p++;                                   /* after the closing quote */
    /* expat's own test for a declaration (getAttributeId); keeping more
    ** than needed would be harmless, leaving one out would not */
    if ((eq - name == 5 || (eq - name >= 6 && name[5] == ':')) &&
        memcmp(name, "xmlns", 5) == 0) {
      out[o++] = ' ';
      memcpy(out + o, name, (size_t)(eq - name));
      o += (size_t)(eq - name);
      out[o++] = '=';
      memcpy(out + o, v, (size_t)(p - v));
      o += (size_t)(p - v);
    }
  }
  out[o++] = '>';
  return o;
}

/*
** Keep the replay tag of the root start tag (the current event of p), when
** it can be replayed; without one the stream never hibernates.
*/
static void capture_root(Stream *s, XML_Parser p) {
  int off, size, n = XML_GetCurrentByteCount(p);
  const char *buf;
  char tmp[HDR_MAX];
  size_t len;
  if (s->noreplay || s->hdr || n <= 0 || n > HDR_MAX) return;
  buf = XML_GetInputContext(p, &off, &size);
  if (buf == NULL || off < 0 || size - off < n) return;
  len = replay_tag(buf + off, (size_t)n, tmp);
  if (len == 0) return;
  s->hdr = (char *)counted_realloc(&s->bmem, NULL, len);
  if (s->hdr == NULL) return;
  memcpy(s->hdr, tmp, len);
  s->hdrlen = len;
}

/* Forget everything known about cur (a new parser, nothing fed). */
static void track_reset(Stream *s) {
  counted_free(s->hdr);
  s->hdr = NULL;
  s->hdrlen = 0;
  s->fed = s->event_end = 0;
  s->xdepth = s->in_cdata = s->noreplay = 0;
  s->eligible = s->hibernating = 0;
  s->stuck_error = XML_ERROR_NONE;
}

/* After a feed parsed by cur without error: can cur be rebuilt? */
static void note_feed_end(Stream *s) {
  enum XML_Parsing st;
  XML_ParsingStatus ps;
  XML_GetParsingStatus(s->cur, &ps);
  st = ps.parsing;
  s->eligible = s->hdr != NULL && s->xdepth == 1 && !s->in_cdata &&
                s->event_end == s->fed && st == XML_PARSING &&
                XML_GetErrorCode(s->cur) == XML_ERROR_NONE &&
                s->depth == 0 && s->nchunks == 0 && !s->dead;
  if (s->eligible) s->since = monotonic_now();
}

/* Free cur and the buffers of an eligible stream. */
static void hibernate_stream(Stream *s) {
  region_free(s->cur, s->cur_r);
  s->cur = NULL;
  s->cur_r = NULL;
  counted_free(s->text);
  s->text = NULL;
  s->textcap = s->textlen = 0;
  counted_free(s->levels);
  s->levels = NULL;
  s->levelcap = 0;
  s->hibernating = 1;
}

/*
** A hash salt for a rebuilt parser. expat draws one from the system for
** each new parser (a getrandom() call, a third of the cost of waking);
** rebuilt ones get a different salt each, derived from a secret drawn once
** per module (see brisk_xml_open_parser) by a bijective 64-bit mixer
** (splitmix64's), so they stay unpredictable without a system call.
*/
static unsigned long wake_salt(Module *m) {
  uint64_t z = m->salt_key + ++m->salt_count * 0x9E3779B97F4A7C15u;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  z ^= z >> 31;
  return (unsigned long)(z ? z : 1);   /* 0 would mean "draw one" */
}

/* During the replay: the root start tag, silently (see wake). */
static void XMLCALL h_replay_start(void *ud, const XML_Char *name, const XML_Char **atts) {
  XML_Parser p = (XML_Parser)ud;
  Stream *s = stream_of(p);
  BRISK_UNUSED(name);
  BRISK_UNUSED(atts);
  s->xdepth++;
  s->event_end = XML_GetCurrentByteIndex(p) + XML_GetCurrentByteCount(p);
}

/*
** Rebuild cur from hdr: a fresh parser, the start tag replayed with only a
** counting start handler (expat binds the namespaces whether handlers exist
** or not), then the real handlers. Returns XML_ERROR_NONE, or the error
** that made it fail (out of memory); the stream then stays hibernating.
*/
static enum XML_Error wake(Stream *s) {
  Region *prev = expat_region, *r;
  XML_Parser p = create_parser(s, &r);
  enum XML_Status st;
  if (p == NULL) return XML_ERROR_NO_MEMORY;
  if (s->mod) XML_SetHashSalt(p, wake_salt(s->mod));
  s->cur = p;           /* for the replay handler's bookkeeping */
  s->cur_r = r;
  s->xdepth = 0;
  s->event_end = 0;
  XML_SetStartElementHandler(p, h_replay_start);
  expat_region = r;
  st = XML_Parse(p, s->hdr, (int)s->hdrlen, 0);
  expat_region = prev;
  if (st != XML_STATUS_OK || s->xdepth != 1 ||
      s->event_end != (XML_Index)s->hdrlen) {
    enum XML_Error e = st != XML_STATUS_OK ? XML_GetErrorCode(p)
                                           : XML_ERROR_UNEXPECTED_STATE;
    region_free(p, r);
    s->cur = NULL;
    s->cur_r = NULL;
    return e;
  }
  set_handlers(p);
  s->fed = (XML_Index)s->hdrlen;
  s->in_cdata = 0;
  s->hibernating = 0;
  return XML_ERROR_NONE;
}

/* ---------------------------------------------------------------------- */
/* expat handlers (mirrors of util.xmppstream's xml_handlers)               */
/* ---------------------------------------------------------------------- */

/*
** Push the string str[0..len), for element names, attribute names and
** namespaces: the same few strings over and over. A cache (shared by all
** streams of this Lua state: strings are immutable, and which copy of an
** equal string a table holds cannot be observed) answers most of them with a
** memcmp and one array read, cheaper than hashing and interning the string
** again (Lua does not intern strings longer than 40 bytes at all: each push
** would allocate). It is direct-mapped; the slot comes from the length and
** the first and last bytes (up to 8 of each, which tells apart names like
** "urn:xmpp:...:0" and "...:1"). 2048 slots keep conflict misses rare for
** the few hundred distinct names of real traffic.
*/
/* The first (or, from end, last) min(len, 8) bytes of str as a number. */
static uint64_t head8(const char *str, size_t len) {
  uint64_t v = 0;
  if (len >= 8) {
    memcpy(&v, str, 8);   /* a constant size: one load */
  } else {
    size_t i;
    for (i = 0; i < len; i++) v = (v << 8) | (unsigned char)str[i];
  }
  return v;
}

static uint64_t tail8(const char *str, size_t len) {
  uint64_t v = 0;
  if (len >= 8) memcpy(&v, str + len - 8, 8);
  return v;
}

static void push_name(Stream *s, const char *str, size_t len) {
  lua_State *L = s->L;
  if (len > 0 && len <= NAME_CACHE_MAXLEN) {
    NameCache *c = s->cache;
    uint64_t h = head8(str, len) * 0x9E3779B97F4A7C15u;
    unsigned slot;
    h ^= tail8(str, len) * 0xC2B2AE3D27D4EB4Fu;
    h ^= (uint64_t)len << 32;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9u;
    slot = (unsigned)(h >> 40) & (NAME_CACHE_SIZE - 1);
    if (c->slot[slot].len == len && memcmp(c->slot[slot].str, str, len) == 0) {
      lua_rawgeti(L, SLOT_CACHE(s), (lua_Integer)slot + 1);
      return;
    }
    c->slot[slot].str = lua_pushlstring(L, str, len);
    c->slot[slot].len = len;
    lua_pushvalue(L, -1);
    lua_rawseti(L, SLOT_CACHE(s), (lua_Integer)slot + 1);
    return;
  }
  lua_pushlstring(L, str, len);
}

/* The xml: name of an attribute in the XML namespace, or NULL. */
static const char *xml_attr_name(const char *k, size_t klen) {
  const char *local;
  if (klen <= XML_NS_LEN + 1 || k[XML_NS_LEN] != NS_SEP ||
      memcmp(k, XML_NS, XML_NS_LEN) != 0)
    return NULL;
  local = k + XML_NS_LEN + 1;
  if (strcmp(local, "lang") == 0) return "xml:lang";
  if (strcmp(local, "space") == 0) return "xml:space";
  if (strcmp(local, "base") == 0) return "xml:base";
  if (strcmp(local, "id") == 0) return "xml:id";
  return NULL;
}

/*
** Push the attribute table, built by the very sequence of table writes that
** stock performs, because a table's layout (and so its pairs() order, which
** util.stanza's serializer follows, and where later insertions land) depends
** on its whole history, not only on its contents. LuaExpat 1.5.1 starts from
** an empty table and, for each attribute in expat's order, stores t[i] = name
** for the first XML_GetSpecifiedAttributeCount()/2 of them and then
** t[name] = value; util.xmppstream then sets xmlns (when it does), and for
** i = 1..#t clears t[i] and moves an XML-namespace attribute from its
** expanded name to its xml: name. The removed keys stay behind as empty
** slots, as in stock.
*/
static void push_attrs(Stream *s, XML_Parser p, const XML_Char **atts,
                       lua_Integer nattrs, int has_xml, const char *ns,
                       size_t nslen, int set_xmlns) {
  lua_State *L = s->L;
  const XML_Char **a;
  size_t vlen;
  lua_Integer i = 1, n, lastspec = XML_GetSpecifiedAttributeCount(p) / 2;
  /*
  ** The one shortcut, exact by construction. From the empty table, stock's
  ** writes t[1], k1, t[2], k2 grow it through four resizes to 2 array slots
  ** and 2 nodes, and t[3], k3 through two more to 4 slots and 4 nodes. A
  ** table created at that size and given the same writes ends in the very
  ** same state (array size, node of every key, collision chains, free
  ** pointer), so the reallocations can be skipped: a resize rebuilds the
  ** nodes by reinserting the keys in node order, and up to this point that
  ** order only matters for keys that collide: k1 and k2 sharing a node
  ** among 2 leave the 4-slot resize (which keeps 2 nodes) in node order
  ** k1, k2, insertion order, whichever node they share; if they do not
  ** share one among 2 nodes, they cannot among 4. From 5 keys on the order
  ** does matter (the differential specs catch an (8, 8) start at once), so
  ** later resizes are replayed as they are.
  **
  ** Two more starts skip the resize that stock's xmlns store causes in the
  ** commonest elements (a payload in its own namespace, with no or one
  ** attribute). With no attributes, stock's xmlns store grows the empty
  ** table to 1 node; with one, it grows the full (1, 1) table to 1 array
  ** slot (t[1] is still set) and 2 nodes, reinserting k1 into the fresh
  ** nodes before xmlns. A table created at that size sees the same inserts
  ** into the same fresh nodes in the same order: the same state. (With two
  ** or more keys the reinsert follows node order, which may differ from
  ** insertion order, so those resizes are replayed.)
  */
  /*
  ** Whether stock's positional entries t[1..lastspec] can leave a trace.
  ** They are written, counted by "#attr" and cleared again; when all of
  ** them sit in the array part (lastspec <= 4 with the starts above) and no
  ** resize happens while they are set (every string key finds a free node:
  ** lastspec 1, 2 and 4 without xmlns, lastspec 1 with xmlns in its 2-node
  ** start, lastspec 3 with or without it; no defaulted attributes; no
  ** attribute in the XML namespace, whose renaming inserts keys inside
  ** stock's clearing loop), writing and clearing them only touches array
  ** slots, which end as empty as they started, and a resize, the only
  ** thing that counts them, never sees them. What remains is the effect of
  ** "#attr" on the array's size hint: none for lastspec 1, 2 and 4 (the
  ** array is full, the hint stays the size), and for 3 of 4 slots the hint
  ** drops to 3, which is reproduced below by setting t[3] alone around the
  ** length. Otherwise the entries are replayed as stock writes them.
  */
  int positional = has_xml || nattrs != lastspec || lastspec > 4 ||
                   (set_xmlns && lastspec != 1 && lastspec != 3);
  if (set_xmlns && nattrs == lastspec && lastspec <= 1)
    lua_createtable(L, (int)lastspec, (int)lastspec + 1);
  else if (lastspec >= 3) lua_createtable(L, 4, 4);
  else if (lastspec == 2) lua_createtable(L, 2, 2);
  else if (lastspec == 1) lua_createtable(L, 1, 1);
  else lua_createtable(L, 0, 0);
  for (a = atts; *a; a += 2) {
    push_name(s, a[0], strlen(a[0]));
    if (positional && i <= lastspec) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, -3, i++);
    }
    /* short values ("chat", "get", "result", ...) repeat too; longer ones
    ** (ids, JIDs, text) mostly do not and would only churn the cache */
    vlen = strlen(a[1]);
    if (vlen <= SHORT_VALUE_MAXLEN) push_name(s, a[1], vlen);
    else lua_pushlstring(L, a[1], vlen);
    lua_rawset(L, -3);
  }
  if (set_xmlns) {
    lua_pushvalue(L, KEY_XMLNS(s));
    push_name(s, ns, nslen);
    lua_rawset(L, -3);
  }
  if (!positional) {
    if (lastspec == 3) {
      lua_pushboolean(L, 1);
      lua_rawseti(L, -2, 3);
      lua_rawlen(L, -1);
      lua_pushnil(L);
      lua_rawseti(L, -2, 3);
    }
    return;
  }
  /* Stock's "#attr": keys 1..lastspec are present and lastspec+1 is not, so
  ** it is lastspec, but the length operator may also lower the array-size
  ** hint inside the table, so it is evaluated here too. Specified attributes
  ** come first in atts, so t[i] names atts[2i-2]. */
  n = (lua_Integer)lua_rawlen(L, -1);
  if (n > lastspec) n = lastspec;
  for (i = 1, a = atts; i <= n; i++, a += 2) {
    size_t klen = strlen(a[0]);
    const char *xmlk = xml_attr_name(a[0], klen);
    lua_pushnil(L);
    lua_rawseti(L, -2, i);
    if (xmlk) {
      lua_pushstring(L, xmlk);
      lua_pushlstring(L, a[1], strlen(a[1]));
      lua_rawset(L, -3);
      push_name(s, a[0], klen);
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
  }
}

/*
** Push a new stanza { name = name, attr = <top>, tags = {} } in place of
** attr: the same constructor, field order and metatable as stock's, with
** tags built at the element's end when "deferred" (see finish_tags).
*/
static void make_stanza(Stream *s, const char *name, size_t namelen,
                        int deferred) {
  lua_State *L = s->L;
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, KEY_NAME(s));
  push_name(s, name, namelen);
  lua_rawset(L, -3);
  lua_pushvalue(L, KEY_ATTR(s));
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  /* tags: when deferred, a placeholder for now, replaced by finish_tags
  ** when the element ends (the key is in place, so the stanza's layout is
  ** stock's either way) */
  lua_pushvalue(L, KEY_TAGS(s));
  if (deferred) lua_pushboolean(L, 0);
  else lua_createtable(L, 0, 0);
  lua_rawset(L, -3);
  lua_pushvalue(L, SLOT_MT(s));
  lua_setmetatable(L, -2);
  lua_replace(L, -2); /* over the attr table, which the stanza holds */
}

/*
** Build the tags table of the element on the top, now that it has ended:
** stock appends each child element to it as the child starts (t_insert:
** "#tags", then tags[n + 1] = child), so the table grows through resizes
** at 1, 2, 3, 5, 9, ... children to pow2ceil(k) array slots and no nodes.
** The last resize, at child j0, leaves the array at its final size and its
** size hint at that size; a table created at that size and given children
** 1..j0 is in that very state, and from there the remaining appends are
** replayed as stock does them, "#tags" included (it moves the size hint,
** which "#" on a table with holes answers from). The children are read back
** from the element's entries, which does not touch its state: every read
** key is below the size hint or in the hash part (spec/xml_parse_layout).
**
** This is only done where nobody can look at the element before it ends.
** Normally nobody can: a stanza is handed out complete. But when
** handlestanza raises, stock keeps the stanza open and goes on adding
** children to the stanza the callback has seen, and those children (and
** theirs) are visible while they are built; they get their tags table at
** their start and their children appended as stock appends them.
*/
static void finish_tags(Stream *s, Level *lv) {
  lua_State *L = s->L;
  lua_Integer k = lv->kids, i, m = 0, a = 1, j0;
  lv->built = 1;
  lua_pushvalue(L, KEY_TAGS(s));
  if (k == 0) {
    lua_createtable(L, 0, 0);
    lua_rawset(L, -3);
    return;
  }
  while (a < k) a *= 2;               /* pow2ceil(k) */
  j0 = k <= 2 ? k : a / 2 + 1;        /* the last resize */
  if (a > INT_MAX) luaL_error(L, "brisk.xml: too many children");
  lua_createtable(L, (int)a, 0);
  for (i = 1; i <= lv->items && m < k; i++) {
    if (lua_rawgeti(L, -3, i) == LUA_TTABLE) {
      if (++m > j0) lua_rawlen(L, -2);
      lua_rawseti(L, -2, m);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_rawset(L, -3);
}

static int is_stanza_name(const char *name, size_t len) {
  return (len == 2 && memcmp(name, "iq", 2) == 0) ||
         (len == 8 && memcmp(name, "presence", 8) == 0) ||
         (len == 7 && memcmp(name, "message", 7) == 0);
}

static void XMLCALL h_start(void *ud, const XML_Char *tagname, const XML_Char **atts) {
  XML_Parser p = (XML_Parser)ud;
  Stream *s = stream_of(p);
  lua_State *L = s->L;
  const char *sep, *ns, *name;
  size_t nslen, namelen;
  int set_xmlns = 0, nattrs = 0, has_xml = 0;
  const XML_Char **a;
  if (p == s->cur) {
    track_event(s, p);
    if (s->xdepth++ == 0) capture_root(s, p);
  }
  if (s->failed) return;
  if (s->depth > 0 && s->nchunks > 0) {
    push_current(s);
    flush_text(s);
    lua_pop(L, 1);
  }
  /* "ns\1name", or just "name" for an element in no namespace */
  sep = strchr(tagname, NS_SEP);
  if (sep) {
    ns = tagname; nslen = (size_t)(sep - tagname);
    name = sep + 1; namelen = strlen(name);
  } else {
    ns = ""; nslen = 0;
    name = tagname; namelen = strlen(tagname);
  }
  if (s->default_ns == NULL || nslen != s->default_ns_len ||
      memcmp(ns, s->default_ns, nslen) != 0 || s->non_streamns_depth > 0) {
    set_xmlns = 1;
    s->non_streamns_depth++;
  }
  if (s->depth > 0 && s->has_quota) {
    s->quota -= 1;
    if (s->quota <= 0) {
      if (report(s, "parse-error", "resource-constraint",
                 "Stanza exceeds permitted children"))
        stop_parser(s, p);
      return;
    }
  }
  /* Brisk's own limits: stock has none, its names are reused. */
  for (a = atts; *a; a += 2) {
    nattrs++;
    /* any attribute in the XML namespace (see push_attrs) */
    if (a[0][0] == 'h' && strncmp(a[0], XML_NS, XML_NS_LEN) == 0 &&
        a[0][XML_NS_LEN] == NS_SEP)
      has_xml = 1;
  }
  if (nattrs > s->limits.max_attributes) {
    if (report(s, "parse-error", "resource-constraint", "Too many attributes"))
      stop_parser(s, p);
    return;
  }
  if (s->depth >= s->limits.max_depth) {
    if (report(s, "parse-error", "resource-constraint", "Stanza nesting too deep"))
      stop_parser(s, p);
    return;
  }
  push_attrs(s, p, atts, nattrs, has_xml, ns, nslen, set_xmlns);
  if (s->depth == 0) {
    int notopen;
    s->stanza_size = XML_GetCurrentByteCount(p);
    notopen = session_notopen(s);
    if (notopen < 0) { lua_pop(L, 1); return; }
    if (notopen) {
      if (s->stream_tag && strcmp(tagname, s->stream_tag) == 0) {
        s->non_streamns_depth = 0;
        lua_getfield(L, -1, "xml:lang");
        if (lua_toboolean(L, -1))
          lua_setiuservalue(L, s->ud, UV_LANG);
        else
          lua_pop(L, 1);
        if (s->has_streamopened) {
          progress(s, s->stanza_size);
          s->stanza_size = 0;
          push_uv(s, UV_STREAMOPENED);
          push_uv(s, UV_SESSION);
          lua_pushvalue(L, -3);
          call_protected(s, 2);
        }
        lua_pop(L, 1);
      } else {
        lua_pop(L, 1);
        report(s, "no-stream", tagname, NULL);
      }
      return;
    }
    if (nslen == 13 && memcmp(ns, "jabber:client", 13) == 0 &&
        !is_stanza_name(name, namelen)) {
      if (!report(s, "invalid-top-level-element", NULL, NULL)) {
        lua_pop(L, 1);
        return;
      }
    }
    open_level(s, 1);
    make_stanza(s, name, namelen, 1);
    lua_rawseti(L, SLOT_STACK(s), 1);
    s->depth = 1;
    s->has_quota = s->has_max_elements;
    s->quota = s->max_elements;
  } else {
    Level *lv;
    s->stanza_size += XML_GetCurrentByteCount(p);
    open_level(s, s->depth + 1);
    lv = &s->levels[s->depth];
    /* visible from the start when its parent is (see finish_tags) */
    s->levels[s->depth + 1].built = lv->built;
    make_stanza(s, name, namelen, !lv->built);
    lua_rawgeti(L, SLOT_STACK(s), s->depth);   /* the parent */
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lv->items++;
    if (!lv->built) {
      lv->kids++;                              /* tags: see finish_tags */
      lua_pop(L, 1);
    } else {
      /* the parent's tags table is real (it ended already but was not
      ** closed, or it is visible): append as stock does */
      lua_pushvalue(L, KEY_TAGS(s));
      lua_rawget(L, -2);
      lua_pushvalue(L, -3);
      lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
      lua_pop(L, 2);                           /* tags, parent */
    }
    lua_rawseti(L, SLOT_STACK(s), ++s->depth);
  }
}

static void XMLCALL h_end(void *ud, const XML_Char *tagname) {
  XML_Parser p = (XML_Parser)ud;
  Stream *s = stream_of(p);
  lua_State *L = s->L;
  if (p == s->cur) {
    track_event(s, p);
    s->xdepth--;
  }
  if (s->failed) return;
  s->stanza_size += XML_GetCurrentByteCount(p);
  if (s->non_streamns_depth > 0) s->non_streamns_depth--;
  if (s->depth > 0) {
    push_current(s);
    flush_text(s);
    if (!s->levels[s->depth].built) finish_tags(s, &s->levels[s->depth]);
    if (s->depth == 1) {
      progress(s, s->stanza_size);
      s->stanza_size = 0;
      lua_pushvalue(L, KEY_ATTR(s));
      lua_rawget(L, -2);
      lua_getfield(L, -1, "xml:lang");
      if (lua_isnil(L, -1)) {
        push_uv(s, UV_LANG);
        lua_setfield(L, -3, "xml:lang");
      }
      lua_pop(L, 2);
      if (strcmp(tagname, s->error_tag) != 0) {
        push_uv(s, UV_HANDLESTANZA);
        push_uv(s, UV_SESSION);
        lua_pushvalue(L, -3);
        if (!call_protected(s, 2)) { lua_pop(L, 1); return; }
      } else {
        push_uv(s, UV_ERROR);
        push_uv(s, UV_SESSION);
        lua_pushliteral(L, "stream-error");
        lua_pushvalue(L, -4);
        if (!call_protected(s, 3)) { lua_pop(L, 1); return; }
      }
      lua_pop(L, 1);
      /* stanza = nil: drop the reference so the stanza can be collected */
      lua_pushnil(L);
      lua_rawseti(L, SLOT_STACK(s), 1);
      s->depth = 0;
      /* after a large or deeply nested stanza, give the buffers back */
      if (s->textcap > TEXT_KEEP) {
        counted_free(s->text);
        s->text = NULL;
        s->textcap = 0;
      }
      if (s->levelcap > LEVELS_KEEP) {
        counted_free(s->levels);
        s->levels = NULL;
        s->levelcap = 0;
      }
    } else {
      lua_pop(L, 1);
      lua_pushnil(L);
      lua_rawseti(L, SLOT_STACK(s), s->depth);
      s->depth--;
    }
  } else {
    progress(s, s->stanza_size);
    if (s->has_streamclosed) {
      push_uv(s, UV_STREAMCLOSED);
      push_uv(s, UV_SESSION);
      call_protected(s, 1);
    }
  }
}

static void XMLCALL h_chars(void *ud, const XML_Char *data, int len) {
  XML_Parser p = (XML_Parser)ud;
  Stream *s = stream_of(p);
  track_event(s, p);
  if (s->failed) return;
  if (s->depth > 0) {
    s->stanza_size += XML_GetCurrentByteCount(p);
    add_text(s, data, (size_t)len);
  } else {
    progress(s, XML_GetCurrentByteCount(p));
  }
}

static void cdata_marker(XML_Parser p, int opens) {
  Stream *s = stream_of(p);
  if (p == s->cur) {
    track_event(s, p);
    s->in_cdata = opens;
  }
  if (s->failed) return;
  if (s->depth > 0)
    s->stanza_size += XML_GetCurrentByteCount(p);
  else
    progress(s, XML_GetCurrentByteCount(p));
}

static void XMLCALL h_cdata_start(void *ud) { cdata_marker((XML_Parser)ud, 1); }
static void XMLCALL h_cdata_end(void *ud) { cdata_marker((XML_Parser)ud, 0); }

/* Comments, processing instructions, DOCTYPE: RFC 6120 section 11.1. */
static void restricted(XML_Parser p) {
  Stream *s = stream_of(p);
  if (report(s, "parse-error", "restricted-xml",
             "Restricted XML, see RFC 6120 section 11.1."))
    stop_parser(s, p);
}

static void XMLCALL h_comment(void *ud, const XML_Char *data) {
  XML_Parser p = (XML_Parser)ud;
  BRISK_UNUSED(data);
  track_event(stream_of(p), p);
  if (stream_of(p)->failed) return;
  restricted(p);
}

static void XMLCALL h_pi(void *ud, const XML_Char *target, const XML_Char *data) {
  XML_Parser p = (XML_Parser)ud;
  BRISK_UNUSED(target);
  BRISK_UNUSED(data);
  track_event(stream_of(p), p);
  if (stream_of(p)->failed) return;
  restricted(p);
}

static void XMLCALL h_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                              const XML_Char *pubid, int has_internal_subset) {
  XML_Parser p = (XML_Parser)ud;
  BRISK_UNUSED(name);
  BRISK_UNUSED(sysid);
  BRISK_UNUSED(pubid);
  BRISK_UNUSED(has_internal_subset);
  track_event(stream_of(p), p);
  if (p == stream_of(p)->cur) stream_of(p)->noreplay = 1;
  if (stream_of(p)->failed) return;
  restricted(p);
}

static int ascii_ieq(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    unsigned char x = (unsigned char)*a, y = (unsigned char)*b;
    if (x >= 'A' && x <= 'Z') x = (unsigned char)(x - 'A' + 'a');
    if (x != y) return 0;
  }
  return *a == *b;
}

/*
** Stock rejects a declaration whose encoding is not UTF-8 or whose version is
** not 1.0. It also tests standalone == "no", but LuaExpat passes standalone
** as a boolean, so that test never fires; neither does it here.
*/
static void XMLCALL h_xmldecl(void *ud, const XML_Char *version,
                              const XML_Char *encoding, int standalone) {
  XML_Parser p = (XML_Parser)ud;
  Stream *s = stream_of(p);
  int odd = (encoding && !ascii_ieq(encoding, "utf-8")) ||
            (version && strcmp(version, "1.0") != 0);
  BRISK_UNUSED(standalone);
  track_event(s, p);
  if (odd && p == s->cur) s->noreplay = 1;
  if (s->failed) return;
  progress(s, XML_GetCurrentByteCount(p));
  if (odd) restricted(p);
}

/* ---------------------------------------------------------------------- */
/* the stream object                                                       */
/* ---------------------------------------------------------------------- */

static Stream *check_stream(lua_State *L, int idx) {
  return (Stream *)luaL_checkudata(L, idx, STREAM_TYPE);
}

/*
** Forget the stanza being built (stock's meta.reset()). The stack table is
** emptied in place: a parse running in this stream holds it in a slot.
*/
static void clear_state(lua_State *L, Stream *s, int ud) {
  lua_Integer i, n;
  lua_getiuservalue(L, ud, UV_STACK);
  n = (lua_Integer)lua_rawlen(L, -1);
  if (n < s->depth) n = s->depth;
  for (i = 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, -2, i);
  }
  lua_pop(L, 1);
  s->depth = 0;
  s->textlen = 0;
  s->nchunks = 0;
  s->stanza_size = 0;
}

static void unlink_stream(Stream *s) {
  if (s->mod == NULL) return;
  if (s->prev) s->prev->next = s->next;
  else s->mod->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  s->mod = NULL;
}

static int stream_gc(lua_State *L) {
  Stream *s = check_stream(L, 1);
  if (s->active && s->active != s->cur) region_free(s->active, s->active_r);
  region_free(s->cur, s->cur_r);
  s->cur = s->active = NULL;
  s->cur_r = s->active_r = NULL;
  counted_free(s->text);
  s->text = NULL;
  counted_free(s->levels);
  s->levels = NULL;
  s->levelcap = 0;
  s->textcap = s->textlen = 0;
  counted_free(s->hdr);
  s->hdr = NULL;
  s->hibernating = 0;
  unlink_stream(s);
  return 0;
}

/*
** The body of feed(), run protected by l_feed: parse data (NULL: finish) with
** parser p. Returns XML_Parse's status as an integer.
*/
static int parse_protected(lua_State *L) {
  Stream *s = (Stream *)lua_touserdata(L, 1);
  XML_Parser p = (XML_Parser)lua_touserdata(L, 2);
  /* The bytes stay owned by the caller's frame (feed's argument). */
  const char *data = (const char *)lua_touserdata(L, 3);
  int len = (int)lua_tointeger(L, 4);
  enum XML_Status st;
  luaL_checkstack(L, 40, "brisk.xml");
  lua_settop(L, 3);   /* slot 3 (the length) is not needed any more */
  lua_getiuservalue(L, 1, UV_STACK);
  lua_getiuservalue(L, 1, UV_STANZA_MT);
  lua_pushliteral(L, "name");
  lua_pushliteral(L, "attr");
  lua_pushliteral(L, "tags");
  lua_pushliteral(L, "xmlns");
  lua_getiuservalue(L, 1, UV_CACHE);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  s->base = 4;
  s->L = L;
  s->ud = 1;
  s->failed = 0;
  st = XML_Parse(p, data, len, data == NULL);
  lua_pushinteger(L, (lua_Integer)st);
  return 1;
}

/* Free the parser a feed worked on if reset() replaced it meanwhile. */
static void release_active(Stream *s) {
  if (s->active && s->active != s->cur)
    region_free(s->active, s->active_r);
  s->active = NULL;
  s->active_r = NULL;
}

/*
** Run one XML_Parse on p with the handlers protected. Returns 1 on success,
** 0 when XML_Parse reported an error; raises when a callback raised (the
** callback's own error value) or an internal error escaped from a handler
** (the stream is then unusable until reset()).
*/
static int run_parse(lua_State *L, int ud, Stream *s, XML_Parser p,
                     const char *data, size_t len) {
  int status, failed;
  Region *prev = expat_region;
  lua_pushcfunction(L, parse_protected);
  lua_pushvalue(L, ud);
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)len);
  /* p is cur, or the parser a reset() during the last parse replaced */
  if (p == s->cur) s->active_r = s->cur_r;
  s->active = p;
  /* p's allocations come from its Region, also when an error unwinds out
  ** of the parse (restored here, not in parse_protected) */
  expat_region = s->active_r;
  status = lua_pcall(L, 4, 1, 0);
  expat_region = prev;
  failed = s->failed;
  s->failed = 0;
  s->L = NULL;
  if (status != LUA_OK) {
    /* Not a callback error: a memory error inside a handler, unwound out of
    ** expat. That parser's state cannot be trusted any more. */
    if (s->active == s->cur) s->dead = 1;
    release_active(s);
    return lua_error(L);
  }
  status = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (failed) {
    lua_getiuservalue(L, ud, UV_PENDING);
    lua_pushnil(L);
    lua_setiuservalue(L, ud, UV_PENDING);
    return -1; /* the caller raises the value on the top */
  }
  return status == XML_STATUS_OK;
}

static int feed_fail(lua_State *L, Stream *s) {
  release_active(s);
  return lua_error(L);
}

/*
** At the end of a feed that left the stream eligible: hibernate at once in
** eager mode, or when the parser has grown large (see XMEM_KEEP).
*/
static void settle(Stream *s) {
  if (s->eligible && !s->hibernating && s->cur_r &&
      (s->limits.hibernate_eagerly || s->cur_r->acct.bytes > XMEM_KEEP))
    hibernate_stream(s);
}

/* stream:feed(data) — stock's feed, including what happens after reset(). */
static int l_feed(lua_State *L) {
  Stream *s = check_stream(L, lua_upvalueindex(1));
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  XML_Parser p;
  int ok, ud, r;
  if (s->active)
    return luaL_error(L, "brisk.xml: feed() called from inside a stream callback");
  /* expat takes an int length (LuaExpat casts; we refuse instead) */
  if (len > INT_MAX)
    return luaL_error(L, "brisk.xml: chunk too large");
  lua_pushvalue(L, lua_upvalueindex(1));
  ud = lua_gettop(L);
  s->outstanding += (lua_Integer)len;
  if (s->dead || (s->cur == NULL && !s->hibernating)) {
    lua_pushnil(L);
    lua_pushliteral(L, "brisk.xml: stream unusable after an internal error");
    return 2;
  }
  if (s->hibernating && len > 0 && s->stuck_error == XML_ERROR_NONE)
    s->stuck_error = wake(s);
  if (s->hibernating || s->stuck_error != XML_ERROR_NONE) {
    /*
    ** No parse. Either still hibernating, with an empty feed (for expat a
    ** no-op that succeeds), or the parser ran out of memory, waking or in
    ** expat itself: every feed then fails the same way until reset().
    ** expat's errors are final anyway, but not always this one: expat 2.5
    ** fails a parse whose start (binding the xml prefix) runs out of memory
    ** and then crashes in the next one, so it is not given a next one.
    */
    p = NULL;
    ok = s->stuck_error == XML_ERROR_NONE;
  } else {
    p = s->cur;
    s->eligible = 0;
    s->fed += (XML_Index)len;
    ok = run_parse(L, ud, s, p, data, len);
    if (ok < 0) return feed_fail(L, s);
    if (ok && p == s->cur) note_feed_end(s);
    else if (!ok && p == s->cur && XML_GetErrorCode(p) == XML_ERROR_NO_MEMORY)
      s->stuck_error = XML_ERROR_NO_MEMORY;
  }
  /* LuaExpat returns its parser object on success; we return ours. */
  if (ok) {
    lua_pushvalue(L, ud);
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, XML_ErrorString(p ? XML_GetErrorCode(p)
                                        : (enum XML_Error)s->stuck_error));
  }
  /* n_outstanding_bytes > stanza_size_limit, compared the way Lua does
  ** (a limit that is not a number raises Lua's comparison error). */
  lua_pushinteger(L, s->outstanding);
  lua_getiuservalue(L, ud, UV_LIMIT);
  if (lua_compare(L, -1, -2, LUA_OPLT)) {
    release_active(s);
    settle(s);
    lua_pushnil(L);
    lua_pushliteral(L, "stanza-too-large");
    return 2;
  }
  lua_pop(L, 2);
  if (p && s->cur != p) {
    /* reset() during this parse: finish the old parser, as stock does. */
    r = run_parse(L, ud, s, p, NULL, 0);
    if (r < 0) return feed_fail(L, s);
  }
  release_active(s);
  settle(s);
  return 2;
}

/* stream:reset() — a new parser for a restarted stream. */
static int l_reset(lua_State *L) {
  Stream *s = check_stream(L, lua_upvalueindex(1));
  Region *r;
  XML_Parser p = create_parser(s, &r);
  if (p == NULL) return luaL_error(L, "XML_ParserCreate failed");
  set_handlers(p);
  /* The parser a running feed() works on (with its Region in active_r) is
  ** freed by that feed. A hibernating stream has none; its replay copy goes
  ** too. */
  if (s->cur && s->cur != s->active) region_free(s->cur, s->cur_r);
  s->cur = p;
  s->cur_r = r;
  track_reset(s);
  s->dead = 0;
  s->outstanding = 0;
  clear_state(L, s, lua_upvalueindex(1));
  return 0;
}

static int l_set_session(lua_State *L) {
  check_stream(L, lua_upvalueindex(1));
  lua_settop(L, 2);
  lua_setiuservalue(L, lua_upvalueindex(1), UV_SESSION);
  return 0;
}

/* Read an optional max_elements: nil/false for none, else a number. */
static void set_max_elements(lua_State *L, Stream *s, int idx) {
  if (!lua_toboolean(L, idx)) {
    s->has_max_elements = 0;
    return;
  }
  if (!lua_isnumber(L, idx))
    luaL_error(L, "brisk.xml: max_elements must be a number");
  s->has_max_elements = 1;
  s->max_elements = lua_tonumber(L, idx);
}

static int l_set_stanza_size_limit(lua_State *L) {
  Stream *s = check_stream(L, lua_upvalueindex(1));
  lua_settop(L, 3);
  if (s->limits.child_quota) set_max_elements(L, s, 3);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, lua_upvalueindex(1), UV_LIMIT);
  return 0;
}

/*
** session:open_stream(from, to): sends the stream header exactly as stock's
** does (same attribute table construction, so the same attribute order).
** Upvalues: stream_callbacks, util.stanza.
*/
static int l_open_stream(lua_State *L) {
  lua_settop(L, 3);
  lua_getfield(L, 1, "sends2s");                    /* 4: send */
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, 1, "send");
  }
  lua_createtable(L, 0, 7);                         /* 5: attr */
  lua_pushliteral(L, "http://etherx.jabber.org/streams");
  lua_setfield(L, 5, "xmlns:stream");
  lua_pushliteral(L, "en");
  lua_setfield(L, 5, "xml:lang");
  lua_getfield(L, lua_upvalueindex(1), "default_ns");
  lua_setfield(L, 5, "xmlns");
  lua_getfield(L, 1, "version");
  if (lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_pushinteger(L, 0);
    lua_getfield(L, 1, "version");
    if (lua_compare(L, -2, -1, LUA_OPLT)) {
      lua_pop(L, 2);
      lua_pushliteral(L, "1.0");
    } else {
      lua_pop(L, 2);
      lua_pushnil(L);
    }
  }
  lua_setfield(L, 5, "version");
  lua_getfield(L, 1, "streamid");
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "");
  }
  lua_setfield(L, 5, "id");
  if (lua_toboolean(L, 2)) lua_pushvalue(L, 2);
  else lua_getfield(L, 1, "host");
  lua_setfield(L, 5, "from");
  lua_pushvalue(L, 3);
  lua_setfield(L, 5, "to");
  lua_getfield(L, 1, "stream_attrs");
  if (lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, 1, "stream_attrs");
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 5);
    lua_call(L, 4, 0);
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 4);
  lua_pushliteral(L, "<?xml version='1.0'?>");
  lua_getfield(L, lua_upvalueindex(2), "stanza");
  lua_pushliteral(L, "stream:stream");
  lua_pushvalue(L, 5);
  lua_call(L, 2, 1);
  lua_getfield(L, -1, "top_tag");
  lua_insert(L, -2);
  lua_call(L, 1, 1);
  lua_concat(L, 2);
  lua_call(L, 1, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/*
** Push field k of stream_callbacks (index 2), or def when it is nil or
** false (stock's "x or default"), and return it as a string; the value
** stays on the stack to keep it alive.
*/
static const char *opt_string(lua_State *L, const char *k, const char *def) {
  lua_getfield(L, 2, k);
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_pushstring(L, def);
  }
  if (!lua_isstring(L, -1))
    luaL_error(L, "brisk.xml: stream_callbacks.%s must be a string", k);
  return lua_tostring(L, -1);
}

/*
** Keep a copy of string value on the top in the strings table at index t
** and return its stable pointer (the table keeps it alive).
*/
static const char *keep_string(lua_State *L, int t, int slot) {
  const char *v = lua_tostring(L, -1);
  lua_rawseti(L, t, slot);
  return v;
}

/*
** Upvalue 1: the Module userdata. Upvalue 2: stock util.xmppstream.new or
** nil. Upvalue 3: the string cache (a NameCache userdata).
*/
static int l_new(lua_State *L) {
  Module *m = (Module *)lua_touserdata(L, lua_upvalueindex(1));
  Stream *s;
  int ud, strs;
  const char *stream_ns, *stream_tag, *error_tag;
  lua_settop(L, 4);
  luaL_checktype(L, 2, LUA_TTABLE);
  /*
  ** Without an error callback stock raises "XML stream error" with the
  ** position of its own Lua source; without handlestanza it raises from a
  ** nil call. Brisk cannot reproduce those messages, so such streams use
  ** stock (Prosody's own servers always pass both).
  */
  lua_getfield(L, 2, "error");
  lua_getfield(L, 2, "handlestanza");
  if (!lua_toboolean(L, -1) || !lua_toboolean(L, -2)) {
    lua_pop(L, 2);
    if (lua_isnil(L, lua_upvalueindex(2)))
      return luaL_error(L, "brisk.xml: stream needs error and handlestanza callbacks");
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L);
  }
  lua_pop(L, 2);
  s = (Stream *)lua_newuserdatauv(L, sizeof(Stream), UV_COUNT);
  memset(s, 0, sizeof *s);
  ud = lua_gettop(L);
  luaL_setmetatable(L, STREAM_TYPE);
  s->limits = m->limits;
  s->bmem.mod = m;
  lua_newtable(L);
  strs = lua_gettop(L);
  lua_pushvalue(L, strs);
  lua_setiuservalue(L, ud, UV_STRINGS);

  /* Callback options, read once as stock's new_sax_handlers does. */
  stream_ns = opt_string(L, "stream_ns", "http://etherx.jabber.org/streams");
  stream_tag = opt_string(L, "stream_tag", "stream");
  error_tag = opt_string(L, "error_tag", "error");
  if (stream_ns[0] != '\0') {
    lua_pushfstring(L, "%s\1%s", stream_ns, stream_tag);
    s->stream_tag = keep_string(L, strs, 1);
  } else {
    lua_pushstring(L, stream_tag);
    s->stream_tag = keep_string(L, strs, 1);
  }
  lua_pushfstring(L, "%s\1%s", stream_ns, error_tag);
  s->error_tag = keep_string(L, strs, 2);
  lua_pop(L, 3); /* stream_ns, stream_tag, error_tag */
  lua_getfield(L, 2, "default_ns");
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    s->default_ns = lua_tolstring(L, -1, &n);
    s->default_ns_len = n;
    lua_rawseti(L, strs, 3);
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, 2, "streamopened");
  s->has_streamopened = lua_toboolean(L, -1);
  lua_setiuservalue(L, ud, UV_STREAMOPENED);
  lua_getfield(L, 2, "streamclosed");
  s->has_streamclosed = lua_toboolean(L, -1);
  lua_setiuservalue(L, ud, UV_STREAMCLOSED);
  lua_getfield(L, 2, "error");
  lua_setiuservalue(L, ud, UV_ERROR);
  lua_getfield(L, 2, "handlestanza");
  lua_setiuservalue(L, ud, UV_HANDLESTANZA);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, ud, UV_SESSION);
  lua_pushliteral(L, "en");
  lua_setiuservalue(L, ud, UV_LANG);
  if (lua_toboolean(L, 3)) lua_pushvalue(L, 3);
  else lua_pushinteger(L, DEFAULT_STANZA_SIZE_LIMIT);
  lua_setiuservalue(L, ud, UV_LIMIT);

  if (!brisk_require_prosody(L, "util.stanza"))
    return luaL_error(L, "brisk.xml: cannot load util.stanza");
  lua_getfield(L, -1, "stanza_mt");
  if (!lua_istable(L, -1))
    return luaL_error(L, "brisk.xml: util.stanza has no stanza_mt");
  lua_setiuservalue(L, ud, UV_STANZA_MT);
  lua_newtable(L);
  lua_setiuservalue(L, ud, UV_STACK);
  s->cache = (NameCache *)lua_touserdata(L, lua_upvalueindex(3));
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_setiuservalue(L, ud, UV_CACHE);

  /* stock's ex.max_elements only reaches LuaExpat, which ignores it */
  s->cur = create_parser(s, &s->cur_r);
  if (s->cur == NULL) return luaL_error(L, "XML_ParserCreate failed");
  set_handlers(s->cur);
  /* in the module's list from now until __gc */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setiuservalue(L, ud, UV_MODULE);
  s->mod = m;
  s->next = m->streams;
  if (s->next) s->next->prev = s;
  m->streams = s;

  /* session.open_stream = function (session, from, to) ... end */
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2); /* util.stanza */
  lua_pushcclosure(L, l_open_stream, 2);
  lua_setfield(L, 1, "open_stream");

  lua_createtable(L, 0, 4);
  lua_pushvalue(L, ud);
  lua_pushcclosure(L, l_reset, 1);
  lua_setfield(L, -2, "reset");
  lua_pushvalue(L, ud);
  lua_pushcclosure(L, l_feed, 1);
  lua_setfield(L, -2, "feed");
  lua_pushvalue(L, ud);
  lua_pushcclosure(L, l_set_session, 1);
  lua_setfield(L, -2, "set_session");
  lua_pushvalue(L, ud);
  lua_pushcclosure(L, l_set_stanza_size_limit, 1);
  lua_setfield(L, -2, "set_stanza_size_limit");
  return 1;
}

/*
** set_limits{ max_depth = n, max_attributes = n }: Brisk's hostile-input
** limits for streams created afterwards. Returns the previous values.
*/
static int l_set_limits(lua_State *L) {
  Limits *lim = &((Module *)lua_touserdata(L, lua_upvalueindex(1)))->limits;
  Limits old = *lim;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "max_depth");
    if (!lua_isnil(L, -1)) {
      lua_Integer v = luaL_checkinteger(L, -1);
      luaL_argcheck(L, v >= 1, 1, "max_depth must be at least 1");
      lim->max_depth = v;
    }
    lua_getfield(L, 1, "max_attributes");
    if (!lua_isnil(L, -1)) {
      lua_Integer v = luaL_checkinteger(L, -1);
      luaL_argcheck(L, v >= 0, 1, "max_attributes must not be negative");
      lim->max_attributes = v;
    }
    lua_getfield(L, 1, "hibernate_eagerly");
    if (!lua_isnil(L, -1)) {
      luaL_argcheck(L, lua_isboolean(L, -1), 1, "hibernate_eagerly must be a boolean");
      lim->hibernate_eagerly = lua_toboolean(L, -1);
    }
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, old.max_depth);
  lua_setfield(L, -2, "max_depth");
  lua_pushinteger(L, old.max_attributes);
  lua_setfield(L, -2, "max_attributes");
  lua_pushboolean(L, old.hibernate_eagerly);
  lua_setfield(L, -2, "hibernate_eagerly");
  return 1;
}

/*
** hibernate([idle_seconds]): hibernate every stream that has been eligible
** (see "hibernation") for at least idle_seconds (default 0: all eligible
** ones). Streams inside a feed are left alone. Returns how many it
** hibernated now, how many are hibernating, and how many streams there are.
*/
static int l_hibernate(lua_State *L) {
  Module *m = (Module *)lua_touserdata(L, lua_upvalueindex(1));
  lua_Number idle = luaL_optnumber(L, 1, 0);
  lua_Integer now_done = 0, hibernating = 0, n = 0;
  double now;
  Stream *s;
  luaL_argcheck(L, idle >= 0, 1, "idle seconds must not be negative");
  now = monotonic_now();
  for (s = m->streams; s; s = s->next) {
    n++;
    if (!s->hibernating && s->eligible && s->active == NULL &&
        now - s->since >= idle) {
      hibernate_stream(s);
      now_done++;
    }
    if (s->hibernating) hibernating++;
  }
  lua_pushinteger(L, now_done);
  lua_pushinteger(L, hibernating);
  lua_pushinteger(L, n);
  return 3;
}

/* What a stream's parsers hold (with the Regions themselves). */
static size_t expat_bytes(const Stream *s) {
  size_t n = s->cur_r ? s->cur_r->acct.bytes : 0;
  if (s->active && s->active != s->cur && s->active_r) n += s->active_r->acct.bytes;
  return n;
}

/* The Stream behind a stream object (its feed closure's upvalue), or NULL. */
static Stream *stream_of_object(lua_State *L, int idx) {
  Stream *s = NULL;
  if (lua_type(L, idx) != LUA_TTABLE) return NULL;
  lua_getfield(L, idx, "feed");
  if (lua_tocfunction(L, -1) == l_feed && lua_getupvalue(L, -1, 1)) {
    s = (Stream *)luaL_testudata(L, -1, STREAM_TYPE);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return s;
}

/*
** memory([stream]): C memory held by the module's streams, counted by the
** allocator (expat's parsers and Brisk's buffers, allocation headers
** included; not the Stream structs, which are Lua userdata):
** { streams =, hibernating =, bytes =, expat =, buffers = }. With a stream
** object, the same for that stream ({ hibernating = boolean, ... }).
*/
static int l_memory(lua_State *L) {
  Module *m = (Module *)lua_touserdata(L, lua_upvalueindex(1));
  size_t xb = 0, bb = 0;
  lua_Integer n = 0, hib = 0;
  Stream *s;
  if (!lua_isnoneornil(L, 1)) {
    s = stream_of_object(L, 1);
    luaL_argcheck(L, s != NULL, 1, "brisk.xml stream expected");
    lua_createtable(L, 0, 4);
    lua_pushboolean(L, s->hibernating);
    lua_setfield(L, -2, "hibernating");
    xb = expat_bytes(s);
    bb = s->bmem.bytes;
  } else {
    for (s = m->streams; s; s = s->next) {
      n++;
      hib += s->hibernating;
      xb += expat_bytes(s);
      bb += s->bmem.bytes;
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "streams");
    lua_pushinteger(L, hib);
    lua_setfield(L, -2, "hibernating");
  }
  lua_pushinteger(L, (lua_Integer)(xb + bb));
  lua_setfield(L, -2, "bytes");
  lua_pushinteger(L, (lua_Integer)xb);
  lua_setfield(L, -2, "expat");
  lua_pushinteger(L, (lua_Integer)bb);
  lua_setfield(L, -2, "buffers");
  return 1;
}

/*
** TEST ONLY, reachable only as debug.getregistry()["brisk.xml.fail_alloc"]
** (not part of the module's API): fail_alloc(n) makes the n-th counted
** allocation from now fail (0: none), to test out-of-memory paths such as
** waking. Returns how many were still to go.
*/
static int l_fail_alloc(lua_State *L) {
  Module *m = (Module *)lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer n = luaL_checkinteger(L, 1), old = m->fail_countdown;
  luaL_argcheck(L, n >= 0, 1, "must not be negative");
  m->fail_countdown = n;
  lua_pushinteger(L, old);
  return 1;
}

/*
** _expat_noop_parse(bytes) — TEST/BENCHMARK ONLY: parse bytes (a string or
** a list of chunks) with the same
** namespace-aware expat configuration and empty handlers, building nothing.
** Its rate is the ceiling for the parser (bench/xml_parse.lua).
*/
static void XMLCALL noop_start(void *u, const XML_Char *n, const XML_Char **a) {
  BRISK_UNUSED(u); BRISK_UNUSED(n); BRISK_UNUSED(a);
}
static void XMLCALL noop_end(void *u, const XML_Char *n) {
  BRISK_UNUSED(u); BRISK_UNUSED(n);
}
static void XMLCALL noop_chars(void *u, const XML_Char *s, int len) {
  BRISK_UNUSED(u); BRISK_UNUSED(s); BRISK_UNUSED(len);
}

/* Owns the no-op parser, so that a Lua error (a bad chunk) cannot leak it. */
static int noop_gc(lua_State *L) {
  XML_Parser *pp = (XML_Parser *)lua_touserdata(L, 1);
  if (*pp) XML_ParserFree(*pp);
  *pp = NULL;
  return 0;
}

/* bytes: a string, or a list of strings fed one XML_Parse call each. */
static int l_expat_noop_parse(lua_State *L) {
  XML_Parser *pp;
  enum XML_Status st = XML_STATUS_OK;
  lua_Integer i, n;
  if (lua_type(L, 1) != LUA_TTABLE) luaL_checkstring(L, 1);
  pp = (XML_Parser *)lua_newuserdatauv(L, sizeof(XML_Parser), 0);
  *pp = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, noop_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  *pp = XML_ParserCreateNS(NULL, NS_SEP);
  if (*pp == NULL) return luaL_error(L, "XML_ParserCreate failed");
  XML_SetElementHandler(*pp, noop_start, noop_end);
  XML_SetCharacterDataHandler(*pp, noop_chars);
  n = lua_istable(L, 1) ? (lua_Integer)lua_rawlen(L, 1) : 1;
  for (i = 1; i <= n && st == XML_STATUS_OK; i++) {
    size_t len;
    const char *data;
    if (lua_istable(L, 1)) {
      lua_rawgeti(L, 1, i);
      data = luaL_checklstring(L, -1, &len);
    } else {
      data = lua_tolstring(L, 1, &len);
    }
    st = XML_Parse(*pp, data, (int)len, 0);
    if (lua_istable(L, 1)) lua_pop(L, 1);
  }
  if (st == XML_STATUS_OK) {
    lua_pushboolean(L, 1);
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, XML_ErrorString(XML_GetErrorCode(*pp)));
  }
  XML_ParserFree(*pp);
  *pp = NULL;
  return 2;
}

/*
** The module's secret for wake_salt, from the system's random source; if
** that cannot be read, from the clock and addresses (expat's own fallback
** uses the same kind of sources).
*/
static uint64_t secret_key(const void *addr) {
  uint64_t k = 0;
  FILE *f = fopen("/dev/urandom", "rb");
  if (f) {
    if (fread(&k, sizeof k, 1, f) != 1) k = 0;
    fclose(f);
  }
  if (k == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    k = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^
        (uint64_t)(uintptr_t)addr ^ ((uint64_t)(uintptr_t)&k << 17);
  }
  return k;
}

static const luaL_Reg stream_meta[] = {
  {"__gc", stream_gc},
  {NULL, NULL}
};


void brisk_xml_open_parser(lua_State *L, int mod) {
  Module *m;
  Limits *lim;
  luaL_newmetatable(L, STREAM_TYPE);
  luaL_setfuncs(L, stream_meta, 0);
  /* feed() hands the stream out (as LuaExpat hands out its parser): keep
  ** its __gc out of reach. */
  lua_pushliteral(L, "brisk.xml.stream");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);

  lua_pushliteral(L, "\1");
  lua_setfield(L, mod, "ns_separator");
  lua_pushliteral(L, "^([^\1]*)\1?(.*)$");
  lua_setfield(L, mod, "ns_pattern");

  m = (Module *)lua_newuserdatauv(L, sizeof(Module), 0);
  memset(m, 0, sizeof *m);
  m->salt_key = secret_key(m);
  lim = &m->limits;
  lim->max_depth = DEFAULT_MAX_DEPTH;
  lim->max_attributes = DEFAULT_MAX_ATTRIBUTES;
  lim->child_quota = 1;
  /*
  ** Stock's new, captured now, before install() can replace it: the
  ** fallback for streams Brisk does not serve. new_sax_handlers is stock's.
  */
  if (brisk_require_prosody(L, "util.xmppstream")) {
    lua_getfield(L, -1, "new_sax_handlers");
    /* Which stock this is: 0.12's handlers come with set_max_elements. */
    lua_pushvalue(L, -1);
    lua_newtable(L);
    lua_newtable(L);
    if (lua_pcall(L, 2, 2, 0) == LUA_OK) {
      if (lua_istable(L, -1)) {
        lim->child_quota = lua_getfield(L, -1, "set_max_elements") != LUA_TNIL;
        lua_pop(L, 1);
      }
      lua_pop(L, 2);
    } else {
      lua_pop(L, 1);
    }
    lua_setfield(L, mod, "new_sax_handlers");
    lua_getfield(L, -1, "new");
    lua_remove(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "brisk.xml.stock_new");
  }
  /* stack: lim, stock new (or nil) */
  lua_pushvalue(L, -2);
  lua_pushvalue(L, -2);
  /* the string cache: zeroed slots (length 0 never matches a lookup) and
  ** the table holding their strings */
  memset(lua_newuserdatauv(L, sizeof(NameCache), 1), 0, sizeof(NameCache));
  lua_createtable(L, NAME_CACHE_SIZE, 0);
  lua_setiuservalue(L, -2, 1);
  lua_pushcclosure(L, l_new, 3);
  lua_setfield(L, mod, "new");
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_set_limits, 1);
  lua_setfield(L, mod, "set_limits");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_hibernate, 1);
  lua_setfield(L, mod, "hibernate");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_memory, 1);
  lua_setfield(L, mod, "memory");
  lua_pushcclosure(L, l_fail_alloc, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "brisk.xml.fail_alloc");
  lua_pushcfunction(L, l_expat_noop_parse);
  lua_setfield(L, mod, "_expat_noop_parse");
}

/* ---------------------------------------------------------------------- */
/* install                                                                 */
/* ---------------------------------------------------------------------- */

/*
** Undo closure of brisk_xml_install_parser. Upvalue 1: a list of
** { module_table, previous_new, brisk_new } records. Restores them in
** reverse order, once, and only where "new" still is Brisk's (a later patch
** by someone else is left alone).
*/
static int l_uninstall_parser(lua_State *L) {
  lua_Integer i;
  if (lua_isnil(L, lua_upvalueindex(1))) return 0;
  for (i = (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)); i >= 1; i--) {
    lua_rawgeti(L, lua_upvalueindex(1), i);
    lua_rawgeti(L, -1, 1);
    lua_getfield(L, -1, "new");
    lua_rawgeti(L, -3, 3);
    if (lua_rawequal(L, -1, -2)) {
      lua_rawgeti(L, -4, 2);
      lua_setfield(L, -4, "new");
    }
    lua_pop(L, 4);
  }
  lua_pushnil(L);
  lua_replace(L, lua_upvalueindex(1));
  return 0;
}

/*
** Patch util.xmppstream's "new" (under both of its names when loaded; the
** module is loaded first if neither is) with brisk.xml.new, whose module
** table is at index mod. Pushes the undo function and returns how many
** module tables were patched.
*/
int brisk_xml_install_parser(lua_State *L, int mod) {
  static const char *const names[] = {"util.xmppstream", "prosody.util.xmppstream"};
  int i, n = 0, list, loaded;
  mod = lua_absindex(L, mod);
  lua_newtable(L);
  list = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  loaded = lua_gettop(L);
  lua_getfield(L, loaded, names[0]);
  lua_getfield(L, loaded, names[1]);
  if (!lua_istable(L, -1) && !lua_istable(L, -2)) {
    lua_pop(L, 2);
    if (!brisk_require_prosody(L, "util.xmppstream"))
      return luaL_error(L, "brisk.xml: cannot load util.xmppstream");
    lua_pop(L, 1);
  } else {
    lua_pop(L, 2);
  }
  for (i = 0; i < 2; i++) {
    lua_Integer j, seen = 0;
    lua_getfield(L, loaded, names[i]);
    if (!lua_istable(L, -1)) { lua_pop(L, 1); continue; }
    /* the same table under both names is patched (and restored) once */
    for (j = 1; j <= (lua_Integer)lua_rawlen(L, list); j++) {
      lua_rawgeti(L, list, j);
      lua_rawgeti(L, -1, 1);
      seen = lua_rawequal(L, -1, -3);
      lua_pop(L, 2);
      if (seen) break;
    }
    if (seen) { lua_pop(L, 1); continue; }
    /* installing twice patches once */
    lua_getfield(L, -1, "new");
    lua_getfield(L, mod, "new");
    seen = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (seen) { lua_pop(L, 1); continue; }
    lua_createtable(L, 3, 0);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, 1);
    lua_getfield(L, -2, "new");
    lua_rawseti(L, -2, 2);
    lua_getfield(L, mod, "new");
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    lua_getfield(L, mod, "new");
    lua_setfield(L, -2, "new");
    lua_pop(L, 1);
    n++;
  }
  lua_pop(L, 1); /* loaded */
  lua_pushcclosure(L, l_uninstall_parser, 1);
  return n;
}
