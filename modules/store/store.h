/*
** store.h — what the parts of brisk.store share:
**
**   buffer.c     growable byte buffers, varints, read cursors
**   codec.c      Lua values <-> the compact payloads of docs/storage-format.md
**   codec_lua.c  the codec's Lua bindings: pack, unpack, encode_raw, decode_raw
**   seal.c       checksums, encryption and keyed row key hashes for payloads
**   db.c         the database handle: opening, schema, statements, transactions
**   read.c       the reading methods: get, get_key, get_all, users, stores
**   write.c      the writing methods: set, set_keys, purge, delete_all
**   store.c      luaopen_brisk_store: the module table and the DB's metatable
**
** Shared functions are store_*, shared constants STORE_*; the rest is static.
*/
#ifndef BRISK_STORE_H
#define BRISK_STORE_H

#include <stdint.h>
#include <sqlite3.h>
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
#define STORE_KEY_BYTES 32       /* the encryption key */
#define STORE_KEY_CHECK 16       /* meta.key_check */

/* Nesting limit for tables and stanzas, on encoding and decoding alike. */
#define STORE_MAX_DEPTH 100

/* ---------------------------------------------------------------- buffer.c */

/*
** A growable byte buffer in memory from L's allocator (all functions take
** the state whose allocator it uses); "oom" is sticky so callers check once
** at the end. It starts all zero and is given back by store_buffer_free.
*/
typedef struct Buffer {
  unsigned char *p;
  size_t n, cap;
  int oom;
} Buffer;

void store_buffer_free(lua_State *L, Buffer *b);
/* Free the buffer if it grew past STORE_BUFFER_IDLE bytes, e.g. for one large value. */
#define STORE_BUFFER_IDLE 65536
void store_buffer_trim(lua_State *L, Buffer *b);
void store_put(lua_State *L, Buffer *b, const void *s, size_t len);
void store_put_byte(lua_State *L, Buffer *b, unsigned char c);
void store_put_varint(lua_State *L, Buffer *b, uint64_t v);
void store_put_str(lua_State *L, Buffer *b, const char *s, size_t len);

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
/* Push the "dict" store_encode_item takes, for the names array at "names"; returns its index. */
int store_push_name_index(lua_State *L, int names);
/* Whether the value at kidx can be a key: a boolean, a number or a string. */
int store_key_ok(lua_State *L, int kidx);
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

/*
** A row's whole payload by its kind (docs/storage-format.md), nothing left
** over: store_decode_payload pushes the value of a key's own row (kind 'G' or
** 'R'); store_decode_extra the group names array and the table of entries
** of the "" row (kind 'M', or 'G' for stores other than rosters).
*/
const char *store_decode_payload(lua_State *L, Cursor *c, int kind, int smt, int names, int keys);
const char *store_decode_extra(lua_State *L, Cursor *c, int kind, int smt);

/* ---------------------------------------------------------------- codec_lua.c */

/* A scratch Buffer owned by a userdata, freed by its __gc. */
#define STORE_BUFFER_MT "brisk.store.Buffer"
extern const luaL_Reg store_buffer_meta[];
/* pack, unpack, encode_raw, decode_raw */
extern const luaL_Reg store_codec_functions[];

/* ---------------------------------------------------------------- the database */

#define STORE_DB_MT "brisk.store.DB"
#define STORE_SCHEMA_VERSION 1  /* meta.schema */

/* Prepared statements: indices into DB.st (their SQL is in db.c). */
enum {
  S_NAME_ID, S_NAME_ADD, S_ROWS, S_ROW, S_PUT, S_DEL, S_DEL_SCOPE, S_USERS,
  S_STORES, S_STORES_ANY, S_PURGE, S_KEY_ALL, S_KEY_DEL, S_OTHER_ROWS,
  S_BEGIN, S_COMMIT, S_ROLLBACK, S_META_GET, S_META_SET, S_ORPHANS, S_NROWS, S_COUNT
};

/* An open database: what store.open's userdata holds and owns (its __gc closes it). */
typedef struct DB {
  sqlite3 *db;
  sqlite3_stmt *st[S_COUNT];
  Buffer buf;     /* payload being encoded */
  Buffer out;     /* sealed blob */
  Buffer plain;   /* decrypted payload */
  Buffer ctx;     /* row identity bound into checksums and AEAD */
  Buffer ad;      /* header + identity, the AEAD's associated data */
  size_t ctx_prefix;
  int in_txn;
  int has_key;
  unsigned char key[STORE_KEY_BYTES];
  unsigned char rowkey[32];            /* derived from key: hashes row keys */
  unsigned char hk[STORE_HASH_LEN];    /* the hashed form of the KeyForm in use */
} DB;

/* The identity of the rows an operation touches. */
typedef struct Scope {
  const char *host, *user, *store;
  size_t hlen, ulen, slen;
  sqlite3_int64 hid, uid, sid;
} Scope;

/* ---------------------------------------------------------------- seal.c */

void store_set_key(DB *d, const unsigned char *key);
void store_clear_key(DB *d);
void store_key_check(const DB *d, unsigned char out[STORE_KEY_CHECK]);

/*
** The row identity in d->ctx: first the scope (user NULL for host-level
** data), then the key, which may be replaced for each row of that scope.
*/
void store_identity_scope(lua_State *L, DB *d, const Scope *sc, const char *user, size_t ulen);
void store_identity_key(lua_State *L, DB *d, const char *key, size_t klen);

/* Whether a key of klen bytes is stored as its keyed hash, and that hash. */
int store_hashed(const DB *d, size_t klen);
void store_hash_key(const DB *d, const char *key, size_t klen, unsigned char *out);
/*
** A hashed row's payload starts with the real key: point *key into the
** payload and check that it hashes to "stored". Returns NULL or an error.
*/
const char *store_take_key(const DB *d, Cursor *c, const unsigned char *stored, size_t slen,
                           const char **key, size_t *klen);

/* BLAKE2b-128 of data then ctx (clen 0: none), truncated to STORE_CHECKSUM bytes. */
void store_checksum(const unsigned char *data, size_t len, const unsigned char *ctx, size_t clen,
                    unsigned char *out);
/* Seal d->buf, a payload of "kind", into d->out for the row in d->ctx. */
const char *store_seal(lua_State *L, DB *d, int kind);
/* Check and open a stored blob of the row in d->ctx; *cur then spans its payload. */
const char *store_unseal(lua_State *L, DB *d, const unsigned char *blob, size_t len, int *kind, Cursor *cur);

/* ---------------------------------------------------------------- db.c */

/* store.open, the DB's maintenance methods and its metamethods. */
extern const luaL_Reg store_db_functions[];
extern const luaL_Reg store_db_methods[];
extern const luaL_Reg store_db_meta[];

/* Argument 1 of a method: an open database (a closed one raises). */
DB *store_check_db(lua_State *L);
/*
** Start of every method: a Lua error (out of memory) may have cut short the
** previous one, so its statements are reset and its transaction undone.
*/
void store_entry(DB *d);
/* End of a method that used the DB's buffers: trim them; returns nresults. */
int store_leave(lua_State *L, DB *d, int nresults);
/* Push fail and a message (SQLite's when msg is NULL); returns 2. */
int store_fail(lua_State *L, DB *d, const char *msg);
/* The statement "which" (an S_* index), prepared once, reset and unbound. NULL: SQLite failed. */
sqlite3_stmt *store_stmt(DB *d, int which);
/* BEGIN IMMEDIATE and COMMIT: SQLite's result code. */
int store_begin(DB *d);
int store_commit(DB *d);
/* Roll back, then push fail and msg (msg NULL: SQLite's message); returns 2. */
int store_abort(lua_State *L, DB *d, const char *msg);

/* A name's id, created when "create"; *id is 0 when absent. SQLite's result code. */
int store_name_id(DB *d, const char *name, size_t len, int create, sqlite3_int64 *id);
/* Arguments host (string), user (string or nil: host-level data) when with_user, store (string). */
void store_check_scope(lua_State *L, int first, Scope *sc, int with_user);
/* Resolve the scope's ids; returns SQLite's code, *found says all exist. */
int store_resolve(DB *d, Scope *sc, int create, int *found);
/* Bind host, user and store ids as ?1, ?2, ?3. */
void store_bind_scope(sqlite3_stmt *s, const Scope *sc);
/*
** One form of a row key: its keyed hash or its text. Every form a key may
** be stored in, in the order to look for it (a write uses the first):
**   for (more = store_key_first(d, &f, key, klen); more; more = store_key_next(&f))
** The hash lives in d->hk, so one KeyForm is in use at a time.
*/
typedef struct KeyForm {
  const char *key;       /* the key itself */
  size_t klen;
  const char *stored;    /* the key column in this form: the hash or the text */
  size_t slen;
  int hashed;            /* this form is the hash */
} KeyForm;

int store_key_first(DB *d, KeyForm *f, const char *key, size_t klen);
int store_key_next(KeyForm *f);
/* Bind the key column "col" in the form f. */
void store_bind_key(sqlite3_stmt *s, int col, const KeyForm *f);

/*
** Push util.stanza's metatable, which the Lua side passed to open() (the
** database's user value), and return its stack index, or 0 when the
** database was opened without one (stanzas are then plain tables).
*/
int store_push_stanza_mt(lua_State *L);
/* Whether the table at idx is empty (nothing left pushed). */
int store_table_empty(lua_State *L, int idx);
/* Whether the key at idx lives in its own row: a non-empty string. */
int store_own_row(lua_State *L, int idx);

/* ---------------------------------------------------------------- read.c */

/* get, get_key, get_all, users, stores */
extern const luaL_Reg store_read_methods[];
/*
** Read the "" row of a scope (its identity set up in d->ctx): pushes the
** group names and the extra entries (both empty tables when the row is
** absent). Returns NULL, or an error message with nothing pushed.
*/
const char *store_load_extra(lua_State *L, DB *d, const Scope *sc, int smt, int *exists);

/* ---------------------------------------------------------------- write.c */

/* set, set_keys, purge, delete_all */
extern const luaL_Reg store_write_methods[];

#endif
