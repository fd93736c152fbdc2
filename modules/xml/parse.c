/*
** parse.c — what expat reports, turned into util.stanza's tables, exactly as
** util.xmppstream's handlers (on LuaExpat 1.5.1) build them.
**
** The handlers build the same stanza tables by the same sequence of table
** writes as stock (so even pairs() order matches), count bytes as stock
** does and call the stream's callbacks (streamopened, handlestanza, error,
** streamclosed) with the same arguments, but run in C: Lua is entered only
** for stream events and complete stanzas. A handler works on the stream's
** Lua values through fixed stack slots that the running feed holds (see
** SLOT_STACK in xml.h); the stream object itself is stream.c's.
*/
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "xml.h"

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
/* the element stack and text                                             */
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
      if (cap > ((size_t)-1) / 2) brisk_raise(s->L, "brisk.xml: text too large");
      cap *= 2;
    }
    n = (char *)xml_counted_realloc(&s->bmem, s->text, cap);
    if (n == NULL) brisk_raise(s->L, "brisk.xml: not enough memory");
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
        brisk_raise(s->L, "brisk.xml: nesting too deep");
      cap *= 2;
    }
    n = (Level *)xml_counted_realloc(&s->bmem, s->levels, cap * sizeof(Level));
    if (n == NULL) brisk_raise(s->L, "brisk.xml: not enough memory");
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
/* expat handlers (mirrors of util.xmppstream's xml_handlers)             */
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
  if (n > nattrs) n = nattrs;   /* never true (specified ones are among atts);
                                ** says so to the reader and the analyzer */
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
  if (a > INT_MAX) brisk_raise(L, "brisk.xml: too many children");
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
    if (s->xdepth++ == 0) xml_capture_root(s, p);
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
        xml_counted_free(s->text);
        s->text = NULL;
        s->textcap = 0;
      }
      if (s->levelcap > LEVELS_KEEP) {
        xml_counted_free(s->levels);
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

/*
** Exactly the handlers LuaExpat registers for util.xmppstream's handler
** table, since which handlers exist changes how expat reports events and
** byte counts.
*/
void xml_set_handlers(XML_Parser p) {
  XML_SetElementHandler(p, h_start, h_end);
  XML_SetCharacterDataHandler(p, h_chars);
  XML_SetCdataSectionHandler(p, h_cdata_start, h_cdata_end);
  XML_SetCommentHandler(p, h_comment);
  XML_SetProcessingInstructionHandler(p, h_pi);
  XML_SetXmlDeclHandler(p, h_xmldecl);
  XML_SetStartDoctypeDeclHandler(p, h_doctype);
}
