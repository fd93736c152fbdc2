/*
** buffer.c — the growable byte buffers encoders and sealing write into, and
** the varints (unsigned LEB128) they write and cursors read. Their memory
** comes from the Lua state's allocator (brisk_alloc), and every Buffer has
** an owner whose __gc frees it: the DB userdata, or a scratch userdata.
*/
#include <string.h>
#include "store.h"

void store_buffer_free(lua_State *L, Buffer *b) {
  brisk_free(L, b->p, b->cap);
  b->p = NULL;
  b->n = b->cap = 0;
  b->oom = 0;
}

/* Give the memory back if one large value grew the buffer past its idle size. */
void store_buffer_trim(lua_State *L, Buffer *b) {
  if (b->cap > STORE_BUFFER_IDLE) store_buffer_free(L, b);
}

/* Make room for len more bytes, through the Lua state's allocator. */
static int reserve(lua_State *L, Buffer *b, size_t len) {
  if (b->oom) return 0;
  if (b->cap - b->n >= len) return 1;
  {
    size_t ncap = b->cap ? b->cap : 256;
    unsigned char *np;
    while (ncap - b->n < len) {
      if (ncap > ((size_t)-1) / 2) { b->oom = 1; return 0; }
      ncap *= 2;
    }
    np = (unsigned char *)brisk_alloc(L, b->p, b->cap, ncap);
    if (np == NULL) { b->oom = 1; return 0; }
    b->p = np;
    b->cap = ncap;
  }
  return 1;
}

void store_put(lua_State *L, Buffer *b, const void *s, size_t len) {
  if (len == 0 || !reserve(L, b, len)) return;
  memcpy(b->p + b->n, s, len);
  b->n += len;
}

void store_put_byte(lua_State *L, Buffer *b, unsigned char c) {
  store_put(L, b, &c, 1);
}

/* Unsigned LEB128: seven bits a byte, low bits first, high bit = more. */
void store_put_varint(lua_State *L, Buffer *b, uint64_t v) {
  unsigned char tmp[10];
  size_t n = 0;
  do {
    unsigned char c = (unsigned char)(v & 0x7f);
    v >>= 7;
    tmp[n++] = c | (v ? 0x80 : 0);
  } while (v);
  store_put(L, b, tmp, n);
}

void store_put_str(lua_State *L, Buffer *b, const char *s, size_t len) {
  store_put_varint(L, b, len);
  store_put(L, b, s, len);
}

int store_get_varint(Cursor *c, uint64_t *v) {
  uint64_t r = 0;
  int shift = 0;
  while (c->p < c->end) {
    unsigned char byte = *c->p++;
    /* The tenth byte may only carry the single top bit of a 64-bit value. */
    if (shift == 63 && (byte & 0x7e)) return 0;
    r |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80)) { *v = r; return 1; }
    shift += 7;
    if (shift > 63) return 0;
  }
  return 0;
}
