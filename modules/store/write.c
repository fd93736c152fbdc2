/*
** write.c — the writing methods of a database: a whole keyval store (set),
** some keys of a map store (set_keys), every store of one user (purge) and
** one key of every user (delete_all). Each is one transaction: applied
** completely or not at all. A roster's contacts are one row each, so one
** changed contact rewrites one small row (and the metadata row) whatever
** the roster's size.
*/
#include <string.h>
#include <stdlib.h>
#include <sqlite3.h>
#include "store.h"

/* Delete a key's row in one form. */
static const char *del_form(DB *d, const Scope *sc, const KeyForm *f) {
  sqlite3_stmt *s = store_stmt(d, S_DEL);
  const char *err = NULL;
  if (s == NULL) return sqlite3_errmsg(d->db);
  store_bind_scope(s, sc);
  store_bind_key(s, 4, f);
  if (sqlite3_step(s) != SQLITE_DONE) err = sqlite3_errmsg(d->db);
  sqlite3_reset(s);
  return err;
}

/*
** Encode the value at vidx for key (its own row) and store it, in the key's
** first form. "legacy": also delete its other forms, e.g. a plain-text row
** a database may hold from before encryption was turned on (set() has
** deleted them all).
*/
static const char *put_row(lua_State *L, DB *d, const Scope *sc, const char *key, size_t klen,
                           int vidx, int roster, int smt, int dict, int names, int legacy) {
  const char *err = NULL;
  int kind;
  KeyForm f;
  sqlite3_stmt *s;
  store_key_first(d, &f, key, klen);
  d->buf.n = 0;
  if (f.hashed) store_put_str(L, &d->buf, key, klen);
  if (roster) {
    kind = store_encode_item(L, &d->buf, vidx, smt, dict, names, &err);
    if (kind < 0) return err;
  } else {
    if ((err = store_encode_value(L, &d->buf, vidx, smt)) != NULL) return err;
    kind = STORE_KIND_VALUE;
  }
  store_identity_key(L, d, f.stored, f.slen);
  if ((err = store_seal(L, d, kind)) != NULL) return err;
  if ((s = store_stmt(d, S_PUT)) == NULL) return sqlite3_errmsg(d->db);
  store_bind_scope(s, sc);
  store_bind_key(s, 4, &f);
  sqlite3_bind_blob(s, 5, d->out.p, (int)d->out.n, SQLITE_STATIC);
  if (sqlite3_step(s) != SQLITE_DONE) err = sqlite3_errmsg(d->db);
  sqlite3_reset(s);
  while (!err && legacy && store_key_next(&f)) err = del_form(d, sc, &f);
  return err;
}

/* Delete a key's row in every form it may have (hashed, plain text). */
static const char *del_row(DB *d, const Scope *sc, const char *key, size_t klen) {
  const char *err = NULL;
  KeyForm f;
  int more;
  for (more = store_key_first(d, &f, key, klen); more && !err; more = store_key_next(&f))
    err = del_form(d, sc, &f);
  return err;
}

/* Write the "" row from names and extras, or delete it when it would say nothing. */
static const char *put_extra(lua_State *L, DB *d, const Scope *sc, int roster, int smt, int names, int extras) {
  const char *err;
  sqlite3_stmt *s;
  int kind;
  if (store_table_empty(L, extras)) {
    int others = 0;
    if (roster && lua_rawlen(L, names) > 0) {
      /* Group names are only worth keeping while some contact may use them. */
      if ((s = store_stmt(d, S_OTHER_ROWS)) == NULL) return sqlite3_errmsg(d->db);
      store_bind_scope(s, sc);
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
  store_identity_key(L, d, "", 0);
  if ((err = store_seal(L, d, kind)) != NULL) return err;
  if ((s = store_stmt(d, S_PUT)) == NULL) return sqlite3_errmsg(d->db);
  store_bind_scope(s, sc);
  sqlite3_bind_text(s, 4, "", 0, SQLITE_STATIC);
  sqlite3_bind_blob(s, 5, d->out.p, (int)d->out.n, SQLITE_STATIC);
  err = sqlite3_step(s) == SQLITE_DONE ? NULL : sqlite3_errmsg(d->db);
  sqlite3_reset(s);
  return err;
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

/* db:set(host, user, store, roster, data|nil) -> true | fail, err (one transaction) */
static int set(lua_State *L, DB *d) {
  Scope sc;
  int found, roster, smt, names, dict, extras;
  const char *err = NULL;
  sqlite3_stmt *s;
  store_check_scope(L, 2, &sc, 1);
  roster = lua_toboolean(L, 5);
  if (!lua_isnoneornil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
  lua_settop(L, 6);
  smt = store_push_stanza_mt(L);
  store_entry(d);
  if (store_begin(d) != SQLITE_OK) return store_fail(L, d, NULL);
  if (store_resolve(d, &sc, 1, &found) != SQLITE_OK) return store_abort(L, d, NULL);
  if ((s = store_stmt(d, S_DEL_SCOPE)) == NULL) return store_abort(L, d, NULL);
  store_bind_scope(s, &sc);
  if (sqlite3_step(s) != SQLITE_DONE) { sqlite3_reset(s); return store_abort(L, d, NULL); }
  sqlite3_reset(s);
  if (lua_istable(L, 6)) {
    store_identity_scope(L, d, &sc, sc.user, sc.ulen);
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
        if (store_own_row(L, -1)) n++;
      }
      sorted = (RowKey *)lua_newuserdatauv(L, (n ? n : 1) * sizeof(RowKey), 0);
      i = 0;
      lua_pushnil(L);
      while (lua_next(L, 6)) {
        lua_pop(L, 1);
        /* The strings stay alive: they are keys of the data table. */
        if (store_own_row(L, -1) && i < n) {
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
        if (err) return store_abort(L, d, err);
      }
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      if (store_own_row(L, -2)) {
        /* written above */
      } else if (store_key_ok(L, -2)) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, extras);
      } else {
        return store_abort(L, d, "unsupported key type (only strings, numbers and booleans)");
      }
      lua_pop(L, 1);
    }
    if ((err = put_extra(L, d, &sc, roster, smt, names, extras)) != NULL) return store_abort(L, d, err);
  }
  if (store_commit(d) != SQLITE_OK) return store_abort(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_set(lua_State *L) {
  DB *d = store_check_db(L);
  return store_leave(L, d, set(L, d));
}

/* db:set_keys(host, user, store, roster, { [key] = value or remove }, remove) -> true | fail, err */
static int set_keys(lua_State *L, DB *d) {
  Scope sc;
  int found, roster, smt, exists, names, dict, extras, dirty = 0, removed = 0;
  lua_Integer nnames;
  const char *err = NULL;
  store_check_scope(L, 2, &sc, 1);
  roster = lua_toboolean(L, 5);
  luaL_checktype(L, 6, LUA_TTABLE);
  luaL_checkany(L, 7);
  lua_settop(L, 7);
  smt = store_push_stanza_mt(L); /* at 8 */
  store_entry(d);
  if (store_begin(d) != SQLITE_OK) return store_fail(L, d, NULL);
  if (store_resolve(d, &sc, 1, &found) != SQLITE_OK) return store_abort(L, d, NULL);
  store_identity_scope(L, d, &sc, sc.user, sc.ulen);
  /* The "" row is read only when needed: rosters (group names) or non-string keys. */
  if (!roster) {
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      lua_pop(L, 1);
      if (!store_own_row(L, -1)) { dirty = 1; lua_pop(L, 1); break; }
    }
  }
  if (roster || dirty) {
    if ((err = store_load_extra(L, d, &sc, smt, &exists)) != NULL) {
      lua_settop(L, 8);
      return store_abort(L, d, lua_pushfstring(L, "%s (metadata row)", err));
    }
  } else {
    lua_newtable(L);
    lua_newtable(L);
  }
  dirty = 0;
  extras = lua_gettop(L);
  names = extras - 1;
  dict = store_push_name_index(L, names);
  nnames = (lua_Integer)lua_rawlen(L, names);
  lua_pushnil(L);
  while (lua_next(L, 6)) {
    int removing = lua_rawequal(L, -1, 7);
    if (store_own_row(L, -2)) {
      size_t klen;
      const char *key = lua_tolstring(L, -2, &klen);
      removed |= removing && roster;
      err = removing ? del_row(d, &sc, key, klen)
                     : put_row(L, d, &sc, key, klen, lua_gettop(L), roster, smt, dict, names, 1);
      if (err) return store_abort(L, d, err);
    } else if (store_key_ok(L, -2)) {
      lua_pushvalue(L, -2);
      if (removing) lua_pushnil(L);
      else lua_pushvalue(L, -2);
      lua_rawset(L, extras);
      dirty = 1;
    } else {
      return store_abort(L, d, "unsupported key type (only strings, numbers and booleans)");
    }
    lua_pop(L, 1);
  }
  /*
  ** Rewrite the "" row when its entries or names changed, and check it after
  ** removals: with no entries left it must go once its contacts are gone, or
  ** the user would still be listed by users() with nothing stored.
  */
  if (dirty || removed || (lua_Integer)lua_rawlen(L, names) != nnames) {
    if ((err = put_extra(L, d, &sc, roster, smt, names, extras)) != NULL) return store_abort(L, d, err);
  }
  if (store_commit(d) != SQLITE_OK) return store_abort(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_set_keys(lua_State *L) {
  DB *d = store_check_db(L);
  return store_leave(L, d, set_keys(L, d));
}

/* db:purge(host, user) -> true | fail, err: every store of one user */
static int l_purge(lua_State *L) {
  DB *d = store_check_db(L);
  size_t hlen, ulen;
  const char *host = luaL_checklstring(L, 2, &hlen);
  const char *user = luaL_checklstring(L, 3, &ulen);
  sqlite3_int64 hid, uid;
  sqlite3_stmt *s;
  store_entry(d);
  if (store_name_id(d, host, hlen, 0, &hid) != SQLITE_OK || store_name_id(d, user, ulen, 0, &uid) != SQLITE_OK)
    return store_fail(L, d, NULL);
  if (hid && uid) {
    if ((s = store_stmt(d, S_PURGE)) == NULL) return store_fail(L, d, NULL);
    sqlite3_bind_int64(s, 1, hid);
    sqlite3_bind_int64(s, 2, uid);
    if (sqlite3_step(s) != SQLITE_DONE) { sqlite3_reset(s); return store_fail(L, d, NULL); }
    sqlite3_reset(s);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* db:delete_all(host, store, roster, key) -> true | fail, err: one key of every user */
static int delete_all(lua_State *L, DB *d) {
  Scope sc;
  int found, roster, rc, smt;
  size_t klen;
  const char *key;
  sqlite3_stmt *s;
  store_check_scope(L, 2, &sc, 0);
  roster = lua_toboolean(L, 4);
  key = luaL_checklstring(L, 5, &klen);
  lua_settop(L, 5);
  smt = store_push_stanza_mt(L); /* at 6 */
  store_entry(d);
  if (store_resolve(d, &sc, 0, &found) != SQLITE_OK) return store_fail(L, d, NULL);
  if (!found || klen == 0) { lua_pushboolean(L, 1); return 1; }
  if (store_begin(d) != SQLITE_OK) return store_fail(L, d, NULL);
  {
    KeyForm f;
    int more;
    for (more = store_key_first(d, &f, key, klen); more; more = store_key_next(&f)) {
      if ((s = store_stmt(d, S_KEY_DEL)) == NULL) return store_abort(L, d, NULL);
      sqlite3_bind_int64(s, 1, sc.hid);
      sqlite3_bind_int64(s, 2, sc.sid);
      store_bind_key(s, 3, &f);
      rc = sqlite3_step(s);
      sqlite3_reset(s);
      if (rc != SQLITE_DONE) return store_abort(L, d, NULL);
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
    if ((s = store_stmt(d, S_ORPHANS)) == NULL) return store_abort(L, d, NULL);
    sqlite3_bind_int64(s, 1, sc.hid);
    sqlite3_bind_int64(s, 2, sc.sid);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      lua_pushinteger(L, sqlite3_column_int64(s, 0));
      lua_rawseti(L, 7, ++n);
      lua_pushlstring(L, (const char *)sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1));
      lua_rawseti(L, 7, ++n);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return store_abort(L, d, NULL);
    for (i = 1; i < n; i += 2) {
      const char *err, *user;
      size_t ulen;
      int exists, empty;
      lua_rawgeti(L, 7, i);
      sc.uid = lua_tointeger(L, -1);
      lua_rawgeti(L, 7, i + 1);
      user = lua_tolstring(L, -1, &ulen);
      store_identity_scope(L, d, &sc, user, ulen);
      if (store_load_extra(L, d, &sc, smt, &exists) != NULL) {
        /* A damaged row is left for the admin to see rather than dropped. */
        lua_settop(L, 7);
        continue;
      }
      empty = store_table_empty(L, lua_gettop(L));
      lua_settop(L, 7);
      if (empty && (err = del_row(d, &sc, "", 0)) != NULL) return store_abort(L, d, err);
    }
  }
  if (store_commit(d) != SQLITE_OK) return store_abort(L, d, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_delete_all(lua_State *L) {
  DB *d = store_check_db(L);
  return store_leave(L, d, delete_all(L, d));
}

const luaL_Reg store_write_methods[] = {
  { "set", l_set },
  { "set_keys", l_set_keys },
  { "purge", l_purge },
  { "delete_all", l_delete_all },
  { NULL, NULL }
};
