/*
** store.c — brisk.store: Prosody keyval/map storage in one SQLite database.
**
** One row per (host, user, store, key): a roster keeps one row per contact,
** so changing one contact rewrites one small row whatever the roster's size.
** Keys that are not non-empty strings (the roster's [false] metadata) share
** one row under the key "", as mod_storage_sql does; for rosters that row
** also holds the list of group names the contact rows refer to by index.
** Host, user and store names are interned in the table "names". Every blob is
** sealed: a BLAKE2b checksum (128 bits, truncated to 64), or XChaCha20-Poly1305
** when a key is set, both bound to the row's host/user/store/key so a blob
** moved to another row is detected; with a key, map keys are stored as keyed
** hashes. Layout: docs/storage-format.md.
**
** Every method returns its result, or nil plus a message; only bad arguments
** raise. Statements are prepared once and owned by the database userdata.
*/
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <sqlite3.h>
#include <sodium.h>
#include "store.h"

#define DB_MT "brisk.store.DB"
#define SCHEMA_VERSION 1

static const char *const sql_text[S_COUNT] = {
  "SELECT id FROM names WHERE name=?1",
  "INSERT INTO names(name) VALUES(?1)",
  "SELECT key, value FROM items WHERE host=?1 AND user=?2 AND store=?3 ORDER BY key",
  "SELECT value FROM items WHERE host=?1 AND user=?2 AND store=?3 AND key=?4",
  "INSERT OR REPLACE INTO items(host, user, store, key, value) VALUES(?1, ?2, ?3, ?4, ?5)",
  "DELETE FROM items WHERE host=?1 AND user=?2 AND store=?3 AND key=?4",
  "DELETE FROM items WHERE host=?1 AND user=?2 AND store=?3",
  "SELECT name FROM names WHERE id IN (SELECT DISTINCT user FROM items WHERE host=?1 AND store=?2 AND user<>0)",
  "SELECT name FROM names WHERE id IN (SELECT DISTINCT store FROM items WHERE host=?1 AND user=?2)",
  "SELECT name FROM names WHERE id IN (SELECT DISTINCT store FROM items WHERE host=?1 AND user<>0)",
  "DELETE FROM items WHERE host=?1 AND user=?2",
  "SELECT i.user, n.name, i.value FROM items i JOIN names n ON n.id=i.user"
  " WHERE i.host=?1 AND i.store=?2 AND i.key=?3 AND i.user<>0",
  "DELETE FROM items WHERE host=?1 AND store=?2 AND key=?3 AND user<>0",
  "SELECT 1 FROM items WHERE host=?1 AND user=?2 AND store=?3 AND key<>'' LIMIT 1",
  "BEGIN IMMEDIATE",
  "COMMIT",
  "ROLLBACK",
  "SELECT v FROM meta WHERE k=?1",
  "INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)",
  "SELECT i.user, n.name FROM items i JOIN names n ON n.id=i.user WHERE i.host=?1 AND i.store=?2 AND i.key=''"
  " AND NOT EXISTS (SELECT 1 FROM items j WHERE j.host=i.host AND j.user=i.user AND j.store=i.store AND j.key<>'')",
  "SELECT count(*) FROM items WHERE host=?1 AND user=?2 AND store=?3",
};

/*
** WITHOUT ROWID keeps each row in the primary key's b-tree: no second index
** repeating the key, which is most of the bytes of a small contact row.
*/
static const char schema_sql[] =
  "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
  "CREATE TABLE IF NOT EXISTS names(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);"
  "CREATE TABLE IF NOT EXISTS items(host INTEGER NOT NULL, user INTEGER NOT NULL,"
  " store INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
  " PRIMARY KEY(host, user, store, key)) WITHOUT ROWID;";

/* ---------------------------------------------------------------- plumbing */

static void free_buffers(DB *d) {
  store_buffer_free(&d->buf);
  store_buffer_free(&d->out);
  if (d->plain.p) sodium_memzero(d->plain.p, d->plain.cap);
  store_buffer_free(&d->plain);
  store_buffer_free(&d->ctx);
  store_buffer_free(&d->ad);
}

static void db_close(DB *d) {
  int i;
  for (i = 0; i < S_COUNT; i++) {
    if (d->st[i]) sqlite3_finalize(d->st[i]);
    d->st[i] = NULL;
  }
  if (d->db) sqlite3_close_v2(d->db);
  d->db = NULL;
  free_buffers(d);
  store_clear_key(d);
}

static DB *check_db(lua_State *L) {
  DB *d = (DB *)luaL_checkudata(L, 1, DB_MT);
  if (d->db == NULL) luaL_error(L, "brisk.store: database is closed");
  return d;
}

/* Push "nil, message" (message from SQLite when msg is NULL). */
static int fail(lua_State *L, DB *d, const char *msg) {
  const char *m = msg ? msg : sqlite3_errmsg(d->db);
  lua_pushnil(L);
  lua_pushstring(L, m);
  return 2;
}

static sqlite3_stmt *stmt(DB *d, int which) {
  sqlite3_stmt *s = d->st[which];
  if (s == NULL) {
    if (sqlite3_prepare_v3(d->db, sql_text[which], -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK)
      return NULL;
    d->st[which] = s;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return s;
}

/*
** Start of every method: a Lua error (out of memory) may have cut short the
** previous one, so its statements are reset and its transaction undone.
*/
static void entry(DB *d) {
  int i;
  for (i = 0; i < S_COUNT; i++)
    if (d->st[i]) sqlite3_reset(d->st[i]);
  if (d->in_txn) {
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    d->in_txn = 0;
  }
}

static int run(DB *d, int which) {
  sqlite3_stmt *s = stmt(d, which);
  int rc;
  if (s == NULL) return SQLITE_ERROR;
  rc = sqlite3_step(s);
  sqlite3_reset(s);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int begin(DB *d) {
  int rc = run(d, S_BEGIN);
  if (rc == SQLITE_OK) d->in_txn = 1;
  return rc;
}

static int commit(DB *d) {
  int rc = run(d, S_COMMIT);
  if (rc == SQLITE_OK) d->in_txn = 0;
  return rc;
}

/* Roll back, then push "nil, msg" (msg NULL: SQLite's message, kept before the rollback). */
static int abort_txn(lua_State *L, DB *d, const char *msg) {
  if (msg == NULL) msg = lua_pushstring(L, sqlite3_errmsg(d->db));
  if (d->in_txn) {
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    d->in_txn = 0;
  }
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* Look a name up, creating it when "create"; *id is 0 when absent. */
static int name_id(DB *d, const char *name, size_t len, int create, sqlite3_int64 *id) {
  sqlite3_stmt *s = stmt(d, S_NAME_ID);
  int rc;
  *id = 0;
  if (s == NULL) return SQLITE_ERROR;
  sqlite3_bind_text(s, 1, name, (int)len, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) *id = sqlite3_column_int64(s, 0);
  sqlite3_reset(s);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return rc;
  if (*id || !create) return SQLITE_OK;
  s = stmt(d, S_NAME_ADD);
  if (s == NULL) return SQLITE_ERROR;
  sqlite3_bind_text(s, 1, name, (int)len, SQLITE_STATIC);
  rc = sqlite3_step(s);
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) return rc;
  *id = sqlite3_last_insert_rowid(d->db);
  return SQLITE_OK;
}

/* Arguments host (string), user (string or nil: host-level data), store (string). */
static void check_scope(lua_State *L, int first, Scope *sc, int with_user) {
  sc->host = luaL_checklstring(L, first, &sc->hlen);
  sc->user = NULL;
  sc->ulen = 0;
  if (with_user) {
    if (!lua_isnoneornil(L, first + 1)) sc->user = luaL_checklstring(L, first + 1, &sc->ulen);
    sc->store = luaL_checklstring(L, first + 2, &sc->slen);
  } else {
    sc->store = luaL_checklstring(L, first + 1, &sc->slen);
  }
  sc->hid = sc->uid = sc->sid = 0;
}

/* Resolve the scope's ids; returns SQLite's code, *found says all exist. */
static int resolve(DB *d, Scope *sc, int create, int *found) {
  int rc;
  *found = 0;
  if ((rc = name_id(d, sc->host, sc->hlen, create, &sc->hid)) != SQLITE_OK) return rc;
  if (sc->user && (rc = name_id(d, sc->user, sc->ulen, create, &sc->uid)) != SQLITE_OK) return rc;
  if ((rc = name_id(d, sc->store, sc->slen, create, &sc->sid)) != SQLITE_OK) return rc;
  *found = sc->hid && sc->sid && (sc->user == NULL || sc->uid);
  return SQLITE_OK;
}

static void bind_scope(sqlite3_stmt *s, const Scope *sc) {
  sqlite3_bind_int64(s, 1, sc->hid);
  sqlite3_bind_int64(s, 2, sc->uid);
  sqlite3_bind_int64(s, 3, sc->sid);
}

/* ---------------------------------------------------------------- row keys */

/* Bind a key column: the hash (computed into d->hk) or the text. */
static void bind_key(DB *d, sqlite3_stmt *s, int col, const char *key, size_t klen, int as_hash) {
  if (as_hash) {
    store_hash_key(d, key, klen, d->hk);
    sqlite3_bind_blob(s, col, d->hk, STORE_HASH_LEN, SQLITE_STATIC);
  } else {
    sqlite3_bind_text(s, col, key, (int)klen, SQLITE_STATIC);
  }
}

/* ---------------------------------------------------------------- reading */

/*
** Push util.stanza's metatable, which the Lua side passed to open() (the
** database's user value), and return its stack index, or 0 when the
** database was opened without one (stanzas are then plain tables).
*/
static int push_stanza_mt(lua_State *L) {
  return lua_getiuservalue(L, 1, 1) == LUA_TTABLE ? lua_gettop(L) : 0;
}

/* Push the error "msg" about key "key" and return 2 (nil, message). */
static int key_fail(lua_State *L, int base, const char *msg, const char *key, size_t klen) {
  char shown[64];
  size_t n = klen < sizeof shown - 1 ? klen : sizeof shown - 1;
  memcpy(shown, key, n);
  shown[n] = '\0';
  lua_settop(L, base);
  lua_pushnil(L);
  if (klen == 0) lua_pushfstring(L, "%s (metadata row)", msg);
  else lua_pushfstring(L, "%s (key '%s')", msg, shown);
  return 2;
}

/*
** Read the "" row of a scope: pushes names and extras (both empty tables when
** the row is absent). Returns NULL or an error (nothing pushed).
*/
static const char *load_extra(lua_State *L, DB *d, const Scope *sc, int smt, int *exists) {
  sqlite3_stmt *s = stmt(d, S_ROW);
  int rc, kind;
  Cursor c;
  const char *err = NULL;
  *exists = 0;
  if (s == NULL) return sqlite3_errmsg(d->db);
  bind_scope(s, sc);
  sqlite3_bind_text(s, 4, "", 0, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    store_identity_key(d, "", 0);
    err = store_unseal(d, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0), &kind, &c);
    if (!err) err = store_decode_extra(L, &c, kind, smt);
    *exists = 1;
  } else if (rc == SQLITE_DONE) {
    lua_newtable(L);
    lua_newtable(L);
  } else {
    err = sqlite3_errmsg(d->db);
  }
  sqlite3_reset(s);
  return err;
}

static int table_empty(lua_State *L, int idx) {
  int empty;
  lua_pushnil(L);
  empty = !lua_next(L, idx);
  if (!empty) lua_pop(L, 2);
  return empty;
}

/* db:get(host, user, store, roster) -> table | nil | nil, err */
static int l_get(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, rc, result, names, keys, smt;
  sqlite3_stmt *s;
  check_scope(L, 2, &sc, 1);
  lua_settop(L, 5);
  smt = push_stanza_mt(L);
  entry(d);
  if ((rc = resolve(d, &sc, 0, &found)) != SQLITE_OK) return fail(L, d, NULL);
  if (!found) { lua_pushnil(L); return 1; }
  store_identity_scope(d, &sc, sc.user, sc.ulen);
  /*
  ** Counting the rows first (a walk of the same few b-tree pages) lets the
  ** result table be allocated once instead of growing through a dozen rehashes.
  */
  {
    sqlite3_int64 n = 0;
    if ((s = stmt(d, S_NROWS)) == NULL) return fail(L, d, NULL);
    bind_scope(s, &sc);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) n = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW) return fail(L, d, NULL);
    if (n == 0) { lua_pushnil(L); return 1; }
    lua_createtable(L, 0, n > 1000000 ? 1000000 : (int)n);
  }
  result = lua_gettop(L);
  lua_newtable(L);
  names = lua_gettop(L);
  keys = store_push_item_keys(L);
  if ((s = stmt(d, S_ROWS)) == NULL) return fail(L, d, NULL);
  bind_scope(s, &sc);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int as_hash = sqlite3_column_type(s, 0) == SQLITE_BLOB;
    const char *key = as_hash ? (const char *)sqlite3_column_blob(s, 0) : (const char *)sqlite3_column_text(s, 0);
    size_t klen = (size_t)sqlite3_column_bytes(s, 0);
    const unsigned char *blob = sqlite3_column_blob(s, 1);
    size_t blen = (size_t)sqlite3_column_bytes(s, 1);
    const char *err;
    int kind;
    Cursor c;
    if (key == NULL) key = "";
    store_identity_key(d, key, klen);
    err = store_unseal(d, blob, blen, &kind, &c);
    if (!err && as_hash) {
      /* From here on key points into the decrypted payload (until the next unseal). */
      const unsigned char *stored = (const unsigned char *)key;
      size_t slen = klen;
      err = store_take_key(d, &c, stored, slen, &key, &klen);
    }
    if (err && as_hash) { key = "<encrypted key>"; klen = strlen(key); }
    if (!err && klen == 0) {
      if ((err = store_decode_extra(L, &c, kind, smt)) == NULL) {
        /* The entries under non-string keys join the result; the names stay for the contacts. */
        lua_pushnil(L);
        while (lua_next(L, -2)) {
          lua_pushvalue(L, -2);
          lua_insert(L, -2);
          lua_rawset(L, result);
        }
        lua_pop(L, 1);
        lua_replace(L, names);
      }
    }
    /* key points into the statement's row: report before resetting it. */
    if (err) { rc = key_fail(L, result - 1, err, key, klen); sqlite3_reset(s); return rc; }
    if (klen == 0) continue;
    lua_pushlstring(L, key, klen);
    if ((err = store_decode_payload(L, &c, kind, smt, names, keys)) != NULL) {
      rc = key_fail(L, result - 1, err, key, klen);
      sqlite3_reset(s);
      return rc;
    }
    lua_rawset(L, result);
  }
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) return fail(L, d, NULL);
  lua_settop(L, result);
  if (table_empty(L, result)) lua_pushnil(L);
  return 1;
}

/* A key that lives in its own row: a non-empty string. */
static int own_row(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING && lua_rawlen(L, idx) > 0;
}

/* db:get_key(host, user, store, roster, key) -> value | nil | nil, err */
static int l_get_key(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, rc, exists, roster, smt;
  const char *err;
  check_scope(L, 2, &sc, 1);
  roster = lua_toboolean(L, 5);
  luaL_checkany(L, 6);
  lua_settop(L, 6);
  smt = push_stanza_mt(L); /* at 7 */
  entry(d);
  if ((rc = resolve(d, &sc, 0, &found)) != SQLITE_OK) return fail(L, d, NULL);
  if (!found) { lua_pushnil(L); return 1; }
  store_identity_scope(d, &sc, sc.user, sc.ulen);
  if (!own_row(L, 6) || roster) {
    /* Non-string keys live in the "" row; roster contacts need its group names. */
    if ((err = load_extra(L, d, &sc, smt, &exists)) != NULL) return key_fail(L, 6, err, "", 0);
    if (!own_row(L, 6)) {
      lua_pushvalue(L, 6);
      lua_rawget(L, -2);
      return 1;
    }
    lua_pop(L, 1); /* keep the names at index 8 */
  } else {
    lua_newtable(L);
  }
  store_push_item_keys(L); /* at 9 */
  {
    size_t klen;
    const char *key = lua_tolstring(L, 6, &klen);
    int pass;
    /* With a key: the hashed row, then a plain row written before encryption was on. */
    for (pass = store_hashed(d, klen) ? 0 : 1; pass < 2; pass++) {
      sqlite3_stmt *s = stmt(d, S_ROW);
      int kind, as_hash = pass == 0;
      Cursor c;
      if (s == NULL) return fail(L, d, NULL);
      bind_scope(s, &sc);
      bind_key(d, s, 4, key, klen, as_hash);
      rc = sqlite3_step(s);
      if (rc == SQLITE_DONE) { sqlite3_reset(s); continue; }
      if (rc != SQLITE_ROW) { sqlite3_reset(s); return fail(L, d, NULL); }
      if (as_hash) store_identity_key(d, (const char *)d->hk, STORE_HASH_LEN);
      else store_identity_key(d, key, klen);
      err = store_unseal(d, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0), &kind, &c);
      if (!err && as_hash) {
        const char *real;
        size_t rlen;
        err = store_take_key(d, &c, d->hk, STORE_HASH_LEN, &real, &rlen);
        if (!err && (rlen != klen || memcmp(real, key, klen) != 0)) err = "corrupt data (row key mismatch)";
      }
      if (!err) err = store_decode_payload(L, &c, kind, smt, 8, 9);
      sqlite3_reset(s);
      if (err) return key_fail(L, 6, err, key, klen);
      return 1;
    }
    lua_pushnil(L);
    return 1;
  }
}

/* db:get_all(host, store, roster, key) -> { [user] = value } | nil | nil, err */
static int l_get_all(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, rc, roster, result, keys, smt;
  size_t klen;
  const char *key;
  sqlite3_stmt *s;
  check_scope(L, 2, &sc, 0);
  roster = lua_toboolean(L, 4);
  key = luaL_checklstring(L, 5, &klen);
  lua_settop(L, 5);
  smt = push_stanza_mt(L);
  entry(d);
  if ((rc = resolve(d, &sc, 0, &found)) != SQLITE_OK) return fail(L, d, NULL);
  if (!found || klen == 0) { lua_pushnil(L); return 1; }
  lua_newtable(L);
  result = lua_gettop(L);
  keys = store_push_item_keys(L);
  {
  int pass;
  for (pass = store_hashed(d, klen) ? 0 : 1; pass < 2; pass++) {
  int as_hash = pass == 0;
  if ((s = stmt(d, S_KEY_ALL)) == NULL) return fail(L, d, NULL);
  sqlite3_bind_int64(s, 1, sc.hid);
  sqlite3_bind_int64(s, 2, sc.sid);
  bind_key(d, s, 3, key, klen, as_hash);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const char *user = (const char *)sqlite3_column_text(s, 1);
    size_t ulen = (size_t)sqlite3_column_bytes(s, 1);
    const char *err = NULL;
    int kind, exists;
    Cursor c;
    if (user == NULL) user = "";
    sc.uid = sqlite3_column_int64(s, 0);
    store_identity_scope(d, &sc, user, ulen);
    if (roster) {
      /* This user's group names: the "" row, read with its own statement. */
      if ((err = load_extra(L, d, &sc, smt, &exists)) != NULL) { sqlite3_reset(s); return key_fail(L, 5, err, "", 0); }
      lua_pop(L, 1);
    } else {
      lua_newtable(L);
    }
    if (as_hash) {
      store_hash_key(d, key, klen, d->hk);
      store_identity_key(d, (const char *)d->hk, STORE_HASH_LEN);
    } else {
      store_identity_key(d, key, klen);
    }
    err = store_unseal(d, sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2), &kind, &c);
    if (!err && as_hash) {
      const char *real;
      size_t rlen;
      err = store_take_key(d, &c, d->hk, STORE_HASH_LEN, &real, &rlen);
    }
    lua_pushlstring(L, user, ulen);
    if (!err) err = store_decode_payload(L, &c, kind, smt, lua_gettop(L) - 1, keys);
    if (err) { sqlite3_reset(s); return key_fail(L, 5, err, key, klen); }
    /* As the stock map shim does, users whose value is false are left out. */
    if (lua_toboolean(L, -1)) lua_rawset(L, result);
    else lua_pop(L, 2);
    lua_pop(L, 1); /* names */
  }
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) return fail(L, d, NULL);
  }
  }
  lua_settop(L, result);
  if (table_empty(L, result)) lua_pushnil(L);
  return 1;
}

/* Push the column-0 strings of a statement's rows as an array. */
static int name_list(lua_State *L, DB *d, sqlite3_stmt *s) {
  int rc;
  lua_Integer n = 0;
  lua_newtable(L);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    lua_pushlstring(L, (const char *)sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0));
    lua_rawseti(L, -2, ++n);
  }
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) return fail(L, d, NULL);
  return 1;
}

/* db:users(host, store) -> { user, ... } */
static int l_users(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, rc;
  sqlite3_stmt *s;
  check_scope(L, 2, &sc, 0);
  entry(d);
  if ((rc = resolve(d, &sc, 0, &found)) != SQLITE_OK) return fail(L, d, NULL);
  if (!found) { lua_newtable(L); return 1; }
  if ((s = stmt(d, S_USERS)) == NULL) return fail(L, d, NULL);
  sqlite3_bind_int64(s, 1, sc.hid);
  sqlite3_bind_int64(s, 2, sc.sid);
  return name_list(L, d, s);
}

/* db:stores(host, user) -> { store, ... }; user nil: host-level, true: any user */
static int l_stores(lua_State *L) {
  DB *d = check_db(L);
  const char *host, *user = NULL;
  size_t hlen, ulen = 0;
  sqlite3_int64 hid, uid = 0;
  int any = lua_type(L, 3) == LUA_TBOOLEAN && lua_toboolean(L, 3);
  sqlite3_stmt *s;
  host = luaL_checklstring(L, 2, &hlen);
  if (!any && !lua_isnoneornil(L, 3)) user = luaL_checklstring(L, 3, &ulen);
  entry(d);
  if (name_id(d, host, hlen, 0, &hid) != SQLITE_OK) return fail(L, d, NULL);
  if (user && name_id(d, user, ulen, 0, &uid) != SQLITE_OK) return fail(L, d, NULL);
  if (!hid || (user && !uid)) { lua_newtable(L); return 1; }
  if ((s = stmt(d, any ? S_STORES_ANY : S_STORES)) == NULL) return fail(L, d, NULL);
  sqlite3_bind_int64(s, 1, hid);
  if (!any) sqlite3_bind_int64(s, 2, uid);
  return name_list(L, d, s);
}

/* ---------------------------------------------------------------- writing */

static const char *del_row_as(DB *d, const Scope *sc, const char *key, size_t klen, int as_hash);

/*
** Encode the value at vidx for key (its own row) and store it. "legacy": also delete a plain-text row of the same key, which a database
** may hold from before encryption was turned on (set() has deleted them all).
*/
static const char *put_row(lua_State *L, DB *d, const Scope *sc, const char *key, size_t klen,
                           int vidx, int roster, int smt, int dict, int names, int legacy) {
  const char *err = NULL;
  int kind, as_hash = store_hashed(d, klen);
  sqlite3_stmt *s;
  d->buf.n = 0;
  if (as_hash) store_put_str(&d->buf, key, klen);
  if (roster) {
    kind = store_encode_item(L, &d->buf, vidx, smt, dict, names, &err);
    if (kind < 0) return err;
  } else {
    if ((err = store_encode_value(L, &d->buf, vidx, smt)) != NULL) return err;
    kind = STORE_KIND_VALUE;
  }
  if (as_hash) {
    store_hash_key(d, key, klen, d->hk);
    store_identity_key(d, (const char *)d->hk, STORE_HASH_LEN);
  } else {
    store_identity_key(d, key, klen);
  }
  if ((err = store_seal(d, kind)) != NULL) return err;
  if ((s = stmt(d, S_PUT)) == NULL) return sqlite3_errmsg(d->db);
  bind_scope(s, sc);
  bind_key(d, s, 4, key, klen, as_hash);
  sqlite3_bind_blob(s, 5, d->out.p, (int)d->out.n, SQLITE_STATIC);
  if (sqlite3_step(s) != SQLITE_DONE) err = sqlite3_errmsg(d->db);
  sqlite3_reset(s);
  if (!err && as_hash && legacy) err = del_row_as(d, sc, key, klen, 0);
  return err;
}

static const char *del_row_as(DB *d, const Scope *sc, const char *key, size_t klen, int as_hash) {
  sqlite3_stmt *s = stmt(d, S_DEL);
  const char *err = NULL;
  if (s == NULL) return sqlite3_errmsg(d->db);
  bind_scope(s, sc);
  bind_key(d, s, 4, key, klen, as_hash);
  if (sqlite3_step(s) != SQLITE_DONE) err = sqlite3_errmsg(d->db);
  sqlite3_reset(s);
  return err;
}

/* Delete a key's row in both forms it may have (hashed, plain text). */
static const char *del_row(DB *d, const Scope *sc, const char *key, size_t klen) {
  const char *err = NULL;
  if (store_hashed(d, klen)) err = del_row_as(d, sc, key, klen, 1);
  if (!err) err = del_row_as(d, sc, key, klen, 0);
  return err;
}

/* Write the "" row from names and extras, or delete it when it would say nothing. */
static const char *put_extra(lua_State *L, DB *d, const Scope *sc, int roster, int smt, int names, int extras) {
  const char *err;
  sqlite3_stmt *s;
  int kind;
  if (table_empty(L, extras)) {
    int others = 0;
    if (roster && lua_rawlen(L, names) > 0) {
      /* Group names are only worth keeping while some contact may use them. */
      if ((s = stmt(d, S_OTHER_ROWS)) == NULL) return sqlite3_errmsg(d->db);
      bind_scope(s, sc);
      others = sqlite3_step(s) == SQLITE_ROW;
      sqlite3_reset(s);
    }
    if (!others) return del_row(d, sc, "", 0);
  }
  d->buf.n = 0;
  if (roster) {
    err = store_encode_meta(L, &d->buf, names, extras, smt);
    kind = STORE_KIND_META;
  } else {
    err = store_encode_value(L, &d->buf, extras, smt);
    kind = STORE_KIND_VALUE;
  }
  if (err) return err;
  store_identity_key(d, "", 0);
  if ((err = store_seal(d, kind)) != NULL) return err;
  if ((s = stmt(d, S_PUT)) == NULL) return sqlite3_errmsg(d->db);
  bind_scope(s, sc);
  sqlite3_bind_text(s, 4, "", 0, SQLITE_STATIC);
  sqlite3_bind_blob(s, 5, d->out.p, (int)d->out.n, SQLITE_STATIC);
  err = sqlite3_step(s) == SQLITE_DONE ? NULL : sqlite3_errmsg(d->db);
  sqlite3_reset(s);
  return err;
}

static int key_type_ok(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN;
}

/* A row key to sort: SQLite's BINARY order, memcmp then length. */
typedef struct RowKey {
  const char *s;
  size_t len;
  unsigned char h[STORE_HASH_LEN];  /* the stored form, when keys are hashed */
} RowKey;

static int rowkey_cmp(const void *a, const void *b) {
  const RowKey *x = (const RowKey *)a, *y = (const RowKey *)b;
  int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
  if (c) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

static int rowkey_hash_cmp(const void *a, const void *b) {
  return memcmp(((const RowKey *)a)->h, ((const RowKey *)b)->h, STORE_HASH_LEN);
}

/* db:set(host, user, store, roster, data|nil) -> true | nil, err (one transaction) */
static int l_set(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, roster, smt, names, dict, extras;
  const char *err = NULL;
  sqlite3_stmt *s;
  check_scope(L, 2, &sc, 1);
  roster = lua_toboolean(L, 5);
  if (!lua_isnoneornil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
  lua_settop(L, 6);
  smt = push_stanza_mt(L);
  entry(d);
  if (begin(d) != SQLITE_OK) return fail(L, d, NULL);
  if (resolve(d, &sc, 1, &found) != SQLITE_OK) return abort_txn(L, d, NULL);
  if ((s = stmt(d, S_DEL_SCOPE)) == NULL) return abort_txn(L, d, NULL);
  bind_scope(s, &sc);
  if (sqlite3_step(s) != SQLITE_DONE) { sqlite3_reset(s); return abort_txn(L, d, NULL); }
  sqlite3_reset(s);
  if (lua_istable(L, 6)) {
    store_identity_scope(d, &sc, sc.user, sc.ulen);
    lua_newtable(L); names = lua_gettop(L);
    lua_newtable(L); dict = lua_gettop(L);
    lua_newtable(L); extras = lua_gettop(L);
    /*
    ** Rows go in in key order: appending to the b-tree fills its pages,
    ** where random order would leave them about a third empty.
    */
    {
      size_t n = 0, i;
      RowKey *sorted;
      lua_pushnil(L);
      while (lua_next(L, 6)) {
        lua_pop(L, 1);
        if (own_row(L, -1)) n++;
      }
      sorted = (RowKey *)lua_newuserdatauv(L, (n ? n : 1) * sizeof(RowKey), 0);
      i = 0;
      lua_pushnil(L);
      while (lua_next(L, 6)) {
        lua_pop(L, 1);
        /* The strings stay alive: they are keys of the data table. */
        if (own_row(L, -1) && i < n) {
          sorted[i].s = lua_tolstring(L, -1, &sorted[i].len);
          if (d->has_key) store_hash_key(d, sorted[i].s, sorted[i].len, sorted[i].h);
          i++;
        }
      }
      qsort(sorted, n, sizeof(RowKey), d->has_key ? rowkey_hash_cmp : rowkey_cmp);
      for (i = 0; i < n; i++) {
        lua_pushlstring(L, sorted[i].s, sorted[i].len);
        lua_rawget(L, 6);
        err = put_row(L, d, &sc, sorted[i].s, sorted[i].len, lua_gettop(L), roster, smt, dict, names, 0);
        lua_pop(L, 1);
        if (err) return abort_txn(L, d, err);
      }
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      if (own_row(L, -2)) {
        /* written above */
      } else if (key_type_ok(L, -2)) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, extras);
      } else {
        return abort_txn(L, d, "unsupported key type (only strings, numbers and booleans)");
      }
      lua_pop(L, 1);
    }
    if ((err = put_extra(L, d, &sc, roster, smt, names, extras)) != NULL) return abort_txn(L, d, err);
  }
  if (commit(d) != SQLITE_OK) return abort_txn(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* db:set_keys(host, user, store, roster, { [key] = value or remove }, remove) -> true | nil, err */
static int l_set_keys(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, roster, smt, exists, names, dict, extras, dirty = 0, removed = 0;
  lua_Integer nnames;
  const char *err = NULL;
  check_scope(L, 2, &sc, 1);
  roster = lua_toboolean(L, 5);
  luaL_checktype(L, 6, LUA_TTABLE);
  luaL_checkany(L, 7);
  lua_settop(L, 7);
  smt = push_stanza_mt(L); /* at 8 */
  entry(d);
  if (begin(d) != SQLITE_OK) return fail(L, d, NULL);
  if (resolve(d, &sc, 1, &found) != SQLITE_OK) return abort_txn(L, d, NULL);
  store_identity_scope(d, &sc, sc.user, sc.ulen);
  /* The "" row is read only when needed: rosters (group names) or non-string keys. */
  if (!roster) {
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      lua_pop(L, 1);
      if (!own_row(L, -1)) { dirty = 1; lua_pop(L, 1); break; }
    }
  }
  if (roster || dirty) {
    if ((err = load_extra(L, d, &sc, smt, &exists)) != NULL) {
      lua_settop(L, 8);
      return abort_txn(L, d, lua_pushfstring(L, "%s (metadata row)", err));
    }
  } else {
    lua_newtable(L);
    lua_newtable(L);
  }
  dirty = 0;
  extras = lua_gettop(L);
  names = extras - 1;
  lua_newtable(L);
  dict = lua_gettop(L);
  nnames = (lua_Integer)lua_rawlen(L, names);
  {
    lua_Integer i;
    for (i = 1; i <= nnames; i++) {
      lua_rawgeti(L, names, i);
      lua_pushinteger(L, i - 1);
      lua_rawset(L, dict);
    }
  }
  lua_pushnil(L);
  while (lua_next(L, 6)) {
    int removing = lua_rawequal(L, -1, 7);
    if (own_row(L, -2)) {
      size_t klen;
      const char *key = lua_tolstring(L, -2, &klen);
      removed |= removing && roster;
      err = removing ? del_row(d, &sc, key, klen)
                     : put_row(L, d, &sc, key, klen, lua_gettop(L), roster, smt, dict, names, 1);
      if (err) return abort_txn(L, d, err);
    } else if (key_type_ok(L, -2)) {
      lua_pushvalue(L, -2);
      if (removing) lua_pushnil(L);
      else lua_pushvalue(L, -2);
      lua_rawset(L, extras);
      dirty = 1;
    } else {
      return abort_txn(L, d, "unsupported key type (only strings, numbers and booleans)");
    }
    lua_pop(L, 1);
  }
  /*
  ** Rewrite the "" row when its entries or names changed, and check it after
  ** removals: with no entries left it must go once its contacts are gone, or
  ** the user would still be listed by users() with nothing stored.
  */
  if (dirty || removed || (lua_Integer)lua_rawlen(L, names) != nnames) {
    if ((err = put_extra(L, d, &sc, roster, smt, names, extras)) != NULL) return abort_txn(L, d, err);
  }
  if (commit(d) != SQLITE_OK) return abort_txn(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* db:purge(host, user) -> true | nil, err: every store of one user */
static int l_purge(lua_State *L) {
  DB *d = check_db(L);
  size_t hlen, ulen;
  const char *host = luaL_checklstring(L, 2, &hlen);
  const char *user = luaL_checklstring(L, 3, &ulen);
  sqlite3_int64 hid, uid;
  sqlite3_stmt *s;
  entry(d);
  if (name_id(d, host, hlen, 0, &hid) != SQLITE_OK || name_id(d, user, ulen, 0, &uid) != SQLITE_OK)
    return fail(L, d, NULL);
  if (hid && uid) {
    if ((s = stmt(d, S_PURGE)) == NULL) return fail(L, d, NULL);
    sqlite3_bind_int64(s, 1, hid);
    sqlite3_bind_int64(s, 2, uid);
    if (sqlite3_step(s) != SQLITE_DONE) { sqlite3_reset(s); return fail(L, d, NULL); }
    sqlite3_reset(s);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* db:delete_all(host, store, roster, key) -> true | nil, err: one key of every user */
static int l_delete_all(lua_State *L) {
  DB *d = check_db(L);
  Scope sc;
  int found, roster, rc, smt;
  size_t klen;
  const char *key;
  sqlite3_stmt *s;
  check_scope(L, 2, &sc, 0);
  roster = lua_toboolean(L, 4);
  key = luaL_checklstring(L, 5, &klen);
  lua_settop(L, 5);
  smt = push_stanza_mt(L); /* at 6 */
  entry(d);
  if (resolve(d, &sc, 0, &found) != SQLITE_OK) return fail(L, d, NULL);
  if (!found || klen == 0) { lua_pushboolean(L, 1); return 1; }
  if (begin(d) != SQLITE_OK) return fail(L, d, NULL);
  {
    int pass;
    for (pass = store_hashed(d, klen) ? 0 : 1; pass < 2; pass++) {
      if ((s = stmt(d, S_KEY_DEL)) == NULL) return abort_txn(L, d, NULL);
      sqlite3_bind_int64(s, 1, sc.hid);
      sqlite3_bind_int64(s, 2, sc.sid);
      bind_key(d, s, 3, key, klen, pass == 0);
      rc = sqlite3_step(s);
      sqlite3_reset(s);
      if (rc != SQLITE_DONE) return abort_txn(L, d, NULL);
    }
  }
  if (roster) {
    /*
    ** A roster whose last contact went may keep a "" row holding only group
    ** names: it says nothing and must go, as set_keys would have done. The
    ** matching users are collected first, then each row checked.
    */
    lua_Integer n = 0, i;
    lua_newtable(L);
    if ((s = stmt(d, S_ORPHANS)) == NULL) return abort_txn(L, d, NULL);
    sqlite3_bind_int64(s, 1, sc.hid);
    sqlite3_bind_int64(s, 2, sc.sid);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      lua_pushinteger(L, sqlite3_column_int64(s, 0));
      lua_rawseti(L, 7, ++n);
      lua_pushlstring(L, (const char *)sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1));
      lua_rawseti(L, 7, ++n);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return abort_txn(L, d, NULL);
    for (i = 1; i < n; i += 2) {
      const char *err, *user;
      size_t ulen;
      int exists, empty;
      lua_rawgeti(L, 7, i);
      sc.uid = lua_tointeger(L, -1);
      lua_rawgeti(L, 7, i + 1);
      user = lua_tolstring(L, -1, &ulen);
      store_identity_scope(d, &sc, user, ulen);
      if ((err = load_extra(L, d, &sc, smt, &exists)) != NULL) {
        /* A damaged row is left for the admin to see rather than dropped. */
        lua_settop(L, 7);
        continue;
      }
      empty = table_empty(L, lua_gettop(L));
      lua_settop(L, 7);
      if (empty && (err = del_row(d, &sc, "", 0)) != NULL) return abort_txn(L, d, err);
    }
  }
  if (commit(d) != SQLITE_OK) return abort_txn(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* db:pragma(name) -> the first value a read-only PRAGMA reports, as text */
static int l_pragma(lua_State *L) {
  DB *d = check_db(L);
  const char *name = luaL_checkstring(L, 2);
  sqlite3_stmt *s;
  int rc;
  /* Only the read-only reports the specs and tools need. */
  static const char *const allowed[] = { "integrity_check", "journal_mode", "synchronous",
                                         "busy_timeout", "page_count", "page_size", "freelist_count", NULL };
  int i = luaL_checkoption(L, 2, NULL, allowed);
  BRISK_UNUSED(i);
  entry(d);
  {
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA %s", name);
    if (sqlite3_prepare_v2(d->db, sql, -1, &s, NULL) != SQLITE_OK) return fail(L, d, NULL);
  }
  rc = sqlite3_step(s);
  {
    /* Copied out so the statement is finalized before anything can raise. */
    char out[1024];
    int have = rc == SQLITE_ROW;
    if (have) {
      const unsigned char *t = sqlite3_column_text(s, 0);
      snprintf(out, sizeof out, "%s", t ? (const char *)t : "");
    }
    sqlite3_finalize(s);
    if (have) lua_pushstring(L, out);
    else lua_pushnil(L);
  }
  return 1;
}

/*
** db:checkpoint() -> true | nil, err: copy the write-ahead log into the
** database file and truncate it (for backups, and to measure the file).
*/
static int l_checkpoint(lua_State *L) {
  DB *d = check_db(L);
  entry(d);
  if (sqlite3_wal_checkpoint_v2(d->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL) != SQLITE_OK)
    return fail(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  DB *d = (DB *)luaL_checkudata(L, 1, DB_MT);
  if (d->db) {
    entry(d);
    db_close(d);
  }
  return 0;
}

static int l_tostring(lua_State *L) {
  DB *d = (DB *)luaL_checkudata(L, 1, DB_MT);
  lua_pushfstring(L, "brisk.store.DB (%s)", d->db ? "open" : "closed");
  return 1;
}

/* ---------------------------------------------------------------- opening */

static int exec_fail(lua_State *L, DB *d, const char *what) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, d->db ? sqlite3_errmsg(d->db) : "out of memory");
  if (d->db) sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
  db_close(d);
  return 2;
}

/* Create the schema on first use, check its version and the key. */
static int setup(lua_State *L, DB *d) {
  sqlite3_stmt *s;
  int rc;
  if (sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return exec_fail(L, d, "cannot lock database");
  if (sqlite3_exec(d->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) return exec_fail(L, d, "cannot create schema");
  if ((s = stmt(d, S_META_GET)) == NULL) return exec_fail(L, d, "cannot read schema version");
  sqlite3_bind_text(s, 1, "schema", -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    sqlite3_int64 v = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (v > SCHEMA_VERSION) {
      sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
      db_close(d);
      lua_pushnil(L);
      lua_pushfstring(L, "database schema version %d is newer than this Brisk supports (%d)", (int)v, SCHEMA_VERSION);
      return 2;
    }
  } else {
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return exec_fail(L, d, "cannot read schema version");
    if ((s = stmt(d, S_META_SET)) == NULL) return exec_fail(L, d, "cannot write schema version");
    sqlite3_bind_text(s, 1, "schema", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, SCHEMA_VERSION);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return exec_fail(L, d, "cannot write schema version");
  }
  /*
  ** The key check is a keyed hash of a fixed label: it tells a wrong key from
  ** damaged data, and an encrypted database opened without its key.
  */
  if ((s = stmt(d, S_META_GET)) == NULL) return exec_fail(L, d, "cannot read key check");
  sqlite3_bind_text(s, 1, "key_check", -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  {
    unsigned char want[STORE_KEY_CHECK];
    int have_check = rc == SQLITE_ROW && sqlite3_column_bytes(s, 0) == (int)sizeof want;
    int match = 0;
    if (d->has_key) {
      store_key_check(d, want);
      if (have_check) match = sodium_memcmp(want, sqlite3_column_blob(s, 0), sizeof want) == 0;
    }
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return exec_fail(L, d, "cannot read key check");
    if (have_check && !d->has_key) {
      sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
      db_close(d);
      lua_pushnil(L);
      lua_pushliteral(L, "database is encrypted but no key is configured (brisk_storage_key_file)");
      return 2;
    }
    if (have_check && !match) {
      sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
      db_close(d);
      lua_pushnil(L);
      lua_pushliteral(L, "encryption key does not match this database (brisk_storage_key_file)");
      return 2;
    }
    if (d->has_key && !have_check) {
      if ((s = stmt(d, S_META_SET)) == NULL) return exec_fail(L, d, "cannot write key check");
      sqlite3_bind_text(s, 1, "key_check", -1, SQLITE_STATIC);
      sqlite3_bind_blob(s, 2, want, sizeof want, SQLITE_TRANSIENT);
      rc = sqlite3_step(s);
      sqlite3_reset(s);
      if (rc != SQLITE_DONE) return exec_fail(L, d, "cannot write key check");
    }
  }
  if (sqlite3_exec(d->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) return exec_fail(L, d, "cannot create schema");
  return 0;
}

/*
** store.open(path, { synchronous = "full"|"normal", busy_timeout = ms,
**                    key = 32 bytes, stanza_mt = util.stanza's metatable })
**   -> db | nil, err
** stanza_mt is how the Lua side hands over what the codec needs from
** Prosody: values with that metatable are stored and read back as stanzas.
*/
static int l_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  static const char *const syncs[] = { "full", "normal", NULL };
  int sync = 0, busy = 5000;
  size_t keylen = 0;
  const char *key = NULL;
  int has_smt = 0;
  DB *d;
  char pragma[64];
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "synchronous") != LUA_TNIL) {
      lua_pushstring(L, luaL_tolstring(L, -1, NULL));
      sync = luaL_checkoption(L, -1, NULL, syncs);
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "busy_timeout") != LUA_TNIL) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > 86400000)
        return luaL_error(L, "brisk.store.open: busy_timeout must be an integer number of milliseconds");
      busy = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "key") != LUA_TNIL) {
      key = lua_tolstring(L, -1, &keylen);
      if (key == NULL || keylen != STORE_KEY_BYTES)
        return luaL_error(L, "brisk.store.open: key must be a string of %d bytes", STORE_KEY_BYTES);
    }
    /* the key string stays referenced by the options table while we copy it */
    lua_pop(L, 1);
    switch (lua_getfield(L, 2, "stanza_mt")) {
      case LUA_TNIL: break;
      case LUA_TTABLE: has_smt = 1; break;
      default: return luaL_error(L, "brisk.store.open: stanza_mt must be a table");
    }
    lua_pop(L, 1);
  }
  d = (DB *)lua_newuserdatauv(L, sizeof(DB), 1);
  memset(d, 0, sizeof *d);
  luaL_setmetatable(L, DB_MT);
  if (has_smt) {
    lua_getfield(L, 2, "stanza_mt");
    lua_setiuservalue(L, -2, 1);
  }
  if (key) store_set_key(d, (const unsigned char *)key);
  if (sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
    return exec_fail(L, d, "cannot open database");
  sqlite3_extended_result_codes(d->db, 1);
  sqlite3_busy_timeout(d->db, busy);
  /* WAL: readers never block the writer, and a commit is one append to the log. */
  {
    sqlite3_stmt *s;
    int ok = 0;
    if (sqlite3_prepare_v2(d->db, "PRAGMA journal_mode=WAL", -1, &s, NULL) == SQLITE_OK) {
      if (sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char *m = sqlite3_column_text(s, 0);
        ok = m && strcmp((const char *)m, "wal") == 0;
      }
      sqlite3_finalize(s);
    }
    if (!ok) return exec_fail(L, d, "cannot switch to WAL mode");
  }
  /*
  ** FULL syncs the log on every commit: a commit survives power loss. NORMAL
  ** syncs only at checkpoints: it survives a process crash, but the last
  ** commits may be lost if the machine loses power.
  */
  snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", sync ? "NORMAL" : "FULL");
  if (sqlite3_exec(d->db, pragma, NULL, NULL, NULL) != SQLITE_OK) return exec_fail(L, d, "cannot set synchronous");
  if (setup(L, d)) return 2;
  return 1;
}

static const luaL_Reg db_methods[] = {
  { "get", l_get },
  { "get_key", l_get_key },
  { "get_all", l_get_all },
  { "users", l_users },
  { "stores", l_stores },
  { "set", l_set },
  { "set_keys", l_set_keys },
  { "purge", l_purge },
  { "delete_all", l_delete_all },
  { "pragma", l_pragma },
  { "checkpoint", l_checkpoint },
  { "close", l_close },
  { NULL, NULL }
};

static const luaL_Reg db_meta[] = {
  { "__gc", l_close },
  { "__close", l_close },
  { "__tostring", l_tostring },
  { NULL, NULL }
};

static const luaL_Reg funcs[] = {
  { "open", l_open },
  { NULL, NULL }
};

BRISK_EXPORT int luaopen_brisk_store(lua_State *L) {
  if (sodium_init() < 0) return luaL_error(L, "brisk.store: libsodium failed to initialise");
  luaL_newmetatable(L, STORE_BUFFER_MT);
  luaL_setfuncs(L, store_buffer_meta, 0);
  lua_pop(L, 1);
  luaL_newmetatable(L, DB_MT);
  luaL_setfuncs(L, db_meta, 0);
  luaL_newlib(L, db_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  luaL_setfuncs(L, store_codec_functions, 0);
  lua_pushinteger(L, STORE_FORMAT_VERSION);
  lua_setfield(L, -2, "format_version");
  lua_pushinteger(L, SCHEMA_VERSION);
  lua_setfield(L, -2, "schema_version");
  brisk_set_version(L);
  return 1;
}
