/*
** memory.c — the C memory of brisk.xml's streams, counted.
**
** Every block a stream owns (its expat parsers' and its own buffers) comes
** from the Lua state's allocator with a header naming the Account it is
** charged to, so brisk.xml.memory() can say what streams hold and a freed
** block needs no context. Each expat parser allocates from a slab of its
** own (a Region), which makes building and freeing one cheap: that is what
** waking and hibernating a stream cost (stream.c).
*/
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "xml.h"

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

/* Fault injection (l_fail_alloc in stream.c): does this allocation fail? */
int xml_injected_failure(Module *m) {
  return m && m->fail_countdown > 0 && --m->fail_countdown == 0;
}

/* The Lua state's allocator, as the module captured it. */
static void *lua_realloc(Module *m, void *p, size_t osize, size_t nsize) {
  return m->alloc(m->alloc_ud, p, osize, nsize);
}

/*
** Resize ptr (NULL: a new block charged to a) to size bytes; NULL when out
** of memory (ptr then stays valid). A block keeps the Account it was
** charged to.
*/
void *xml_counted_realloc(Account *a, void *ptr, size_t size) {
  AllocHeader *h = ptr ? (AllocHeader *)ptr - 1 : NULL, *n;
  Account *owner = h ? h->owner : a;
  if (owner == NULL || owner->mod == NULL || size > SIZE_MAX / 2) return NULL;
  if (xml_injected_failure(owner->mod)) return NULL;
  n = (AllocHeader *)lua_realloc(owner->mod, h, h ? CHARGE(h->size) : 0, CHARGE(size));
  if (n == NULL) return NULL;
  if (h) {
    owner->bytes -= CHARGE(n->size);
    if (size < n->size) owner->mod->freed += n->size - size;
  }
  n->owner = owner;
  n->size = size;
  owner->bytes += CHARGE(size);
  return n + 1;
}

void xml_counted_free(void *ptr) {
  AllocHeader *h;
  if (ptr == NULL) return;
  h = (AllocHeader *)ptr - 1;
  h->owner->bytes -= CHARGE(h->size);
  h->owner->mod->freed += CHARGE(h->size);
  lua_realloc(h->owner->mod, h, CHARGE(h->size), 0);
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
  if (xml_injected_failure(mod)) return NULL;
  r = (Region *)lua_realloc(mod, NULL, 0, SLAB_CHARGE);
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
  if (size > SLAB_SIZE) return xml_counted_realloc(&r->acct, NULL, size);
  need = sizeof(AllocHeader) + round16(size) + REDZONE;
  if ((size_t)(r->end - r->next) < need) return xml_counted_realloc(&r->acct, NULL, size);
  if (xml_injected_failure(r->acct.mod)) return NULL;
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
void xml_region_free(XML_Parser p, Region *r) {
  if (r == NULL) return;
  if (p && r->acct.bytes > SLAB_CHARGE) XML_ParserFree(p);
  UNPOISON(r + 1, SLAB_SIZE);
  r->acct.mod->freed += SLAB_CHARGE;
  lua_realloc(r->acct.mod, r, SLAB_CHARGE, 0);
}

/*
** expat's memory suite. Its functions get no context, so new blocks come
** from the Region in expat_region, which is set around every call into
** expat that can allocate (parser creation, XML_Parse) and restored
** afterwards, so nested feeds of other streams from inside callbacks use
** their own. Frees and reallocs find their Region in the block's header.
**
** It is the only file-scope variable of Brisk, and deliberately so: expat's
** suite has no context argument, so the Region in use cannot travel any
** other way. It holds no state between calls (it is NULL, and allocations
** fail, outside them), and it is thread-local, so Lua states in different
** threads never see each other's.
*/
static _Thread_local Region *expat_region;

Region *xml_enter_region(Region *r) {
  Region *prev = expat_region;
  expat_region = r;
  return prev;
}

void xml_leave_region(Region *prev) {
  expat_region = prev;
}

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
  xml_counted_free(ptr);
}

static void *XMLCALL mm_realloc(void *ptr, size_t size) {
  AllocHeader *h;
  Region *r;
  size_t old;
  void *n;
  if (ptr == NULL) return mm_malloc(size);
  h = (AllocHeader *)ptr - 1;
  if (!(h->size & SLAB_BLOCK)) return xml_counted_realloc(NULL, ptr, size);
  /* a slab block: the Region whose account its header names */
  r = (Region *)((char *)h->owner - offsetof(Region, acct));
  old = h->size & ~SLAB_BLOCK;
  if ((char *)ptr == r->last && size <= SLAB_SIZE &&
      (size_t)(r->end - (char *)ptr) >= round16(size) + REDZONE) {
    if (xml_injected_failure(r->acct.mod)) return NULL;
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

/*
** A parser configured as LuaExpat configures it (namespace separator "\1";
** xml_set_handlers gives it LuaExpat's handler set), user data "user", in
** a Region of its own, stored in *rp. NULL when out of memory.
*/
XML_Parser xml_create_parser(Module *m, void *user, Region **rp) {
  static const XML_Char sep[] = {NS_SEP, '\0'};
  Region *prev = expat_region, *r = region_new(m);
  XML_Parser p;
  if (r == NULL) return NULL;
  expat_region = r;
  p = XML_ParserCreate_MM(NULL, &mm_suite, sep);
  expat_region = prev;
  if (p == NULL) {
    xml_region_free(NULL, r);
    return NULL;
  }
  *rp = r;
  XML_SetUserData(p, user);
  /* Handlers receive the parser itself: byte counts are per parser, and an
  ** old parser may still be finishing its buffer after reset(). */
  XML_UseParserAsHandlerArg(p);
  return p;
}
