/*
** db.c — the database handle: opening a file (WAL, synchronous mode, busy
** timeout), creating and checking the schema and the encryption key,
** prepared statements and transactions, interned host/user/store names,
** and the methods that maintain the file (pragma, checkpoint, close).
**
** Statements are prepared once and owned by the database userdata; a method
** cut short by a Lua error leaves them reset and its transaction rolled back
** by the next call's store_entry.
*/
#include <string.h>
#include <stdio.h>
#include <sqlite3.h>
#include <sodium.h>
#include "store.h"

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

static void free_buffers(lua_State *L, DB *d) {
  store_buffer_free(L, &d->buf);
  store_buffer_free(L, &d->out);
  if (d->plain.p) sodium_memzero(d->plain.p, d->plain.cap);
  store_buffer_free(L, &d->plain);
  store_buffer_free(L, &d->ctx);
  store_buffer_free(L, &d->ad);
}

static void db_close(lua_State *L, DB *d) {
  int i;
  for (i = 0; i < S_COUNT; i++) {
    if (d->st[i]) sqlite3_finalize(d->st[i]);
    d->st[i] = NULL;
  }
  if (d->db) sqlite3_close_v2(d->db);
  d->db = NULL;
  free_buffers(L, d);
  store_clear_key(d);
}

DB *store_check_db(lua_State *L) {
  DB *d = (DB *)luaL_checkudata(L, 1, STORE_DB_MT);
  if (d->db == NULL) brisk_raise(L, "brisk.store: database is closed");
  return d;
}

/*
** End of a method that used the DB's buffers: what one large value grew
** them to is given back, the plaintext wiped first. A method cut short by a
** Lua error skips this; the next one to finish does it.
*/
int store_leave(lua_State *L, DB *d, int nresults) {
  if (d->plain.cap > STORE_BUFFER_IDLE) sodium_memzero(d->plain.p, d->plain.cap);
  store_buffer_trim(L, &d->buf);
  store_buffer_trim(L, &d->out);
  store_buffer_trim(L, &d->plain);
  store_buffer_trim(L, &d->ctx);
  store_buffer_trim(L, &d->ad);
  return nresults;
}

/* Push fail and a message (SQLite's when msg is NULL). */
int store_fail(lua_State *L, DB *d, const char *msg) {
  const char *m = msg ? msg : sqlite3_errmsg(d->db);
  luaL_pushfail(L);
  lua_pushstring(L, m);
  return 2;
}

sqlite3_stmt *store_stmt(DB *d, int which) {
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
void store_entry(DB *d) {
  int i;
  for (i = 0; i < S_COUNT; i++)
    if (d->st[i]) sqlite3_reset(d->st[i]);
  if (d->in_txn) {
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    d->in_txn = 0;
  }
}

static int run(DB *d, int which) {
  sqlite3_stmt *s = store_stmt(d, which);
  int rc;
  if (s == NULL) return SQLITE_ERROR;
  rc = sqlite3_step(s);
  sqlite3_reset(s);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

int store_begin(DB *d) {
  int rc = run(d, S_BEGIN);
  if (rc == SQLITE_OK) d->in_txn = 1;
  return rc;
}

int store_commit(DB *d) {
  int rc = run(d, S_COMMIT);
  if (rc == SQLITE_OK) d->in_txn = 0;
  return rc;
}

/* Roll back, then push fail and msg (msg NULL: SQLite's message, kept before the rollback). */
int store_abort(lua_State *L, DB *d, const char *msg) {
  if (msg == NULL) msg = lua_pushstring(L, sqlite3_errmsg(d->db));
  if (d->in_txn) {
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    d->in_txn = 0;
  }
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

/* Look a name up, creating it when "create"; *id is 0 when absent. */
int store_name_id(DB *d, const char *name, size_t len, int create, sqlite3_int64 *id) {
  sqlite3_stmt *s = store_stmt(d, S_NAME_ID);
  int rc;
  *id = 0;
  if (s == NULL) return SQLITE_ERROR;
  sqlite3_bind_text(s, 1, name, (int)len, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) *id = sqlite3_column_int64(s, 0);
  sqlite3_reset(s);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return rc;
  if (*id || !create) return SQLITE_OK;
  s = store_stmt(d, S_NAME_ADD);
  if (s == NULL) return SQLITE_ERROR;
  sqlite3_bind_text(s, 1, name, (int)len, SQLITE_STATIC);
  rc = sqlite3_step(s);
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) return rc;
  *id = sqlite3_last_insert_rowid(d->db);
  return SQLITE_OK;
}

/* Arguments host (string), user (string or nil: host-level data), store (string). */
void store_check_scope(lua_State *L, int first, Scope *sc, int with_user) {
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
int store_resolve(DB *d, Scope *sc, int create, int *found) {
  int rc;
  *found = 0;
  if ((rc = store_name_id(d, sc->host, sc->hlen, create, &sc->hid)) != SQLITE_OK) return rc;
  if (sc->user && (rc = store_name_id(d, sc->user, sc->ulen, create, &sc->uid)) != SQLITE_OK) return rc;
  if ((rc = store_name_id(d, sc->store, sc->slen, create, &sc->sid)) != SQLITE_OK) return rc;
  *found = sc->hid && sc->sid && (sc->user == NULL || sc->uid);
  return SQLITE_OK;
}

void store_bind_scope(sqlite3_stmt *s, const Scope *sc) {
  sqlite3_bind_int64(s, 1, sc->hid);
  sqlite3_bind_int64(s, 2, sc->uid);
  sqlite3_bind_int64(s, 3, sc->sid);
}

/*
** The forms a row key is looked for in, one policy for every reader and
** writer: with an encryption key, a non-empty key's row is first sought
** under its keyed hash, then under its text, which a row written before
** encryption was turned on still has; otherwise only the text exists.
** Writes use the first form. The hash lives in d->hk: one KeyForm at a time.
*/
int store_key_first(DB *d, KeyForm *f, const char *key, size_t klen) {
  f->key = key;
  f->klen = klen;
  f->hashed = store_hashed(d, klen);
  if (f->hashed) {
    store_hash_key(d, key, klen, d->hk);
    f->stored = (const char *)d->hk;
    f->slen = STORE_HASH_LEN;
  } else {
    f->stored = key;
    f->slen = klen;
  }
  return 1;
}

int store_key_next(KeyForm *f) {
  if (!f->hashed) return 0;
  f->hashed = 0;
  f->stored = f->key;
  f->slen = f->klen;
  return 1;
}

/* Bind a key column in the form f: the hash as a BLOB, or the text. */
void store_bind_key(sqlite3_stmt *s, int col, const KeyForm *f) {
  if (f->hashed) sqlite3_bind_blob(s, col, f->stored, (int)f->slen, SQLITE_STATIC);
  else sqlite3_bind_text(s, col, f->stored, (int)f->slen, SQLITE_STATIC);
}

/*
** Push util.stanza's metatable, which the Lua side passed to open() (the
** database's user value), and return its stack index, or 0 when the
** database was opened without one (stanzas are then plain tables).
*/
int store_push_stanza_mt(lua_State *L) {
  return lua_getiuservalue(L, 1, 1) == LUA_TTABLE ? lua_gettop(L) : 0;
}

int store_table_empty(lua_State *L, int idx) {
  int empty;
  lua_pushnil(L);
  empty = !lua_next(L, idx);
  if (!empty) lua_pop(L, 2);
  return empty;
}

/* A key that lives in its own row: a non-empty string. */
int store_own_row(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING && lua_rawlen(L, idx) > 0;
}

/* db:pragma(name) -> the first value a read-only PRAGMA reports, as text | fail (no value) */
static int l_pragma(lua_State *L) {
  DB *d = store_check_db(L);
  const char *name = luaL_checkstring(L, 2);
  sqlite3_stmt *s;
  int rc;
  /* Only the read-only reports the specs and tools need. */
  static const char *const allowed[] = { "integrity_check", "journal_mode", "synchronous",
                                         "busy_timeout", "page_count", "page_size", "freelist_count", NULL };
  int i = luaL_checkoption(L, 2, NULL, allowed);
  BRISK_UNUSED(i);
  store_entry(d);
  {
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA %s", name);
    if (sqlite3_prepare_v2(d->db, sql, -1, &s, NULL) != SQLITE_OK) return store_fail(L, d, NULL);
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
    else luaL_pushfail(L);
  }
  return 1;
}

/*
** db:checkpoint() -> true | fail, err: copy the write-ahead log into the
** database file and truncate it (for backups, and to measure the file).
*/
static int l_checkpoint(lua_State *L) {
  DB *d = store_check_db(L);
  store_entry(d);
  if (sqlite3_wal_checkpoint_v2(d->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL) != SQLITE_OK)
    return store_fail(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  DB *d = (DB *)luaL_checkudata(L, 1, STORE_DB_MT);
  if (d->db) {
    store_entry(d);
    db_close(L, d);
  }
  return 0;
}

static int l_tostring(lua_State *L) {
  DB *d = (DB *)luaL_checkudata(L, 1, STORE_DB_MT);
  lua_pushfstring(L, "brisk.store.DB (%s)", d->db ? "open" : "closed");
  return 1;
}

static int exec_fail(lua_State *L, DB *d, const char *what) {
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", what, d->db ? sqlite3_errmsg(d->db) : "out of memory");
  if (d->db) sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
  db_close(L, d);
  return 2;
}

/* Create the schema on first use, check its version and the key. */
static int setup(lua_State *L, DB *d) {
  sqlite3_stmt *s;
  int rc;
  if (sqlite3_exec(d->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return exec_fail(L, d, "cannot lock database");
  if (sqlite3_exec(d->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) return exec_fail(L, d, "cannot create schema");
  if ((s = store_stmt(d, S_META_GET)) == NULL) return exec_fail(L, d, "cannot read schema version");
  sqlite3_bind_text(s, 1, "schema", -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    sqlite3_int64 v = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (v > STORE_SCHEMA_VERSION) {
      sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
      db_close(L, d);
      luaL_pushfail(L);
      lua_pushfstring(L, "database schema version %d is newer than this Brisk supports (%d)", (int)v, STORE_SCHEMA_VERSION);
      return 2;
    }
  } else {
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return exec_fail(L, d, "cannot read schema version");
    if ((s = store_stmt(d, S_META_SET)) == NULL) return exec_fail(L, d, "cannot write schema version");
    sqlite3_bind_text(s, 1, "schema", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, STORE_SCHEMA_VERSION);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return exec_fail(L, d, "cannot write schema version");
  }
  /*
  ** The key check is a keyed hash of a fixed label: it tells a wrong key from
  ** damaged data, and an encrypted database opened without its key.
  */
  if ((s = store_stmt(d, S_META_GET)) == NULL) return exec_fail(L, d, "cannot read key check");
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
      db_close(L, d);
      luaL_pushfail(L);
      lua_pushliteral(L, "database is encrypted but no key is configured (brisk_storage_key_file)");
      return 2;
    }
    if (have_check && !match) {
      sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
      db_close(L, d);
      luaL_pushfail(L);
      lua_pushliteral(L, "encryption key does not match this database (brisk_storage_key_file)");
      return 2;
    }
    if (d->has_key && !have_check) {
      if ((s = store_stmt(d, S_META_SET)) == NULL) return exec_fail(L, d, "cannot write key check");
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
**   -> db | fail, err
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
  luaL_setmetatable(L, STORE_DB_MT);
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

const luaL_Reg store_db_functions[] = {
  { "open", l_open },
  { NULL, NULL }
};

const luaL_Reg store_db_methods[] = {
  { "pragma", l_pragma },
  { "checkpoint", l_checkpoint },
  { "close", l_close },
  { NULL, NULL }
};

const luaL_Reg store_db_meta[] = {
  { "__gc", l_close },
  { "__close", l_close },
  { "__tostring", l_tostring },
  { NULL, NULL }
};
