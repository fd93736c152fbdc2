/*
** mqtt_parse_fuzz.c — libFuzzer target for what brisk.mqtt reads that it
** did not write itself: broker URLs from the configuration, and topic
** levels read back from the broker (retained device states after a
** restart), plus the outgoing queue those feed.
**
** The first byte picks a part; the rest is its input.
**   URL: a URL the parser accepts has a port in range, a host of allowed
**   characters (an IP literal exactly when `numeric` says so), and
**   writing it back out and parsing that gives the same result.
**   Topic: escape() output holds no '+', '#', '/' or NUL and unescape()
**   gives the input back; whatever unescape() accepts, escape() turns
**   back into exactly that (one spelling per device).
**   Queue: the bytes are operations (queue an event or a retained state
**   of one of 8 topics, take the next message) checked against a plain
**   model: the order messages come out in, drop-oldest of events at the
**   bound, one retained message per topic with its latest payload; then
**   the queue is freed, so that LeakSanitizer sees any block it lost.
**   Lua: the same inputs through the Lua functions, under pcall, and a
**   client made, filled and closed with them (its will, its queue).
*/
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "../modules/mqtt/mqtt.h"

int luaopen_brisk_mqtt(lua_State *L);

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__); abort(); } } while (0)

static void fuzz_url(const char *s, size_t len) {
  MqttUrl u, v;
  const char *err = NULL;
  char buf[MQTT_URL_MAXLEN + 64];
  unsigned char addr[16];
  size_t i;
  if (mqtt_url_parse(s, len, &u, &err) != 0) {
    CHECK(err != NULL);
    return;
  }
  CHECK(u.port >= 1);
  CHECK(u.host[0] != '\0');
  CHECK((u.numeric == 4) == (inet_pton(AF_INET, u.host, addr) == 1));
  CHECK((u.numeric == 6) == (inet_pton(AF_INET6, u.host, addr) == 1));
  if (u.numeric != 6)
    for (i = 0; u.host[i]; i++)
      CHECK(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._", u.host[i]) != NULL);
  snprintf(buf, sizeof buf, "%s://%s%s%s:%u", u.tls ? "mqtts" : "mqtt", u.numeric == 6 ? "[" : "",
           u.host, u.numeric == 6 ? "]" : "", (unsigned)u.port);
  CHECK(mqtt_url_parse(buf, strlen(buf), &v, &err) == 0);
  CHECK(memcmp(&u, &v, sizeof u) == 0);
}

static void fuzz_topic(const char *s, size_t len) {
  char *esc = malloc(3 * len + 1), *back = malloc(len + 1), *again = malloc(3 * len + 1);
  size_t n = mqtt_topic_escape(s, len, esc), i;
  long m;
  for (i = 0; i < n; i++)
    CHECK(esc[i] != '+' && esc[i] != '#' && esc[i] != '/' && esc[i] != '\0');
  m = mqtt_topic_unescape(esc, n, back);
  CHECK(m >= 0 && (size_t)m == len && memcmp(back, s, len) == 0);
  m = mqtt_topic_unescape(s, len, back);
  if (m >= 0) {
    n = mqtt_topic_escape(back, (size_t)m, again);
    CHECK(n == len && memcmp(again, s, len) == 0);
  }
  free(esc); free(back); free(again);
}

/* The queue against a model. */
static void *plain_alloc(void *ud, void *p, size_t old, size_t sz) {
  (void)ud; (void)old;
  if (sz == 0) { free(p); return NULL; }
  return realloc(p, sz);
}

#define MODEL_MAX 4096
typedef struct { int topic, retain, payload; } Item;

static void fuzz_queue(const unsigned char *s, size_t len) {
  Queue q;
  size_t bytes = 0, i;
  MqttAlloc a = { plain_alloc, NULL, &bytes };
  Item model[MODEL_MAX];
  int n = 0, max = len ? 1 + s[0] % 16 : 4, events = 0, k;
  mqtt_queue_init(&q, (uint32_t)max);
  for (i = 1; i < len && n < MODEL_MAX - 1; i++) {
    unsigned op = s[i];
    if (op < 160) {
      char topic[8], payload[4];
      int t = op % 8, retain = (op / 8) % 2, r;
      snprintf(topic, sizeof topic, "t/%d", t);
      snprintf(payload, sizeof payload, "%d", (int)(i % 1000));
      r = mqtt_queue_push(&q, &a, topic, strlen(topic), payload, strlen(payload), retain,
                          "id", 2, "", 0);
      CHECK(r != 0);
      if (retain) {
        for (k = 0; k < n; k++)
          if (model[k].retain && model[k].topic == t) break;
        CHECK((r == 2) == (k < n));
        if (k < n) model[k].payload = (int)(i % 1000);
        else model[n++] = (Item){ t, 1, (int)(i % 1000) };
      } else {
        model[n++] = (Item){ t, 0, (int)(i % 1000) };
        if (++events > max) {
          for (k = 0; model[k].retain; k++) {}
          memmove(&model[k], &model[k + 1], (size_t)(n - k - 1) * sizeof(Item));
          n--; events--;
          CHECK(r == 3);
        } else {
          CHECK(r == 1);
        }
      }
    } else {
      Msg *m = mqtt_queue_peek(&q);
      if (n == 0) { CHECK(m == NULL); continue; }
      CHECK(m != NULL);
      CHECK(m->retain == model[0].retain);
      CHECK(atoi(m->data + 2) == model[0].topic);
      CHECK(atoi(m->data + m->topiclen + 1) == model[0].payload || m->payloadlen == 0);
      if (!model[0].retain) events--;
      memmove(&model[0], &model[1], (size_t)(n - 1) * sizeof(Item));
      n--;
      mqtt_queue_drop(&q, &a, m);
    }
    CHECK(mqtt_queue_pending(&q) == (uint32_t)n);
  }
  mqtt_queue_free(&q, &a);
  CHECK(bytes == 0);
}

/* The Lua functions, on the same input: raising is fine, crashing is not. */
static int lua_part(lua_State *L) {
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  luaL_requiref(L, "brisk.mqtt", luaopen_brisk_mqtt, 0);
  lua_getfield(L, -1, "parse_url"); lua_pushlstring(L, s, len); lua_call(L, 1, 2); lua_pop(L, 2);
  lua_getfield(L, -1, "unescape"); lua_pushlstring(L, s, len); lua_call(L, 1, 1); lua_pop(L, 1);
  lua_getfield(L, -1, "check_topic"); lua_pushlstring(L, s, len); lua_call(L, 1, 2); lua_pop(L, 2);
  if (len <= 65535) {
    lua_getfield(L, -1, "escape"); lua_pushlstring(L, s, len); lua_call(L, 1, 1);
    lua_getfield(L, -2, "check_topic"); lua_insert(L, -2); lua_call(L, 1, 2);
    lua_pop(L, 2);
  }
  /* A client with the input as its will and as what it queues (never
  ** connected), closed again: every block libmosquitto and the queue took
  ** must come back (LeakSanitizer). */
  lua_getfield(L, -1, "client");
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "fuzz"); lua_setfield(L, -2, "id");
  lua_pushinteger(L, 2); lua_setfield(L, -2, "queue_size");
  lua_pushinteger(L, 2); lua_setfield(L, -2, "window");
  if (len > 0 && memchr(s, '\0', len) == NULL) {
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, s, len); lua_setfield(L, -2, "topic");
    lua_pushlstring(L, s, len); lua_setfield(L, -2, "payload");
    lua_setfield(L, -2, "will");
  }
  lua_call(L, 1, 2);
  if (!lua_isnil(L, -2)) {
    int i;
    lua_pop(L, 1);
    for (i = 0; i < 4; i++) {
      lua_getfield(L, -1, "publish");
      lua_pushvalue(L, -2);
      lua_pushlstring(L, len ? s : "t", len ? len : 1);
      lua_pushlstring(L, s, len);
      lua_pushboolean(L, i & 1);
      lua_pushliteral(L, "id");
      lua_call(L, 5, 2);
      lua_pop(L, 2);
    }
    lua_getfield(L, -1, "close");
    lua_pushvalue(L, -2);
    lua_call(L, 1, 0);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  const char *s = (const char *)data + 1;
  if (size == 0) return 0;
  switch (data[0] % 4) {
  case 0: fuzz_url(s, size - 1); break;
  case 1: fuzz_topic(s, size - 1); break;
  case 2: fuzz_queue(data + 1, size - 1); break;
  default:
    if (L == NULL) { L = luaL_newstate(); luaL_openlibs(L); }
    lua_pushcfunction(L, lua_part);
    lua_pushlstring(L, s, size - 1);
    lua_pcall(L, 1, 0, 0);
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT);
    break;
  }
  return 0;
}
