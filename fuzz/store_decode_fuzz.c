/*
** store_decode_fuzz.c — libFuzzer target for brisk.store's decoders.
**
** The first input byte picks the decoder (general value, roster contact or
** roster metadata row), the rest is the payload, exactly as read.c hands it
** over once seal.c has checked a blob's checksum. Whatever decodes is encoded again
** and decoded once more, which must succeed: the two directions agree.
*/
#include <stdint.h>
#include <stddef.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "store.h"

static lua_State *L;

typedef struct Job {
  const unsigned char *p;
  size_t n;
  int mode;
} Job;

/* Runs under lua_pcall: stack 1 = stanza metatable, 2 = group names. */
static int run(lua_State *L1) {
  Job *j = (Job *)lua_touserdata(L1, 3);
  Cursor c = { j->p, j->p + j->n };
  const char *err;
  int keys = store_push_item_keys(L1);
  if (j->mode == 0) err = store_decode_value(L1, &c, 1);
  else if (j->mode == 1) err = store_decode_item(L1, &c, 1, 2, keys);
  else err = store_decode_meta(L1, &c, 1);
  if (err) return 0;
  {
    /* Re-encode the decoded value (for meta: the entries table). */
    Buffer b = { NULL, 0, 0, 0 };
    const char *e2;
    lua_newtable(L1);
    e2 = store_encode_value(L1, &b, -2, 1);
    if (e2 == NULL) {
      Cursor c2 = { b.p, b.p + b.n };
      if (store_decode_value(L1, &c2, 1) != NULL || c2.p != c2.end) {
        store_buffer_free(L1, &b);
        __builtin_trap();
      }
    }
    store_buffer_free(L1, &b);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Job j;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
  }
  if (size < 1) return 0;
  j.mode = data[0] % 3;
  j.p = data + 1;
  j.n = size - 1;
  lua_settop(L, 0);
  lua_pushcfunction(L, run);
  lua_newtable(L);               /* stands in for util.stanza's metatable */
  lua_createtable(L, 3, 0);      /* a roster's group names */
  lua_pushliteral(L, "Friends"); lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "Work");    lua_rawseti(L, -2, 2);
  lua_pushliteral(L, "");        lua_rawseti(L, -2, 3);
  lua_pushlightuserdata(L, &j);
  lua_pcall(L, 3, 0, 0);
  lua_settop(L, 0);
  return 0;
}
