/*
** xml.h — what the parts of brisk.xml share: xml.c (the opener), stream.c
** (the stream object and the module's state), parse.c (expat's events
** turned into stanza tables), memory.c (the parsers' counted memory) and
** serialize.c (util.stanza's serializer).
*/
#ifndef BRISK_XML_H
#define BRISK_XML_H

#include <stddef.h>
#include <stdint.h>

#include <expat.h>

#include "brisk.h"

#define NS_SEP '\1'
#define XML_NS "http://www.w3.org/XML/1998/namespace"
#define XML_NS_LEN (sizeof(XML_NS) - 1)

/* Buffers a stream keeps after a stanza; larger ones are freed (h_end). */
#define TEXT_KEEP 4096
#define LEVELS_KEEP 64

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
** Settings of a stream, copied from the module's when it is created.
** child_quota says whether the stock parser being replaced has a child
** quota (set_stanza_size_limit's max_elements): Prosody 0.12's has, 13's
** dropped it; it comes from the parser factory (xml.parser), not the module.
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
  lua_Alloc alloc;       /* the Lua state's allocator, for all C memory */
  void *alloc_ud;
  struct Stream *streams;
  /* test-only fault injection (see l_fail_alloc): when non-zero, the
  ** allocation that brings it to zero fails */
  lua_Integer fail_countdown;
  /* hash salts for rebuilt parsers (see wake_salt) */
  uint64_t salt_key, salt_count;
  /* bytes of C memory given back to the allocator since the last
  ** release_memory(): what malloc may now hold free (hibernate() reports it) */
  size_t freed;
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

#define STREAM_TYPE "brisk.xml.Stream"

/* The stream an expat handler is called for (handlers get the parser). */
static inline Stream *stream_of(XML_Parser p) {
  return (Stream *)XML_GetUserData(p);
}

/*
** Record the end of cur's current event (see "hibernation" in stream.c);
** every handler does, before anything else.
*/
static inline void track_event(Stream *s, XML_Parser p) {
  if (p == s->cur)
    s->event_end = XML_GetCurrentByteIndex(p) + XML_GetCurrentByteCount(p);
}

/* memory.c: C memory, counted per Account, from the Lua state's allocator. */
void *xml_counted_realloc(Account *a, void *ptr, size_t size);
void xml_counted_free(void *ptr);
int xml_injected_failure(Module *m);
/* A parser configured as LuaExpat configures it for util.xmppstream, with
** its memory in a Region of its own (*rp); NULL when out of memory. */
XML_Parser xml_create_parser(Module *m, void *user, Region **rp);
void xml_region_free(XML_Parser p, Region *r);
/* Around every call into expat that can allocate: new blocks go to r. */
Region *xml_enter_region(Region *r);
void xml_leave_region(Region *prev);

/* parse.c */
void xml_set_handlers(XML_Parser p);

/* stream.c */
void xml_capture_root(Stream *s, XML_Parser p);
void xml_open_stream(lua_State *L, int mod);

/* serialize.c */
void xml_open_serializer(lua_State *L, int mod);

#endif
