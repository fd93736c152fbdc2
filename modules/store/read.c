/*
** read.c — the reading methods of a database: a whole keyval store (get),
** one key (get_key), one key of every user (get_all), and the users and
** stores that have data. Every row is unsealed (checksum or decryption,
** bound to its row) before it is decoded; a damaged row makes the read
** return fail plus a message naming the key, never a partial result.
*/
#include <string.h>
#include <sqlite3.h>
#include "store.h"

/* Push fail and the error "msg" about key "key"; returns 2. */
static int key_fail(lua_State *L, int base, const char *msg, const char *key, size_t klen) {
  char shown[64];
  size_t n = klen < sizeof shown - 1 ? klen : sizeof shown - 1;
  memcpy(shown, key, n);
  shown[n] = '\0';
  lua_settop(L, base);
  luaL_pushfail(L);
  if (klen == 0) lua_pushfstring(L, "%s (metadata row)", msg);
  else lua_pushfstring(L, "%s (key '%s')", msg, shown);
  return 2;
}

/*
** Read the "" row of a scope: pushes names and extras (both empty tables when
** the row is absent). Returns NULL or an error (nothing pushed).
*/
const char *store_load_extra(lua_State *L, DB *d, const Scope *sc, int smt, int *exists) {
  sqlite3_stmt *s = store_stmt(d, S_ROW);
  int rc, kind;
  Cursor c;
  const char *err = NULL;
  *exists = 0;
  if (s == NULL) return sqlite3_errmsg(d->db);
  store_bind_scope(s, sc);
  sqlite3_bind_text(s, 4, "", 0, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    store_identity_key(L, d, "", 0);
    err = store_unseal(L, d, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0), &kind, &c);
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

/* db:get(host, user, store, roster) -> table | fail (nothing stored) | fail, err */
static int get(lua_State *L, DB *d) {
  Scope sc;
  int found, rc, result, names, keys, smt;
  sqlite3_stmt *s;
  store_check_scope(L, 2, &sc, 1);
  lua_settop(L, 5);
  smt = store_push_stanza_mt(L);
  store_entry(d);
  if (store_resolve(d, &sc, 0, &found) != SQLITE_OK) return store_fail(L, d, NULL);
  if (!found) { luaL_pushfail(L); return 1; }
  store_identity_scope(L, d, &sc, sc.user, sc.ulen);
  /*
  ** Counting the rows first (a walk of the same few b-tree pages) lets the
  ** result table be allocated once instead of growing through a dozen rehashes.
  */
  {
    sqlite3_int64 n = 0;
    if ((s = store_stmt(d, S_NROWS)) == NULL) return store_fail(L, d, NULL);
    store_bind_scope(s, &sc);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) n = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW) return store_fail(L, d, NULL);
    if (n == 0) { luaL_pushfail(L); return 1; }
    lua_createtable(L, 0, n > 1000000 ? 1000000 : (int)n);
  }
  result = lua_gettop(L);
  lua_newtable(L);
  names = lua_gettop(L);
  keys = store_push_item_keys(L);
  if ((s = store_stmt(d, S_ROWS)) == NULL) return store_fail(L, d, NULL);
  store_bind_scope(s, &sc);
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
    store_identity_key(L, d, key, klen);
    err = store_unseal(L, d, blob, blen, &kind, &c);
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
  if (rc != SQLITE_DONE) return store_fail(L, d, NULL);
  lua_settop(L, result);
  if (store_table_empty(L, result)) luaL_pushfail(L);
  return 1;
}

static int l_get(lua_State *L) {
  DB *d = store_check_db(L);
  return store_leave(L, d, get(L, d));
}

/* db:get_key(host, user, store, roster, key) -> value | fail (no such key) | fail, err */
static int get_key(lua_State *L, DB *d) {
  Scope sc;
  int found, rc, exists, roster, smt;
  const char *err;
  store_check_scope(L, 2, &sc, 1);
  roster = lua_toboolean(L, 5);
  luaL_checkany(L, 6);
  lua_settop(L, 6);
  smt = store_push_stanza_mt(L); /* at 7 */
  store_entry(d);
  if (store_resolve(d, &sc, 0, &found) != SQLITE_OK) return store_fail(L, d, NULL);
  if (!found) { luaL_pushfail(L); return 1; }
  store_identity_scope(L, d, &sc, sc.user, sc.ulen);
  if (!store_own_row(L, 6) || roster) {
    /* Non-string keys live in the "" row; roster contacts need its group names. */
    if ((err = store_load_extra(L, d, &sc, smt, &exists)) != NULL) return key_fail(L, 6, err, "", 0);
    if (!store_own_row(L, 6)) {
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
    KeyForm f;
    int more;
    for (more = store_key_first(d, &f, key, klen); more; more = store_key_next(&f)) {
      sqlite3_stmt *s = store_stmt(d, S_ROW);
      int kind;
      Cursor c;
      if (s == NULL) return store_fail(L, d, NULL);
      store_bind_scope(s, &sc);
      store_bind_key(s, 4, &f);
      rc = sqlite3_step(s);
      if (rc == SQLITE_DONE) { sqlite3_reset(s); continue; }
      if (rc != SQLITE_ROW) { sqlite3_reset(s); return store_fail(L, d, NULL); }
      store_identity_key(L, d, f.stored, f.slen);
      err = store_unseal(L, d, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0), &kind, &c);
      if (!err && f.hashed) {
        const char *real;
        size_t rlen;
        err = store_take_key(d, &c, (const unsigned char *)f.stored, f.slen, &real, &rlen);
        if (!err && (rlen != klen || memcmp(real, key, klen) != 0)) err = "corrupt data (row key mismatch)";
      }
      if (!err) err = store_decode_payload(L, &c, kind, smt, 8, 9);
      sqlite3_reset(s);
      if (err) return key_fail(L, 6, err, key, klen);
      return 1;
    }
    luaL_pushfail(L);
    return 1;
  }
}

static int l_get_key(lua_State *L) {
  DB *d = store_check_db(L);
  return store_leave(L, d, get_key(L, d));
}

/* db:get_all(host, store, roster, key) -> { [user] = value } | fail (none) | fail, err */
static int get_all(lua_State *L, DB *d) {
  Scope sc;
  int found, rc, roster, result, keys, smt, more;
  size_t klen;
  const char *key;
  sqlite3_stmt *s;
  KeyForm f;
  store_check_scope(L, 2, &sc, 0);
  roster = lua_toboolean(L, 4);
  key = luaL_checklstring(L, 5, &klen);
  lua_settop(L, 5);
  smt = store_push_stanza_mt(L);
  store_entry(d);
  if (store_resolve(d, &sc, 0, &found) != SQLITE_OK) return store_fail(L, d, NULL);
  if (!found || klen == 0) { luaL_pushfail(L); return 1; }
  lua_newtable(L);
  result = lua_gettop(L);
  keys = store_push_item_keys(L);
  for (more = store_key_first(d, &f, key, klen); more; more = store_key_next(&f)) {
    if ((s = store_stmt(d, S_KEY_ALL)) == NULL) return store_fail(L, d, NULL);
    sqlite3_bind_int64(s, 1, sc.hid);
    sqlite3_bind_int64(s, 2, sc.sid);
    store_bind_key(s, 3, &f);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      const char *user = (const char *)sqlite3_column_text(s, 1);
      size_t ulen = (size_t)sqlite3_column_bytes(s, 1);
      const char *err = NULL;
      int kind, exists;
      Cursor c;
      if (user == NULL) user = "";
      sc.uid = sqlite3_column_int64(s, 0);
      store_identity_scope(L, d, &sc, user, ulen);
      if (roster) {
        /* This user's group names: the "" row, read with its own statement. */
        if ((err = store_load_extra(L, d, &sc, smt, &exists)) != NULL) { sqlite3_reset(s); return key_fail(L, 5, err, "", 0); }
        lua_pop(L, 1);
      } else {
        lua_newtable(L);
      }
      store_identity_key(L, d, f.stored, f.slen);
      err = store_unseal(L, d, sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2), &kind, &c);
      if (!err && f.hashed) {
        const char *real;
        size_t rlen;
        err = store_take_key(d, &c, (const unsigned char *)f.stored, f.slen, &real, &rlen);
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
    if (rc != SQLITE_DONE) return store_fail(L, d, NULL);
  }
  lua_settop(L, result);
  if (store_table_empty(L, result)) luaL_pushfail(L);
  return 1;
}

static int l_get_all(lua_State *L) {
  DB *d = store_check_db(L);
  return store_leave(L, d, get_all(L, d));
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
  if (rc != SQLITE_DONE) return store_fail(L, d, NULL);
  return 1;
}

/* db:users(host, store) -> { user, ... } */
static int l_users(lua_State *L) {
  DB *d = store_check_db(L);
  Scope sc;
  int found;
  sqlite3_stmt *s;
  store_check_scope(L, 2, &sc, 0);
  store_entry(d);
  if (store_resolve(d, &sc, 0, &found) != SQLITE_OK) return store_fail(L, d, NULL);
  if (!found) { lua_newtable(L); return 1; }
  if ((s = store_stmt(d, S_USERS)) == NULL) return store_fail(L, d, NULL);
  sqlite3_bind_int64(s, 1, sc.hid);
  sqlite3_bind_int64(s, 2, sc.sid);
  return name_list(L, d, s);
}

/* db:stores(host, user) -> { store, ... }; user nil: host-level, true: any user */
static int l_stores(lua_State *L) {
  DB *d = store_check_db(L);
  const char *host, *user = NULL;
  size_t hlen, ulen = 0;
  sqlite3_int64 hid, uid = 0;
  int any = lua_type(L, 3) == LUA_TBOOLEAN && lua_toboolean(L, 3);
  sqlite3_stmt *s;
  host = luaL_checklstring(L, 2, &hlen);
  if (!any && !lua_isnoneornil(L, 3)) user = luaL_checklstring(L, 3, &ulen);
  store_entry(d);
  if (store_name_id(d, host, hlen, 0, &hid) != SQLITE_OK) return store_fail(L, d, NULL);
  if (user && store_name_id(d, user, ulen, 0, &uid) != SQLITE_OK) return store_fail(L, d, NULL);
  if (!hid || (user && !uid)) { lua_newtable(L); return 1; }
  if ((s = store_stmt(d, any ? S_STORES_ANY : S_STORES)) == NULL) return store_fail(L, d, NULL);
  sqlite3_bind_int64(s, 1, hid);
  if (!any) sqlite3_bind_int64(s, 2, uid);
  return name_list(L, d, s);
}

const luaL_Reg store_read_methods[] = {
  { "get", l_get },
  { "get_key", l_get_key },
  { "get_all", l_get_all },
  { "users", l_users },
  { "stores", l_stores },
  { NULL, NULL }
};
