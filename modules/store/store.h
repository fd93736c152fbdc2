/*
** store.h — what the parts of brisk.store share:
**
**   buffer.c   growable byte buffers, varints, read cursors
**   codec.c    Lua values <-> the compact payloads of docs/storage-format.md
**   store.c    keeps them in SQLite
*/
#ifndef BRISK_STORE_H
#define BRISK_STORE_H

#include <stdint.h>
#include "brisk.h"

/* Envelope: byte 0 is the format version, byte 1 the payload kind. */
#define STORE_FORMAT_VERSION 1
#define STORE_KIND_VALUE  'G'   /* one general Lua value */
#define STORE_KIND_ITEM   'R'   /* one roster contact */
#define STORE_KIND_META   'M'   /* a roster's group names + its non-contact entries */
#define STORE_KIND_ENCRYPTED 0x80
#define STORE_HEADER 2
/*
** Plain blobs end with BLAKE2b-128 truncated to its first 8 bytes: ample to
** catch damage (a 2^-64 chance to miss), at half the bytes per contact.
*/
#define STORE_CHECKSUM 8
#define STORE_HASH_LEN 16
#define STORE_NONCE 24           /* XChaCha20-Poly1305 */
#define STORE_MAC 16

/* Nesting limit for tables and stanzas, on encoding and decoding alike. */
#define STORE_MAX_DEPTH 100

/* ---------------------------------------------------------------- buffer.c */

/* A growable byte buffer; "oom" is sticky so callers check once at the end. */
typedef struct Buffer {
  unsigned char *p;
  size_t n, cap;
  int oom;
} Buffer;

void store_buffer_free(Buffer *b);
void store_put(Buffer *b, const void *s, size_t len);
void store_put_byte(Buffer *b, unsigned char c);
void store_put_varint(Buffer *b, uint64_t v);
void store_put_str(Buffer *b, const char *s, size_t len);

/* A read cursor over a payload; every read checks bounds. */
typedef struct Cursor {
  const unsigned char *p, *end;
} Cursor;

int store_get_varint(Cursor *c, uint64_t *v);

/* ---------------------------------------------------------------- codec.c */

/*
** Encoders append to "b" and return NULL, or a static error message. "smt"
** is the stack index of util.stanza's metatable (or 0 when unknown).
*/
const char *store_encode_value(lua_State *L, Buffer *b, int idx, int smt);
/*
** Roster contact: "dict" is the stack index of a table name -> index and
** "names" of an array index -> name; new group names are appended to both.
** Returns STORE_KIND_ITEM, or STORE_KIND_VALUE when the item is not the
** shape the compact form covers (it is then written as a general value), or
** -1 with *err set.
*/
int store_encode_item(lua_State *L, Buffer *b, int idx, int smt,
                      int dict, int names, const char **err);
/* Roster metadata row: the names array, then the table at idx. */
const char *store_encode_meta(lua_State *L, Buffer *b, int names, int idx, int smt);

/*
** Decoders push one value and return NULL, or push nothing and return an
** error message. "names" is the stack index of the group names array.
*/
const char *store_decode_value(lua_State *L, Cursor *c, int smt);
/* "keys" is the stack index of the strings store_push_item_keys pushed. */
const char *store_decode_item(lua_State *L, Cursor *c, int smt, int names, int keys);
int store_push_item_keys(lua_State *L);
/* Pushes the names array, then the table of entries. */
const char *store_decode_meta(lua_State *L, Cursor *c, int smt);

#endif
