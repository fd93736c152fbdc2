/*
** stream.c — brisk.xml's stream object, a drop-in for util.xmppstream's.
**
** A stream made by new(session, stream_callbacks, stanza_size_limit)
** behaves exactly like one of Prosody's util.xmppstream.new running on
** LuaExpat 1.5.1: the same expat parser configuration (namespace separator
** "\1", the same handler set: parse.c), the same byte accounting, callbacks
** and feed() results. This file has the object: feed, reset, set_session,
** set_stanza_size_limit, its C memory (memory.c) and its life when idle
** (hibernation, below), and the module's state shared by every stream.
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
#include <string.h>
#include <time.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "xml.h"

#define DEFAULT_STANZA_SIZE_LIMIT (1024 * 1024)

/*
** Optional limits on nesting depth and attributes per element. Stock has
** none, and by default neither has Brisk: the stanza size limit already
** bounds a stanza's memory, and open elements live in a Lua table, never on
** the C stack. Operators may set lower ones (docs/xml.md).
*/
#define DEFAULT_MAX_DEPTH LUA_MAXINTEGER
#define DEFAULT_MAX_ATTRIBUTES LUA_MAXINTEGER

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
void xml_capture_root(Stream *s, XML_Parser p) {
  int off, size, n = XML_GetCurrentByteCount(p);
  const char *buf;
  char tmp[HDR_MAX];
  size_t len;
  if (s->noreplay || s->hdr || n <= 0 || n > HDR_MAX) return;
  buf = XML_GetInputContext(p, &off, &size);
  if (buf == NULL || off < 0 || size - off < n) return;
  len = replay_tag(buf + off, (size_t)n, tmp);
  if (len == 0) return;
  s->hdr = (char *)xml_counted_realloc(&s->bmem, NULL, len);
  if (s->hdr == NULL) return;
  memcpy(s->hdr, tmp, len);
  s->hdrlen = len;
}

/* Forget everything known about cur (a new parser, nothing fed). */
static void track_reset(Stream *s) {
  xml_counted_free(s->hdr);
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
  xml_region_free(s->cur, s->cur_r);
  s->cur = NULL;
  s->cur_r = NULL;
  xml_counted_free(s->text);
  s->text = NULL;
  s->textcap = s->textlen = 0;
  xml_counted_free(s->levels);
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
  Region *prev, *r;
  XML_Parser p = xml_create_parser(s->bmem.mod, s, &r);
  enum XML_Status st;
  if (p == NULL) return XML_ERROR_NO_MEMORY;
  if (s->mod) XML_SetHashSalt(p, wake_salt(s->mod));
  s->cur = p;           /* for the replay handler's bookkeeping */
  s->cur_r = r;
  s->xdepth = 0;
  s->event_end = 0;
  XML_SetStartElementHandler(p, h_replay_start);
  prev = xml_enter_region(r);
  st = XML_Parse(p, s->hdr, (int)s->hdrlen, 0);
  xml_leave_region(prev);
  if (st != XML_STATUS_OK || s->xdepth != 1 ||
      s->event_end != (XML_Index)s->hdrlen) {
    enum XML_Error e = st != XML_STATUS_OK ? XML_GetErrorCode(p)
                                           : XML_ERROR_UNEXPECTED_STATE;
    xml_region_free(p, r);
    s->cur = NULL;
    s->cur_r = NULL;
    return e;
  }
  xml_set_handlers(p);
  s->fed = (XML_Index)s->hdrlen;
  s->in_cdata = 0;
  s->hibernating = 0;
  return XML_ERROR_NONE;
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
  if (s->active && s->active != s->cur) xml_region_free(s->active, s->active_r);
  xml_region_free(s->cur, s->cur_r);
  s->cur = s->active = NULL;
  s->cur_r = s->active_r = NULL;
  xml_counted_free(s->text);
  s->text = NULL;
  xml_counted_free(s->levels);
  s->levels = NULL;
  s->levelcap = 0;
  s->textcap = s->textlen = 0;
  xml_counted_free(s->hdr);
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
    xml_region_free(s->active, s->active_r);
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
  Region *prev;
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
  prev = xml_enter_region(s->active_r);
  status = lua_pcall(L, 4, 1, 0);
  xml_leave_region(prev);
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
  XML_Parser p = xml_create_parser(s->bmem.mod, s, &r);
  if (p == NULL) return luaL_error(L, "XML_ParserCreate failed");
  xml_set_handlers(p);
  /* The parser a running feed() works on (with its Region in active_r) is
  ** freed by that feed. A hibernating stream has none; its replay copy goes
  ** too. */
  if (s->cur && s->cur != s->active) xml_region_free(s->cur, s->cur_r);
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
    brisk_raise(L, "brisk.xml: max_elements must be a number");
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
    brisk_raise(L, "brisk.xml: stream_callbacks.%s must be a string", k);
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
** new(session, stream_callbacks, stanza_size_limit): a stream as stock's
** util.xmppstream.new makes it: a table with feed, reset, set_session and
** set_stanza_size_limit. The Lua side sets session.open_stream, as stock's
** new does, and hands streams without an error or a handlestanza callback
** to stock (stock raises from its own Lua source for those, which Brisk
** could not reproduce; Prosody's servers always pass both).
**
** Upvalues (see l_parser): 1 the Module, 2 the string cache (a NameCache
** userdata), 3 util.stanza's stanza_mt, 4 child_quota.
*/
static int l_new(lua_State *L) {
  Module *m = (Module *)lua_touserdata(L, lua_upvalueindex(1));
  Stream *s;
  int ud, strs;
  const char *stream_ns, *stream_tag, *error_tag;
  lua_settop(L, 3);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "error");
  lua_getfield(L, 2, "handlestanza");
  if (!lua_toboolean(L, -1) || !lua_toboolean(L, -2))
    return luaL_error(L, "brisk.xml: stream needs error and handlestanza callbacks");
  lua_pop(L, 2);
  s = (Stream *)lua_newuserdatauv(L, sizeof(Stream), UV_COUNT);
  memset(s, 0, sizeof *s);
  ud = lua_gettop(L);
  luaL_setmetatable(L, STREAM_TYPE);
  s->limits = m->limits;
  s->limits.child_quota = lua_toboolean(L, lua_upvalueindex(4));
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

  lua_pushvalue(L, lua_upvalueindex(3));
  lua_setiuservalue(L, ud, UV_STANZA_MT);
  lua_newtable(L);
  lua_setiuservalue(L, ud, UV_STACK);
  s->cache = (NameCache *)lua_touserdata(L, lua_upvalueindex(2));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setiuservalue(L, ud, UV_CACHE);

  /* stock's ex.max_elements only reaches LuaExpat, which ignores it */
  s->cur = xml_create_parser(m, s, &s->cur_r);
  if (s->cur == NULL) return luaL_error(L, "XML_ParserCreate failed");
  xml_set_handlers(s->cur);
  /* in the module's list from now until __gc */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setiuservalue(L, ud, UV_MODULE);
  s->mod = m;
  s->next = m->streams;
  if (s->next) s->next->prev = s;
  m->streams = s;

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
** parser(stanza_mt, child_quota): the stream constructor "new" for the
** util.stanza whose metatable is stanza_mt; child_quota says whether the
** stock util.xmppstream it stands in for has stock 0.12's child quota.
** Upvalues: 1 the Module, 2 the string cache.
*/
static int l_parser(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, 1);
  lua_pushboolean(L, lua_toboolean(L, 2));
  lua_pushcclosure(L, l_new, 4);
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
** hibernated now, how many are hibernating, how many streams there are, and
** how many bytes of C memory brisk.xml has freed since the last
** release_memory() (hibernation, closed streams, shrunk buffers).
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
  lua_pushinteger(L, (lua_Integer)m->freed);
  return 4;
}

/*
** release_memory(): ask malloc to give the operating system back the pages
** it holds free. Hibernation frees about 12 KiB per idle stream, but glibc
** keeps freed blocks that sit between live ones (Lua objects allocated
** since) and returns memory on its own only from the top of its heap, so
** without this the process's RSS does not shrink. malloc_trim(0) releases
** every whole free page (madvise), costing a walk over malloc's free lists.
** Returns true when memory was released, false when none was, fail where
** the C library has no such call (the memory stays reusable there).
*/
static int l_release_memory(lua_State *L) {
  Module *m = (Module *)lua_touserdata(L, lua_upvalueindex(1));
  m->freed = 0;
#if defined(__GLIBC__)
  lua_pushboolean(L, malloc_trim(0));
#else
  luaL_pushfail(L);
#endif
  return 1;
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


/* The module functions that share the Module as their one upvalue. */
static const luaL_Reg module_funcs[] = {
  {"set_limits", l_set_limits},
  {"hibernate", l_hibernate},
  {"memory", l_memory},
  {"release_memory", l_release_memory},
  {NULL, NULL}
};

/*
** Register the stream functions in the module table at index mod: parser,
** set_limits, hibernate, memory and release_memory, sharing one Module (and one string
** cache) per Lua state.
*/
void xml_open_stream(lua_State *L, int mod) {
  Module *m;
  mod = lua_absindex(L, mod);
  luaL_newmetatable(L, STREAM_TYPE);
  luaL_setfuncs(L, stream_meta, 0);
  /* feed() hands the stream out (as LuaExpat hands out its parser): keep
  ** its __gc out of reach. */
  lua_pushliteral(L, STREAM_TYPE);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);

  m = (Module *)lua_newuserdatauv(L, sizeof(Module), 0);
  memset(m, 0, sizeof *m);
  m->alloc = lua_getallocf(L, &m->alloc_ud);
  m->salt_key = secret_key(m);
  m->limits.max_depth = DEFAULT_MAX_DEPTH;
  m->limits.max_attributes = DEFAULT_MAX_ATTRIBUTES;
  /* the string cache: zeroed slots (length 0 never matches a lookup) and
  ** the table holding their strings */
  lua_pushvalue(L, -1);
  memset(lua_newuserdatauv(L, sizeof(NameCache), 1), 0, sizeof(NameCache));
  lua_createtable(L, NAME_CACHE_SIZE, 0);
  lua_setiuservalue(L, -2, 1);
  lua_pushcclosure(L, l_parser, 2);      /* the Module, the cache */
  lua_setfield(L, mod, "parser");
  lua_pushvalue(L, mod);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, module_funcs, 1);     /* the Module their upvalue */
  lua_pop(L, 1);
  lua_pushcclosure(L, l_fail_alloc, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "brisk.xml.fail_alloc");
}
