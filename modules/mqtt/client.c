/*
** client.c — an MQTT client on libmosquitto that someone else's event loop
** drives (brisk.mqtt.Client).
**
** libmosquitto can run its own thread or its own select() loop; Prosody
** has an event loop already, and only it may touch the Lua state. So the
** client does nothing by itself: the caller connects it to an IP address
** (names are resolved by the caller, without blocking), watches the file
** descriptor fd() for reading, and for writing while want_write() says so,
** and calls read(), write() and, about once a second, misc() (keepalive).
**
** libmosquitto reports what happened through callbacks, which run inside
** those calls with its mutexes held. They must not raise (a Lua error
** would unwind through libmosquitto) and must not call libmosquitto, so
** they only record: what the caller needs to see (connected, disconnected,
** a message, a refusal, an error line) becomes a note, taken out with
** poll(); acknowledgements only update the window and the counters.
**
** Publishing goes through queue.c: publish() queues, and whenever the
** client is connected and has room in its window of unacknowledged
** messages, queued messages are handed to libmosquitto (QoS 1). What
** libmosquitto holds it keeps across reconnects and sends again, in order,
** after the next CONNACK; so a message leaves Brisk's hands only when the
** broker has acknowledged it, and at most `window` messages sit in
** libmosquitto's memory.
**
** The descriptor fd() returns is a duplicate of libmosquitto's socket,
** owned here: libmosquitto closes its own whenever a connection fails,
** in the middle of a call, while the caller's loop still watches the
** number. The duplicate stays valid (and is never reused by another
** connection) until the caller has stopped watching it and calls
** release(), or connect() again.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include "mqtt.h"

#define CLIENT_META "brisk.mqtt.Client"

/* Notes: what callbacks saw, for poll(). */
enum { NOTE_CONNECT, NOTE_DISCONNECT, NOTE_MESSAGE, NOTE_REFUSED,
       NOTE_SUBACK, NOTE_UNSUBACK, NOTE_LOG };
static const char *const note_names[] = {
  "connect", "disconnect", "message", "refused", "suback", "unsuback", "log"
};
#define NOTES_MAX 4096     /* beyond this, messages and log lines are lost (counted) */
#define LOG_MAXLEN 400

typedef struct Note {
  struct Note *next;
  size_t size;
  int kind;
  int a, b;               /* rc/mid/level; flags/retain/reason */
  uint32_t len1, len2;    /* text or topic; payload */
  char data[];
} Note;

typedef struct Client {
  struct mosquitto *mosq;
  MqttAlloc alloc;        /* the Lua state's allocator, counting into bytes */
  size_t bytes;
  void *tls;              /* our reference to the TLS context, until libmosquitto has its own */
  char *name;             /* the broker's name for TLS (the context points to it) */
  size_t namesize;
  int fd;                 /* our duplicate of libmosquitto's socket, or -1 */
  int protocol;           /* MQTT_PROTOCOL_V5 or MQTT_PROTOCOL_V311 */
  int keepalive;
  int connected;          /* CONNACK accepted and no disconnect since */
  int saw_disconnect;     /* a disconnect callback came for the current socket */
  Queue q;
  int *inflight;          /* mids handed to libmosquitto, not yet acknowledged */
  uint32_t ninflight, window;
  Note *nhead, *ntail;
  uint32_t nnotes;
  uint64_t handed, sent, dropped, refused, replaced, lost;
} Client;

/* ---------------------------------------------------------------- notes */

static Note *note(Client *c, int kind, int a, int b, const char *s1,
                  size_t l1, const char *s2, size_t l2) {
  size_t size = sizeof(Note) + l1 + l2 + 1;
  Note *n;
  if (c->nnotes >= NOTES_MAX && (kind == NOTE_MESSAGE || kind == NOTE_LOG)) {
    c->lost++;
    return NULL;
  }
  n = (Note *)mqtt_alloc(&c->alloc, NULL, 0, size);
  if (n == NULL) { c->lost++; return NULL; }
  n->next = NULL;
  n->size = size;
  n->kind = kind;
  n->a = a;
  n->b = b;
  n->len1 = (uint32_t)l1;
  n->len2 = (uint32_t)l2;
  if (l1) memcpy(n->data, s1, l1);
  if (l2) memcpy(n->data + l1, s2, l2);
  n->data[l1 + l2] = '\0';
  if (c->ntail) c->ntail->next = n; else c->nhead = n;
  c->ntail = n;
  c->nnotes++;
  return n;
}

static void note_text(Client *c, int kind, int a, int b, const char *text) {
  size_t len = text ? strlen(text) : 0;
  note(c, kind, a, b, text, len > LOG_MAXLEN ? LOG_MAXLEN : len, NULL, 0);
}

/* What a disconnect code means: libmosquitto's error codes are small, an
** MQTT 5 reason code from the broker's DISCONNECT is 128 or more. */
static const char *disconnect_reason(int rc, int err) {
  if (rc == MOSQ_ERR_ERRNO) return strerror(err);
  if (rc >= 128) return mosquitto_reason_string(rc);
  return mosquitto_strerror(rc);
}

/* ------------------------------------------------------------ callbacks */

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags,
                       const mosquitto_property *props) {
  Client *c = (Client *)ud;
  BRISK_UNUSED(m); BRISK_UNUSED(props);
  if (rc == 0) c->connected = 1;
  note_text(c, NOTE_CONNECT, rc, flags & 1,
            c->protocol == MQTT_PROTOCOL_V5 ? mosquitto_reason_string(rc)
                                            : mosquitto_connack_string(rc));
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc,
                          const mosquitto_property *props) {
  Client *c = (Client *)ud;
  int err = errno;
  BRISK_UNUSED(m); BRISK_UNUSED(props);
  c->connected = 0;
  c->saw_disconnect = 1;
  note_text(c, NOTE_DISCONNECT, rc, 0, disconnect_reason(rc, err));
}

/* A PUBACK (QoS 1): the broker has the message. A reason code of 128 or
** more is a refusal (not authorized, quota exceeded...): counted and
** noted, never sent again. */
static void on_publish(struct mosquitto *m, void *ud, int mid, int reason,
                       const mosquitto_property *props) {
  Client *c = (Client *)ud;
  uint32_t i;
  BRISK_UNUSED(m); BRISK_UNUSED(props);
  for (i = 0; i < c->ninflight; i++)
    if (c->inflight[i] == mid) {
      c->inflight[i] = c->inflight[--c->ninflight];
      break;
    }
  if (reason >= 128) {
    c->refused++;
    note_text(c, NOTE_REFUSED, mid, reason, mosquitto_reason_string(reason));
  } else {
    c->sent++;
  }
}

static void on_message(struct mosquitto *m, void *ud,
                       const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
  Client *c = (Client *)ud;
  BRISK_UNUSED(m); BRISK_UNUSED(props);
  note(c, NOTE_MESSAGE, msg->qos, msg->retain, msg->topic, strlen(msg->topic),
       (const char *)msg->payload, msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int count,
                         const int *granted, const mosquitto_property *props) {
  Client *c = (Client *)ud;
  BRISK_UNUSED(m); BRISK_UNUSED(props);
  note(c, NOTE_SUBACK, mid, count > 0 ? granted[0] : 0, NULL, 0, NULL, 0);
}

static void on_unsubscribe(struct mosquitto *m, void *ud, int mid,
                           const mosquitto_property *props) {
  Client *c = (Client *)ud;
  BRISK_UNUSED(m); BRISK_UNUSED(props);
  note(c, NOTE_UNSUBACK, mid, 0, NULL, 0, NULL, 0);
}

/* libmosquitto's own error and warning lines (OpenSSL's reasons among
** them); its debug chatter stays out. */
static void on_log(struct mosquitto *m, void *ud, int level, const char *str) {
  Client *c = (Client *)ud;
  BRISK_UNUSED(m);
  if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING))
    note_text(c, NOTE_LOG, level & MOSQ_LOG_ERR ? 1 : 2, 0, str);
}

/* ------------------------------------------------------------- helpers */

static Client *check_client(lua_State *L) {
  Client *c = (Client *)luaL_checkudata(L, 1, CLIENT_META);
  if (c->mosq == NULL) brisk_raise(L, "brisk.mqtt: client is closed");
  return c;
}

static int push_mosq_fail(lua_State *L, int rc) {
  luaL_pushfail(L);
  lua_pushstring(L, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
  return 2;
}

static void close_fd(Client *c) {
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
}

/*
** Hand queued messages to libmosquitto while connected and the window
** has room. A message libmosquitto has taken (even if its first write
** failed: libmosquitto keeps it and sends it after reconnecting) counts as
** in flight until its PUBACK; one it refuses outright (too large for the
** broker, a topic it rejects) is dropped and noted.
*/
static void pump(Client *c) {
  while (c->connected && c->ninflight < c->window) {
    Msg *m = mqtt_queue_peek(&c->q);
    mosquitto_property *props = NULL;
    const char *payload, *id, *type;
    int mid = 0, rc;
    if (m == NULL) return;
    payload = m->data + m->topiclen + 1;
    id = payload + m->payloadlen;
    type = id + m->idlen + 1;
    if (c->protocol == MQTT_PROTOCOL_V5 &&
        ((m->idlen && mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "event-id", id)) ||
         (m->typelen && mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "event-type", type)))) {
      mosquitto_property_free_all(&props);
      return;  /* out of memory: try again later */
    }
    rc = mosquitto_publish_v5(c->mosq, &mid, m->data, (int)m->payloadlen,
                              m->payloadlen ? payload : NULL, 1, m->retain, props);
    mosquitto_property_free_all(&props);
    switch (rc) {
    case MOSQ_ERR_SUCCESS: case MOSQ_ERR_NO_CONN:
    case MOSQ_ERR_CONN_LOST: case MOSQ_ERR_ERRNO:
      c->inflight[c->ninflight++] = mid;
      c->handed++;
      break;
    case MOSQ_ERR_NOMEM:
      return;
    default: {
      char text[LOG_MAXLEN];
      snprintf(text, sizeof text, "%.200s: %s", m->data, mosquitto_strerror(rc));
      c->refused++;
      note_text(c, NOTE_REFUSED, 0, rc, text);
    }
    }
    mqtt_queue_drop(&c->q, &c->alloc, m);
  }
}

/*
** After every call into libmosquitto: a connection it dropped without a
** disconnect callback (a failed TLS handshake returns an error and closes
** the socket silently) becomes a disconnect note all the same, and queued
** messages move while there is room.
*/
static void settle(Client *c, int rc) {
  if (c->fd >= 0 && !c->saw_disconnect && mosquitto_socket(c->mosq) < 0) {
    c->connected = 0;
    c->saw_disconnect = 1;
    note_text(c, NOTE_DISCONNECT, rc ? rc : MOSQ_ERR_CONN_LOST, 0,
              disconnect_reason(rc ? rc : MOSQ_ERR_CONN_LOST, errno));
  }
  pump(c);
}

/* A connection libmosquitto is working on that no disconnect has ended:
** stepping a dead one would only report its end again. */
static int live(Client *c) {
  return !c->saw_disconnect && mosquitto_socket(c->mosq) >= 0;
}

/* End the current connection here (libmosquitto may still hold its
** socket, which the next connect() closes). */
static void give_up(Client *c, const char *why) {
  c->connected = 0;
  c->saw_disconnect = 1;
  note_text(c, NOTE_DISCONNECT, MOSQ_ERR_CONN_LOST, 0, why);
}

/*
** Until the CONNACK, ask the socket itself whether the connection failed.
** During a TLS handshake libmosquitto takes a socket error or an EOF as
** "try again" (SSL_ERROR_SYSCALL leaves it waiting for the handshake),
** while the socket stays readable for ever: the caller's loop would call
** read() without end, and nothing would move.
*/
static void check_handshake(Client *c) {
  int sock, err = 0;
  socklen_t len = sizeof err;
  char b;
  if (c->connected || !live(c)) return;
  sock = mosquitto_socket(c->mosq);
  if (getsockopt(sock, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0)
    give_up(c, strerror(err));
  else if (recv(sock, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
    give_up(c, "the connection was refused or closed before the broker answered");
}

static int step_result(lua_State *L, Client *c, int rc) {
  int err = errno;
  check_handshake(c);
  settle(c, rc);
  if (rc != MOSQ_ERR_SUCCESS) {
    errno = err;
    return push_mosq_fail(L, rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ----------------------------------------------------------- Lua: steps */

/* client:read(): the descriptor is readable (or has an error). */
static int l_read(lua_State *L) {
  Client *c = check_client(L);
  return step_result(L, c, live(c) ? mosquitto_loop_read(c->mosq, 1) : MOSQ_ERR_SUCCESS);
}

/*
** client:write(): the descriptor is writable. Until the CONNACK, a TLS
** handshake may be what waits for it, and libmosquitto moves that on in
** loop_read, so that comes first.
*/
static int l_write(lua_State *L) {
  Client *c = check_client(L);
  int rc = MOSQ_ERR_SUCCESS;
  if (live(c) && !c->connected) rc = mosquitto_loop_read(c->mosq, 1);
  if (rc == MOSQ_ERR_SUCCESS && live(c))
    rc = mosquitto_loop_write(c->mosq, 1);
  return step_result(L, c, rc);
}

/* client:misc(): keepalive (PINGREQ, and dropping a silent connection). */
static int l_misc(lua_State *L) {
  Client *c = check_client(L);
  int rc = live(c) ? mosquitto_loop_misc(c->mosq) : MOSQ_ERR_SUCCESS;
  return step_result(L, c, rc);
}

/*
** client:want_write() -> whether the descriptor must be watched for
** writing. During a TLS handshake that is what OpenSSL waits for (its
** last call wanted to write), not whether packets are queued.
*/
static int l_want_write(lua_State *L) {
  Client *c = check_client(L);
  void *ssl = mosquitto_ssl_get(c->mosq);
  int want;
  if (!live(c)) want = 0;
  else if (ssl == NULL || !mqtt_tls_handshaking(ssl, &want)) want = mosquitto_want_write(c->mosq);
  lua_pushboolean(L, want);
  return 1;
}

/* --------------------------------------------------- Lua: connections */

/*
** client:connect(address, port) -> the descriptor to watch, or fail and
** why. address must be an IP address: resolving a name would block. Any
** previous connection is closed first (stop watching its descriptor
** before calling this). Returns once the socket exists; the CONNACK comes
** later, as a "connect" note.
*/
static int l_connect(lua_State *L) {
  Client *c = check_client(L);
  const char *addr = luaL_checkstring(L, 2);
  lua_Integer port = luaL_checkinteger(L, 3);
  unsigned char buf[16];
  int rc, sock;
  luaL_argcheck(L, inet_pton(AF_INET, addr, buf) == 1 || inet_pton(AF_INET6, addr, buf) == 1,
                2, "an IP address (resolve names first)");
  luaL_argcheck(L, port >= 1 && port <= 65535, 3, "a port number");
  close_fd(c);
  c->connected = 0;
  c->saw_disconnect = 0;
  rc = mosquitto_connect_bind_async(c->mosq, addr, (int)port, c->keepalive, NULL);
  sock = mosquitto_socket(c->mosq);
  if (rc != MOSQ_ERR_SUCCESS || sock < 0) {
    int err = errno;
    c->saw_disconnect = 1;
    errno = err;
    return push_mosq_fail(L, rc != MOSQ_ERR_SUCCESS ? rc : MOSQ_ERR_NO_CONN);
  }
  c->fd = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (c->fd < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot duplicate the socket: %s", strerror(errno));
    return 2;
  }
  lua_pushinteger(L, c->fd);
  return 1;
}

/* client:fd() -> the descriptor to watch, or fail when there is none. */
static int l_fd(lua_State *L) {
  Client *c = check_client(L);
  if (c->fd < 0) luaL_pushfail(L);
  else lua_pushinteger(L, c->fd);
  return 1;
}

/* client:release(): close the descriptor (once it is no longer watched). */
static int l_release(lua_State *L) {
  Client *c = check_client(L);
  close_fd(c);
  return 0;
}

/*
** client:abort(): give up the current connection attempt or connection
** (a connect timeout): the socket is shut down, and a read lets
** libmosquitto find it so and close it the usual way. libmosquitto has no
** call that only closes; where it keeps the dead socket (a TLS handshake
** takes the error as "try again"), the connection ends here all the same,
** with a "disconnect" note, and the next connect() closes the socket.
*/
static int l_abort(lua_State *L) {
  Client *c = check_client(L);
  int rc = MOSQ_ERR_SUCCESS;
  if (live(c)) {
    shutdown(mosquitto_socket(c->mosq), SHUT_RDWR);
    rc = mosquitto_loop_read(c->mosq, 1);
  }
  if (!c->saw_disconnect && c->fd >= 0) give_up(c, "connection abandoned");
  return step_result(L, c, rc);
}

/*
** client:disconnect([with_will]) -> true, or fail and why. A clean
** DISCONNECT; with_will (MQTT 5) asks the broker to publish the will all
** the same, which is how "this server is going away" is announced.
*/
static int l_disconnect(lua_State *L) {
  Client *c = check_client(L);
  int will = lua_toboolean(L, 2) && c->protocol == MQTT_PROTOCOL_V5;
  int rc = mosquitto_disconnect_v5(c->mosq, will ? MQTT_RC_DISCONNECT_WITH_WILL_MSG : 0, NULL);
  c->connected = 0;
  return step_result(L, c, rc);
}

/* client:connected() -> whether the broker has accepted the connection. */
static int l_connected(lua_State *L) {
  Client *c = check_client(L);
  lua_pushboolean(L, c->connected);
  return 1;
}

/* -------------------------------------------------------- Lua: messages */

/*
** client:publish(topic, payload, retain, [event_id], [event_type]) ->
** true, or fail and "out of memory". QoS 1. The event id and type go out
** as MQTT 5 user properties "event-id" and "event-type".
*/
static int l_publish(lua_State *L) {
  Client *c = check_client(L);
  size_t tl, pl, il = 0, yl = 0;
  const char *topic = luaL_checklstring(L, 2, &tl);
  const char *payload = luaL_checklstring(L, 3, &pl);
  int retain = lua_toboolean(L, 4);
  const char *id = luaL_optlstring(L, 5, NULL, &il);
  const char *type = luaL_optlstring(L, 6, NULL, &yl);
  int r;
  luaL_argcheck(L, tl > 0 && tl <= 65535 && memchr(topic, '\0', tl) == NULL, 2, "a topic");
  luaL_argcheck(L, pl <= 268435455 - 65535 - 1024, 3, "too large for MQTT");
  luaL_argcheck(L, il <= 256 && (!id || memchr(id, '\0', il) == NULL), 5, "a short string");
  luaL_argcheck(L, yl <= 256 && (!type || memchr(type, '\0', yl) == NULL), 6, "a short string");
  r = mqtt_queue_push(&c->q, &c->alloc, topic, tl, payload, pl, retain, id, il, type, yl);
  if (r == 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  if (r == 2) c->replaced++;
  if (r == 3) c->dropped++;
  pump(c);
  lua_pushboolean(L, 1);
  return 1;
}

/* The strings of the list at index t, for libmosquitto (pointers into Lua
** strings, which stay on the stack while they are used). */
static int check_filters(lua_State *L, int t, const char **subs, int max) {
  int i, n;
  luaL_checktype(L, t, LUA_TTABLE);
  n = (int)luaL_len(L, t);
  luaL_argcheck(L, n >= 1 && n <= max, t, "a list of 1 to 8 topic filters");
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, t, i + 1);
    luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, t, "topic filters must be strings");
    subs[i] = lua_tostring(L, -1);  /* stays on the stack while used */
  }
  return n;
}

/*
** client:subscribe({ filter, ... }, [no_local]) -> mid, or fail and why.
** QoS 0; no_local (MQTT 5) keeps the client's own publications away. The
** SUBACK comes as a "suback" note with this mid.
*/
static int l_subscribe(lua_State *L) {
  Client *c = check_client(L);
  const char *subs[8];
  int no_local = lua_toboolean(L, 3);  /* before check_filters pushes the filters */
  int n = check_filters(L, 2, subs, 8), mid = 0;
  int rc = mosquitto_subscribe_multiple(c->mosq, &mid, n, (char *const *)subs, 0,
                                        no_local ? MQTT_SUB_OPT_NO_LOCAL : 0, NULL);
  if (rc != MOSQ_ERR_SUCCESS) return push_mosq_fail(L, rc);
  lua_pushinteger(L, mid);
  return 1;
}

/* client:unsubscribe({ filter, ... }) -> mid, or fail and why. */
static int l_unsubscribe(lua_State *L) {
  Client *c = check_client(L);
  const char *subs[8];
  int n = check_filters(L, 2, subs, 8), mid = 0;
  int rc = mosquitto_unsubscribe_multiple(c->mosq, &mid, n, (char *const *)subs, NULL);
  if (rc != MOSQ_ERR_SUCCESS) return push_mosq_fail(L, rc);
  lua_pushinteger(L, mid);
  return 1;
}

/*
** client:poll() -> the oldest note, or nothing:
**   "connect", code, session_present, text     (code 0: accepted)
**   "disconnect", code, text
**   "message", topic, payload, retain
**   "refused", mid, code, text                 (a publish the broker or libmosquitto refused)
**   "suback", mid, granted_qos
**   "unsuback", mid
**   "log", "error" or "warn", text             (libmosquitto's own)
*/
static int l_poll(lua_State *L) {
  Client *c = check_client(L);
  Note *n = c->nhead;
  int r;
  if (n == NULL) return 0;
  lua_pushstring(L, note_names[n->kind]);
  switch (n->kind) {
  case NOTE_CONNECT:
    lua_pushinteger(L, n->a);
    lua_pushboolean(L, n->b);
    lua_pushlstring(L, n->data, n->len1);
    r = 4;
    break;
  case NOTE_DISCONNECT:
    lua_pushinteger(L, n->a);
    lua_pushlstring(L, n->data, n->len1);
    r = 3;
    break;
  case NOTE_MESSAGE:
    lua_pushlstring(L, n->data, n->len1);
    lua_pushlstring(L, n->data + n->len1, n->len2);
    lua_pushboolean(L, n->b);
    r = 4;
    break;
  case NOTE_REFUSED:
    lua_pushinteger(L, n->a);
    lua_pushinteger(L, n->b);
    lua_pushlstring(L, n->data, n->len1);
    r = 4;
    break;
  case NOTE_SUBACK:
    lua_pushinteger(L, n->a);
    lua_pushinteger(L, n->b);
    r = 3;
    break;
  case NOTE_UNSUBACK:
    lua_pushinteger(L, n->a);
    r = 2;
    break;
  default:
    lua_pushstring(L, n->a == 1 ? "error" : "warn");
    lua_pushlstring(L, n->data, n->len1);
    r = 3;
    break;
  }
  /* Unlinked only now: the pushes above may raise (out of memory), and
  ** the note must then stay owned by the list. */
  c->nhead = n->next;
  if (c->nhead == NULL) c->ntail = NULL;
  c->nnotes--;
  mqtt_alloc(&c->alloc, n, n->size, 0);
  return r;
}

/* client:stats() -> counters and memory. */
static int l_stats(lua_State *L) {
  Client *c = check_client(L);
  lua_createtable(L, 0, 12);
  lua_pushinteger(L, (lua_Integer)mqtt_queue_pending(&c->q)); lua_setfield(L, -2, "queued");
  lua_pushinteger(L, (lua_Integer)c->q.states.n); lua_setfield(L, -2, "queued_states");
  lua_pushinteger(L, (lua_Integer)c->ninflight); lua_setfield(L, -2, "inflight");
  lua_pushinteger(L, (lua_Integer)c->handed); lua_setfield(L, -2, "handed");
  lua_pushinteger(L, (lua_Integer)c->sent); lua_setfield(L, -2, "sent");
  lua_pushinteger(L, (lua_Integer)c->dropped); lua_setfield(L, -2, "dropped");
  lua_pushinteger(L, (lua_Integer)c->refused); lua_setfield(L, -2, "refused");
  lua_pushinteger(L, (lua_Integer)c->replaced); lua_setfield(L, -2, "replaced");
  lua_pushinteger(L, (lua_Integer)c->lost); lua_setfield(L, -2, "notes_lost");
  lua_pushinteger(L, (lua_Integer)c->bytes); lua_setfield(L, -2, "memory");
  lua_pushboolean(L, c->connected); lua_setfield(L, -2, "connected");
  lua_pushinteger(L, c->protocol == MQTT_PROTOCOL_V5 ? 5 : 4); lua_setfield(L, -2, "protocol");
  return 1;
}

/* --------------------------------------------------------- Lua: options */

/*
** Set (or, with expiry < 0, clear) the MQTT 5 CONNECT properties. The only
** setter libmosquitto 2.0 has is mosquitto_connect_bind_v5, which connects
** and blocks; it stores the properties before it checks its host argument,
** so with no host it stores them and returns MOSQ_ERR_INVAL, connecting
** nothing. mosquitto_connect_bind_async then sends them on every connect.
** (Checked by spec/iot_mqtt_client_spec.lua: without the Session Expiry
** Interval the broker keeps no session, and the CONNACK of a reconnect
** would say so.)
*/
static int set_connect_properties(Client *c, long expiry) {
  mosquitto_property *props = NULL;
  int rc;
  if (expiry >= 0 &&
      mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, (uint32_t)expiry) != MOSQ_ERR_SUCCESS)
    return MOSQ_ERR_NOMEM;
  rc = mosquitto_connect_bind_v5(c->mosq, NULL, 0, 0, NULL, props);
  mosquitto_property_free_all(&props);
  return rc == MOSQ_ERR_INVAL ? MOSQ_ERR_SUCCESS : rc;
}

/*
** client:set_protocol(4): speak MQTT 3.1.1 from the next connect on (a
** broker that refused MQTT 5). MQTT 3.1.1 has no CONNECT properties: a
** persistent session is clean session off, kept as long as the broker
** keeps such sessions.
*/
static int l_set_protocol(lua_State *L) {
  Client *c = check_client(L);
  lua_Integer v = luaL_checkinteger(L, 2);
  luaL_argcheck(L, v == 4, 2, "only 4 (MQTT 3.1.1)");
  set_connect_properties(c, -1);
  mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  c->protocol = MQTT_PROTOCOL_V311;
  return 0;
}

static const char *opt_string(lua_State *L, int t, const char *key) {
  const char *s;
  lua_getfield(L, t, key);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  if (lua_type(L, -1) != LUA_TSTRING)
    brisk_raise(L, "brisk.mqtt: option '%s' must be a string", key);
  s = lua_tostring(L, -1);
  lua_pop(L, 1);  /* the table keeps the string alive */
  return s;
}

static lua_Integer opt_int(lua_State *L, int t, const char *key, lua_Integer def,
                           lua_Integer lo, lua_Integer hi) {
  lua_Integer v;
  int isnum;
  lua_getfield(L, t, key);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return def; }
  v = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || v < lo || v > hi)
    brisk_raise(L, "brisk.mqtt: option '%s' must be an integer from %I to %I", key, lo, hi);
  return v;
}

static int l_gc(lua_State *L) {
  Client *c = (Client *)luaL_checkudata(L, 1, CLIENT_META);
  Note *n, *next;
  if (c->mosq) mosquitto_destroy(c->mosq);  /* also its reference to the TLS context */
  c->mosq = NULL;
  if (c->tls) mqtt_tls_free(c->tls);
  c->tls = NULL;
  close_fd(c);
  if (c->alloc.f) {
    mqtt_queue_free(&c->q, &c->alloc);
    for (n = c->nhead; n; n = next) { next = n->next; mqtt_alloc(&c->alloc, n, n->size, 0); }
    mqtt_alloc(&c->alloc, c->inflight, (size_t)c->window * sizeof(int), 0);
    mqtt_alloc(&c->alloc, c->name, c->namesize, 0);
  }
  c->nhead = c->ntail = NULL;
  c->inflight = NULL;
  c->name = NULL;
  return 0;
}

/* client:close(): disconnect at once (no DISCONNECT) and free everything. */
static int l_close(lua_State *L) {
  return l_gc(L);
}

/*
** mqtt.client{ id =, keepalive = 60, session_expiry = 86400, username =,
**   password =, will = { topic =, payload =, retain = }, window = 100,
**   queue_size = 10000, tls = { name =, numeric =, ca_file =, cert_file =,
**   key_file = } } -> client, or fail and why (TLS files that are missing
** or wrong). The session is persistent (clean start off) and MQTT 5 until
** set_protocol(4). Wrong option types raise.
*/
static int l_new(lua_State *L) {
  Client *c;
  const char *id, *user, *pass;
  lua_Integer keepalive, expiry, window, qsize;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  c = (Client *)lua_newuserdatauv(L, sizeof(Client), 0);
  memset(c, 0, sizeof *c);
  c->fd = -1;
  luaL_setmetatable(L, CLIENT_META);
  id = opt_string(L, 1, "id");
  luaL_argcheck(L, id && *id && strlen(id) <= 65535, 1, "'id' must be a non-empty string");
  keepalive = opt_int(L, 1, "keepalive", 60, 5, 65535);
  expiry = opt_int(L, 1, "session_expiry", 86400, 0, UINT32_MAX);
  window = opt_int(L, 1, "window", 100, 1, 65535);
  qsize = opt_int(L, 1, "queue_size", 10000, 1, 100000000);
  user = opt_string(L, 1, "username");
  pass = opt_string(L, 1, "password");
  luaL_argcheck(L, !pass || user, 1, "a password needs a username");
  c->alloc.f = lua_getallocf(L, &c->alloc.ud);
  c->alloc.bytes = &c->bytes;
  c->keepalive = (int)keepalive;
  c->protocol = MQTT_PROTOCOL_V5;
  mqtt_queue_init(&c->q, (uint32_t)qsize);
  c->inflight = (int *)mqtt_alloc(&c->alloc, NULL, 0, (size_t)window * sizeof(int));
  if (c->inflight == NULL) return luaL_error(L, "brisk.mqtt: out of memory");
  c->window = (uint32_t)window;
  c->mosq = mosquitto_new(id, false, c);
  if (c->mosq == NULL) return luaL_error(L, "brisk.mqtt: cannot create a client: %s", strerror(errno));
  mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_v5_callback_set(c->mosq, on_connect);
  mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
  mosquitto_publish_v5_callback_set(c->mosq, on_publish);
  mosquitto_message_v5_callback_set(c->mosq, on_message);
  mosquitto_subscribe_v5_callback_set(c->mosq, on_subscribe);
  mosquitto_unsubscribe_v5_callback_set(c->mosq, on_unsubscribe);
  mosquitto_log_callback_set(c->mosq, on_log);
  if (user && (rc = mosquitto_username_pw_set(c->mosq, user, pass)) != MOSQ_ERR_SUCCESS)
    return push_mosq_fail(L, rc);
  if ((rc = set_connect_properties(c, (long)expiry)) != MOSQ_ERR_SUCCESS)
    return push_mosq_fail(L, rc);
  lua_getfield(L, 1, "will");
  if (!lua_isnil(L, -1)) {
    int w = lua_gettop(L);
    const char *wt, *wp;
    size_t wpl = 0;
    luaL_checktype(L, w, LUA_TTABLE);
    wt = opt_string(L, w, "topic");
    wp = opt_string(L, w, "payload");
    luaL_argcheck(L, wt != NULL, 1, "'will' needs a topic");
    if (wp) wpl = strlen(wp);
    lua_getfield(L, w, "retain");
    rc = mosquitto_will_set(c->mosq, wt, (int)wpl, wp, 1, lua_toboolean(L, -1));
    lua_pop(L, 1);
    if (rc != MOSQ_ERR_SUCCESS) return push_mosq_fail(L, rc);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "tls");
  if (!lua_isnil(L, -1)) {
    int t = lua_gettop(L);
    const char *name, *ca, *cert, *key;
    char err[512];
    luaL_checktype(L, t, LUA_TTABLE);
    name = opt_string(L, t, "name");
    luaL_argcheck(L, name != NULL, 1, "'tls' needs the broker's name");
    ca = opt_string(L, t, "ca_file");
    cert = opt_string(L, t, "cert_file");
    key = opt_string(L, t, "key_file");
    lua_getfield(L, t, "numeric");
    c->namesize = strlen(name) + 1;
    c->name = (char *)mqtt_alloc(&c->alloc, NULL, 0, c->namesize);
    if (c->name == NULL) { c->namesize = 0; return luaL_error(L, "brisk.mqtt: out of memory"); }
    memcpy(c->name, name, c->namesize);
    c->tls = mqtt_tls_new(ca, cert, key, c->name, lua_toboolean(L, -1), err, sizeof err);
    lua_pop(L, 1);
    if (c->tls == NULL) {
      luaL_pushfail(L);
      lua_pushstring(L, err);
      return 2;
    }
    rc = mosquitto_void_option(c->mosq, MOSQ_OPT_SSL_CTX, c->tls);
    if (rc == MOSQ_ERR_SUCCESS)
      rc = mosquitto_int_option(c->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
    if (rc != MOSQ_ERR_SUCCESS) return push_mosq_fail(L, rc);
    mqtt_tls_free(c->tls);  /* libmosquitto holds its own reference now */
    c->tls = NULL;
  }
  lua_pop(L, 1);
  lua_settop(L, 2);
  return 1;
}

static const luaL_Reg client_methods[] = {
  {"connect", l_connect},
  {"fd", l_fd},
  {"want_write", l_want_write},
  {"read", l_read},
  {"write", l_write},
  {"misc", l_misc},
  {"abort", l_abort},
  {"release", l_release},
  {"disconnect", l_disconnect},
  {"connected", l_connected},
  {"publish", l_publish},
  {"subscribe", l_subscribe},
  {"unsubscribe", l_unsubscribe},
  {"poll", l_poll},
  {"stats", l_stats},
  {"set_protocol", l_set_protocol},
  {"close", l_close},
  {NULL, NULL}
};

void mqtt_open_client(lua_State *L, int mod) {
  luaL_newmetatable(L, CLIENT_META);
  luaL_newlib(L, client_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_new);
  lua_setfield(L, mod, "client");
}
