/*
** sign.c — Standard Webhooks signing for mod_brisk_iot, with libsodium:
** HMAC-SHA256 (crypto_auth_hmacsha256), base64 both ways and random
** message ids.
*/
#include <sodium.h>
#include "presence.h"

/* presence.hmac_sha256(key, message) -> 32 raw bytes */
static int l_hmac(lua_State *L) {
  size_t kl, ml;
  const char *key = luaL_checklstring(L, 1, &kl);
  const char *msg = luaL_checklstring(L, 2, &ml);
  unsigned char out[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, (const unsigned char *)key, kl);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, ml);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof st);
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

/* presence.base64_encode(bytes) -> standard base64 with padding */
static int l_b64enc(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  size_t outlen = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, outlen);
  sodium_bin2base64(out, outlen, (const unsigned char *)s, len,
                    sodium_base64_VARIANT_ORIGINAL);
  luaL_pushresultsize(&b, outlen - 1);  /* without the terminating NUL */
  return 1;
}

/* presence.base64_decode(text) -> bytes, or nil and a message */
static int l_b64dec(lua_State *L) {
  size_t len, binlen = 0;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len / 4 * 3 + 3);
  const char *end = NULL;
  if (sodium_base642bin((unsigned char *)out, len / 4 * 3 + 3, s, len, NULL,
                        &binlen, &end, sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != s + len) {
    luaL_pushfail(L);
    lua_pushliteral(L, "invalid base64");
    return 2;
  }
  luaL_pushresultsize(&b, binlen);
  return 1;
}

/* presence.random_bytes(n) -> n bytes from libsodium's CSPRNG */
static int l_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_Buffer b;
  char *out;
  luaL_argcheck(L, n >= 0 && n <= 4096, 1, "between 0 and 4096 bytes");
  out = luaL_buffinitsize(L, &b, (size_t)n);
  randombytes_buf(out, (size_t)n);
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* presence.equal(a, b): comparison in constant time, for signatures. */
static int l_equal(lua_State *L) {
  size_t al, bl;
  const char *a = luaL_checklstring(L, 1, &al);
  const char *b = luaL_checklstring(L, 2, &bl);
  lua_pushboolean(L, al == bl && sodium_memcmp(a, b, al) == 0);
  return 1;
}

static const luaL_Reg sign_funcs[] = {
  {"hmac_sha256", l_hmac},
  {"base64_encode", l_b64enc},
  {"base64_decode", l_b64dec},
  {"random_bytes", l_random},
  {"equal", l_equal},
  {NULL, NULL}
};

void presence_open_sign(lua_State *L, int mod) {
  if (sodium_init() < 0) brisk_raise(L, "brisk.presence: libsodium failed to start");
  luaL_setfuncs(L, sign_funcs, 0);
  BRISK_UNUSED(mod);
}
