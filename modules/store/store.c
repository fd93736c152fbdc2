/*
** store.c — brisk.store: Prosody keyval/map storage in one SQLite database.
** This file opens the module; the work is done by its parts (store.h).
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
** Every method returns its result, or fail (nil) plus a message when it
** cannot; a lookup that finds nothing returns fail alone; misuse (bad
** arguments, a closed database) raises. mod_storage_brisk turns this into
** exactly what the stock drivers return.
**
** The module loads no Lua module: what it needs from Prosody (util.stanza's
** metatable) is passed to store.open by the Lua side.
*/
#include <sodium.h>
#include "store.h"

BRISK_EXPORT int luaopen_brisk_store(lua_State *L) {
  if (sodium_init() < 0) return luaL_error(L, "brisk.store: libsodium failed to initialise");
  luaL_newmetatable(L, STORE_BUFFER_MT);
  luaL_setfuncs(L, store_buffer_meta, 0);
  lua_pop(L, 1);
  luaL_newmetatable(L, STORE_DB_MT);
  luaL_setfuncs(L, store_db_meta, 0);
  lua_newtable(L);                              /* the DB's methods */
  luaL_setfuncs(L, store_read_methods, 0);
  luaL_setfuncs(L, store_write_methods, 0);
  luaL_setfuncs(L, store_db_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_newtable(L);                              /* the module */
  luaL_setfuncs(L, store_db_functions, 0);
  luaL_setfuncs(L, store_codec_functions, 0);
  lua_pushinteger(L, STORE_FORMAT_VERSION);
  lua_setfield(L, -2, "format_version");
  lua_pushinteger(L, STORE_SCHEMA_VERSION);
  lua_setfield(L, -2, "schema_version");
  brisk_set_version(L);
  return 1;
}
