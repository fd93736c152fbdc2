/*
** seal.c — sealing blobs: every stored value is closed with a BLAKE2b
** checksum, or with XChaCha20-Poly1305 when the database has a key, both
** bound to the row's identity (host, user, store, key) so that a blob moved
** to another row is detected. With a key, map keys are replaced by keyed
** hashes too. The keys, and what is derived from them, live here.
** Layout: docs/storage-format.md.
*/
#include <string.h>
#include <sodium.h>
#include "store.h"

_Static_assert(STORE_KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES, "XChaCha20-Poly1305 key size");

/*
** Key derivation labels are part of the format (docs/storage-format.md): they
** keep the module's first name, brisk.roster, so existing databases open.
*/
static const char key_check_label[] = "brisk.roster key check v1";
static const char row_key_label[] = "brisk.roster row keys v1";

/* Take the encryption key (STORE_KEY_BYTES) and derive the row key hash secret. */
void store_set_key(DB *d, const unsigned char *key) {
  memcpy(d->key, key, STORE_KEY_BYTES);
  d->has_key = 1;
  crypto_generichash(d->rowkey, sizeof d->rowkey, (const unsigned char *)row_key_label, sizeof row_key_label - 1,
                     d->key, STORE_KEY_BYTES);
}

void store_clear_key(DB *d) {
  sodium_memzero(d->key, sizeof d->key);
  sodium_memzero(d->rowkey, sizeof d->rowkey);
  d->has_key = 0;
}

/*
** The key check is a keyed hash of a fixed label: it tells a wrong key from
** damaged data, and an encrypted database opened without its key.
*/
void store_key_check(const DB *d, unsigned char out[STORE_KEY_CHECK]) {
  crypto_generichash(out, STORE_KEY_CHECK, (const unsigned char *)key_check_label, sizeof key_check_label - 1,
                     d->key, sizeof d->key);
}

/* Row identity: host, user (length+1, 0 for host-level), store, then the key. */
void store_identity_scope(lua_State *L, DB *d, const Scope *sc, const char *user, size_t ulen) {
  d->ctx.n = 0;
  store_put_str(L, &d->ctx, sc->host, sc->hlen);
  if (user) {
    store_put_varint(L, &d->ctx, (uint64_t)ulen + 1);
    store_put(L, &d->ctx, user, ulen);
  } else {
    store_put_varint(L, &d->ctx, 0);
  }
  store_put_str(L, &d->ctx, sc->store, sc->slen);
  d->ctx_prefix = d->ctx.n;
}

void store_identity_key(lua_State *L, DB *d, const char *key, size_t klen) {
  d->ctx.n = d->ctx_prefix;
  store_put_str(L, &d->ctx, key, klen);
}

/*
** With a key, map keys are not stored as text: the key column holds a keyed
** BLAKE2b-128 hash of the key (a 16-byte BLOB), and the key itself travels
** at the start of the encrypted payload. Rows can still be found by key, but
** the file no longer shows contact JIDs. The metadata row keeps the key ''.
*/
int store_hashed(const DB *d, size_t klen) {
  return d->has_key && klen > 0;
}

void store_hash_key(const DB *d, const char *key, size_t klen, unsigned char *out) {
  crypto_generichash(out, STORE_HASH_LEN, (const unsigned char *)key, klen, d->rowkey, sizeof d->rowkey);
}

/*
** A hashed row's payload starts with the real key: take it (pointing into
** the payload) and check that it hashes to the row's stored key.
*/
const char *store_take_key(const DB *d, Cursor *c, const unsigned char *stored, size_t slen,
                           const char **key, size_t *klen) {
  uint64_t n;
  unsigned char h[STORE_HASH_LEN];
  if (!d->has_key) return "data is encrypted but no key is configured (brisk_storage_key_file)";
  if (slen != STORE_HASH_LEN) return "corrupt data (bad row key)";
  if (!store_get_varint(c, &n) || n == 0 || n > (uint64_t)(c->end - c->p)) return "corrupt data (bad row key)";
  *key = (const char *)c->p;
  *klen = (size_t)n;
  c->p += n;
  store_hash_key(d, *key, *klen, h);
  if (sodium_memcmp(h, stored, STORE_HASH_LEN) != 0) return "corrupt data (row key mismatch)";
  return NULL;
}

/* BLAKE2b-128 of data then ctx (ctx may be NULL), truncated to STORE_CHECKSUM bytes. */
void store_checksum(const unsigned char *data, size_t len, const unsigned char *ctx, size_t clen,
                    unsigned char *outp) {
  crypto_generichash_state h;
  unsigned char full[STORE_HASH_LEN];
  crypto_generichash_init(&h, NULL, 0, STORE_HASH_LEN);
  crypto_generichash_update(&h, data, len);
  if (clen) crypto_generichash_update(&h, ctx, clen);
  crypto_generichash_final(&h, full, STORE_HASH_LEN);
  memcpy(outp, full, STORE_CHECKSUM);
}

static void checksum(const unsigned char *data, size_t len, const Buffer *ctx, unsigned char *outp) {
  store_checksum(data, len, ctx->p, ctx->n, outp);
}

/* Seal d->buf (a payload of "kind") into d->out. */
const char *store_seal(lua_State *L, DB *d, int kind) {
  unsigned char hdr[STORE_HEADER];
  hdr[0] = STORE_FORMAT_VERSION;
  hdr[1] = (unsigned char)(kind | (d->has_key ? STORE_KIND_ENCRYPTED : 0));
  d->out.n = 0;
  if (d->buf.oom || d->ctx.oom) return "out of memory";
  store_put(L, &d->out, hdr, STORE_HEADER);
  if (!d->has_key) {
    unsigned char sum[STORE_CHECKSUM];
    store_put(L, &d->out, d->buf.p, d->buf.n);
    if (d->out.oom) return "out of memory";
    checksum(d->out.p, d->out.n, &d->ctx, sum);
    store_put(L, &d->out, sum, STORE_CHECKSUM);
  } else {
    unsigned char nonce[STORE_NONCE], mac[STORE_MAC];
    unsigned long long clen = 0;
    size_t at;
    d->ad.n = 0;
    store_put(L, &d->ad, hdr, STORE_HEADER);
    store_put(L, &d->ad, d->ctx.p, d->ctx.n);
    randombytes_buf(nonce, sizeof nonce);
    store_put(L, &d->out, nonce, sizeof nonce);
    at = d->out.n;
    /* Reserve room for the ciphertext and tag by appending placeholders. */
    store_put(L, &d->out, d->buf.p, d->buf.n);
    memset(mac, 0, sizeof mac);
    store_put(L, &d->out, mac, sizeof mac);
    if (d->out.oom || d->ad.oom) return "out of memory";
    crypto_aead_xchacha20poly1305_ietf_encrypt(d->out.p + at, &clen, d->buf.p, d->buf.n,
                                               d->ad.p, d->ad.n, NULL, nonce, d->key);
  }
  return d->out.oom ? "out of memory" : NULL;
}

/* Check and open a stored blob; on success *cur spans its payload. */
const char *store_unseal(lua_State *L, DB *d, const unsigned char *blob, size_t len, int *kind, Cursor *cur) {
  int k;
  if (blob == NULL || len < STORE_HEADER) return "corrupt data (blob too short)";
  if (blob[0] != STORE_FORMAT_VERSION) return "unsupported or corrupt data (unknown format version)";
  k = blob[1] & ~STORE_KIND_ENCRYPTED;
  if (blob[1] & STORE_KIND_ENCRYPTED) {
    unsigned long long plen = 0;
    if (!d->has_key) return "data is encrypted but no key is configured (brisk_storage_key_file)";
    if (len < STORE_HEADER + STORE_NONCE + STORE_MAC) return "corrupt data (encrypted blob too short)";
    d->ad.n = 0;
    store_put(L, &d->ad, blob, STORE_HEADER);
    store_put(L, &d->ad, d->ctx.p, d->ctx.n);
    d->plain.n = 0;
    store_put(L, &d->plain, blob, len); /* only to reserve room */
    if (d->ad.oom || d->plain.oom || d->ctx.oom) return "out of memory";
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(d->plain.p, &plen, NULL,
          blob + STORE_HEADER + STORE_NONCE, len - STORE_HEADER - STORE_NONCE, d->ad.p, d->ad.n,
          blob + STORE_HEADER, d->key) != 0)
      return "decryption failed (wrong key or corrupted data)";
    cur->p = d->plain.p;
    cur->end = d->plain.p + plen;
  } else {
    unsigned char sum[STORE_CHECKSUM];
    if (len < STORE_HEADER + STORE_CHECKSUM) return "corrupt data (blob too short)";
    if (d->ctx.oom) return "out of memory";
    checksum(blob, len - STORE_CHECKSUM, &d->ctx, sum);
    if (sodium_memcmp(sum, blob + len - STORE_CHECKSUM, STORE_CHECKSUM) != 0)
      return "corrupt data (checksum mismatch)";
    cur->p = blob + STORE_HEADER;
    cur->end = blob + len - STORE_CHECKSUM;
  }
  if (k != STORE_KIND_VALUE && k != STORE_KIND_ITEM && k != STORE_KIND_META) return "corrupt data (unknown payload kind)";
  *kind = k;
  return NULL;
}
