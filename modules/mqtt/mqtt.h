/*
** mqtt.h — what the parts of brisk.mqtt share: the broker URL parser
** (url.c), topic escaping (topic.c), the bounded outgoing queue (queue.c),
** the TLS context (tls.c), and the client (client.c), a libmosquitto
** connection that the caller's event loop drives, and the openers that
** register each part's functions in the module table (mqtt.c calls them).
*/
#ifndef MQTT_H
#define MQTT_H

#include <stddef.h>
#include <stdint.h>
#include "brisk.h"

/* ------------------------------------------------------------------- URLs */

#define MQTT_URL_MAXLEN 1024
#define MQTT_HOST_MAXLEN 253

typedef struct MqttUrl {
  int tls;            /* mqtts:// */
  int numeric;        /* 4 or 6: the host is an IP literal; 0: a name */
  uint16_t port;
  char host[MQTT_HOST_MAXLEN + 1];  /* without brackets, NUL-terminated */
} MqttUrl;

/*
** Parse a broker URL, "mqtt[s]://host[:port][/]" (host: a name, an IPv4
** address or a bracketed IPv6 address). Returns 0, or -1 and sets *err to
** a static message. Never reads past s + len.
*/
int mqtt_url_parse(const char *s, size_t len, MqttUrl *u, const char **err);

/* --------------------------------------------------------------- topics */

/*
** One topic level from any string: '%', '+', '#', '/' and NUL become
** "%25", "%2B", "%23", "%2F", "%00"; every other byte is kept. out must
** have room for 3 * len bytes; returns the length written.
*/
size_t mqtt_topic_escape(const char *s, size_t len, char *out);

/*
** The inverse: out gets at most len bytes. Returns the length, or -1 when
** s is not exactly what mqtt_topic_escape produces (a bare '+', '#' or
** '/', a '%' not followed by one of the five escapes above).
*/
long mqtt_topic_unescape(const char *s, size_t len, char *out);

/* --------------------------------------------------------------- queue */

/*
** A message waiting to be handed to libmosquitto. The block holds the
** topic, NUL, the payload, and the MQTT 5 event id and type (each
** NUL-terminated, possibly empty).
*/
typedef struct Msg {
  struct Msg *prev, *next;  /* in its list */
  struct Msg *hnext;        /* hash chain of pending retained messages */
  uint64_t seq;             /* order of first queueing */
  uint32_t hash;
  uint32_t topiclen, payloadlen, idlen, typelen;
  uint8_t retain;
  size_t size;              /* of this block */
  char data[];
} Msg;

typedef struct MsgList {
  Msg *head, *tail;
  uint32_t n;
} MsgList;

/*
** Pending messages: events (not retained) in a FIFO bounded by max, where
** the oldest goes when a new one would exceed it; retained messages in a
** FIFO of their own, at most one per topic (a newer one replaces the
** pending one in place, so a device's state keeps its place and only its
** latest value is sent). Both in blocks of the Lua state's allocator,
** counted in *bytes.
*/
typedef struct Queue {
  MsgList events, states;
  Msg **buckets;            /* pending retained messages by topic */
  uint32_t nbuckets;
  uint32_t max;             /* most pending events */
  uint64_t seq;
  size_t held;              /* bytes of pending messages */
} Queue;

/* Allocation through a Lua allocator, for code that must not raise (the
** queue is also used from libmosquitto's callbacks' caller). */
typedef struct MqttAlloc {
  lua_Alloc f;
  void *ud;
  size_t *bytes;
} MqttAlloc;

void *mqtt_alloc(const MqttAlloc *a, void *p, size_t old, size_t sz);

void mqtt_queue_init(Queue *q, uint32_t max);
/*
** Queue a message. Returns 1 when queued, 2 when it replaced a pending
** retained message of the same topic, 3 when the oldest pending event was
** dropped to make room, 0 when out of memory (nothing changed).
*/
int mqtt_queue_push(Queue *q, const MqttAlloc *a, const char *topic,
                    size_t topiclen, const char *payload, size_t payloadlen,
                    int retain, const char *id, size_t idlen,
                    const char *type, size_t typelen);
/* The next message to send (the older of the two heads), or NULL. */
Msg *mqtt_queue_peek(const Queue *q);
/* Take m (from peek) out of the queue and free it. */
void mqtt_queue_drop(Queue *q, const MqttAlloc *a, Msg *m);
uint32_t mqtt_queue_pending(const Queue *q);
void mqtt_queue_free(Queue *q, const MqttAlloc *a);

/* ---------------------------------------------------------------- TLS */

/*
** A TLS client context (an OpenSSL SSL_CTX, as void * so that only tls.c
** and client.c see OpenSSL): the broker's certificate is verified against
** ca_file (NULL: the system's CAs) and must name `name` (a host name, or
** an IP address when numeric), whatever address the socket is connected
** to; cert_file and key_file (both or neither) are the client's own.
** SNI is `name` (none for an IP address). Returns NULL and writes why
** into err (errlen bytes). name must outlive the context.
*/
void *mqtt_tls_new(const char *ca_file, const char *cert_file,
                   const char *key_file, const char *name, int numeric,
                   char *err, size_t errlen);
void mqtt_tls_free(void *ctx);
/*
** ssl (libmosquitto's SSL object) is still in its handshake: returns 1 and
** sets *want_write to whether OpenSSL waits to write; 0 once it is done.
*/
int mqtt_tls_handshaking(void *ssl, int *want_write);

/* ------------------------------------------------------------- openers */

void mqtt_open_url(lua_State *L, int mod);
void mqtt_open_topic(lua_State *L, int mod);
void mqtt_open_client(lua_State *L, int mod);

#endif
