/*
** queue.c — what the MQTT client holds while it cannot hand messages to
** libmosquitto (disconnected, or its window of unacknowledged messages is
** full).
**
** Events and retained state are held differently, because losing them
** means different things. Events are a history: they wait in order, and
** when more than `max` wait, the oldest is dropped (and counted), so a
** broker that is down for hours costs a bounded amount of memory.
** Retained messages are a device's current state: only the latest one per
** topic matters, so a new one replaces the one still waiting (keeping its
** place in line), and none is ever dropped. They are at most one per
** device, which bounds them as the device engine itself is bounded.
**
** Nothing here raises: the queue is filled from Lua calls but also changed
** between libmosquitto calls, so running out of memory is a return value.
*/
#include <string.h>
#include "mqtt.h"

void *mqtt_alloc(const MqttAlloc *a, void *p, size_t old, size_t sz) {
  void *q = a->f(a->ud, p, old, sz);
  if (sz == 0) {
    *a->bytes -= old;
    return NULL;
  }
  if (q != NULL) *a->bytes = *a->bytes - old + sz;
  return q;
}

#define MIN_BUCKETS 16u

void mqtt_queue_init(Queue *q, uint32_t max) {
  memset(q, 0, sizeof *q);
  q->max = max;
}

static uint32_t hash_topic(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  size_t i;
  for (i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

static void list_append(MsgList *l, Msg *m) {
  m->next = NULL;
  m->prev = l->tail;
  if (l->tail) l->tail->next = m; else l->head = m;
  l->tail = m;
  l->n++;
}

static void list_remove(MsgList *l, Msg *m) {
  if (m->prev) m->prev->next = m->next; else l->head = m->next;
  if (m->next) m->next->prev = m->prev; else l->tail = m->prev;
  m->prev = m->next = NULL;
  l->n--;
}

/* Put n where o is in l (same place in line). */
static void list_replace(MsgList *l, Msg *o, Msg *n) {
  n->prev = o->prev;
  n->next = o->next;
  if (o->prev) o->prev->next = n; else l->head = n;
  if (o->next) o->next->prev = n; else l->tail = n;
}

static Msg **bucket_of(const Queue *q, uint32_t h) {
  return &q->buckets[h & (q->nbuckets - 1)];
}

static Msg *find_state(const Queue *q, uint32_t h, const char *topic,
                       size_t len) {
  Msg *m;
  if (q->nbuckets == 0) return NULL;
  for (m = *bucket_of(q, h); m; m = m->hnext)
    if (m->hash == h && m->topiclen == len && memcmp(m->data, topic, len) == 0)
      return m;
  return NULL;
}

static void unchain(Queue *q, Msg *m) {
  Msg **pp = bucket_of(q, m->hash);
  while (*pp != m) pp = &(*pp)->hnext;
  *pp = m->hnext;
  m->hnext = NULL;
}

/* Resize the hash to n buckets (a power of two); keeps the old one when
** out of memory, which only makes chains longer. */
static void rehash(Queue *q, const MqttAlloc *a, uint32_t n) {
  Msg **nb = (Msg **)mqtt_alloc(a, NULL, 0, (size_t)n * sizeof(Msg *));
  Msg *m;
  if (nb == NULL) return;
  memset(nb, 0, (size_t)n * sizeof(Msg *));
  mqtt_alloc(a, q->buckets, (size_t)q->nbuckets * sizeof(Msg *), 0);
  q->buckets = nb;
  q->nbuckets = n;
  for (m = q->states.head; m; m = m->next) {
    Msg **b = bucket_of(q, m->hash);
    m->hnext = *b;
    *b = m;
  }
}

static Msg *msg_new(const MqttAlloc *a, const char *topic, size_t topiclen,
                    const char *payload, size_t payloadlen, const char *id,
                    size_t idlen, const char *type, size_t typelen) {
  size_t size = sizeof(Msg) + topiclen + 1 + payloadlen + idlen + 1 + typelen + 1;
  Msg *m = (Msg *)mqtt_alloc(a, NULL, 0, size);
  char *p;
  if (m == NULL) return NULL;
  memset(m, 0, sizeof *m);
  m->size = size;
  m->topiclen = (uint32_t)topiclen;
  m->payloadlen = (uint32_t)payloadlen;
  m->idlen = (uint32_t)idlen;
  m->typelen = (uint32_t)typelen;
  p = m->data;
  memcpy(p, topic, topiclen); p += topiclen; *p++ = '\0';
  if (payloadlen) memcpy(p, payload, payloadlen);
  p += payloadlen;
  if (idlen) memcpy(p, id, idlen);
  p += idlen; *p++ = '\0';
  if (typelen) memcpy(p, type, typelen);
  p += typelen; *p = '\0';
  return m;
}

int mqtt_queue_push(Queue *q, const MqttAlloc *a, const char *topic,
                    size_t topiclen, const char *payload, size_t payloadlen,
                    int retain, const char *id, size_t idlen,
                    const char *type, size_t typelen) {
  Msg *m = msg_new(a, topic, topiclen, payload, payloadlen, id, idlen, type, typelen);
  if (m == NULL) return 0;
  m->retain = (uint8_t)(retain != 0);
  m->hash = hash_topic(topic, topiclen);
  if (retain) {
    Msg *old = find_state(q, m->hash, topic, topiclen);
    if (old) {
      m->seq = old->seq;
      unchain(q, old);
      list_replace(&q->states, old, m);
      q->held -= old->size;
      mqtt_alloc(a, old, old->size, 0);
      m->hnext = *bucket_of(q, m->hash);
      *bucket_of(q, m->hash) = m;
      q->held += m->size;
      return 2;
    }
    if (q->states.n + 1 > q->nbuckets)
      rehash(q, a, q->nbuckets ? q->nbuckets * 2 : MIN_BUCKETS);
    if (q->nbuckets == 0) {  /* no memory for even the first buckets */
      mqtt_alloc(a, m, m->size, 0);
      return 0;
    }
    m->seq = q->seq++;
    list_append(&q->states, m);
    m->hnext = *bucket_of(q, m->hash);
    *bucket_of(q, m->hash) = m;
    q->held += m->size;
    return 1;
  }
  m->seq = q->seq++;
  list_append(&q->events, m);
  q->held += m->size;
  if (q->events.n > q->max) {
    mqtt_queue_drop(q, a, q->events.head);
    return 3;
  }
  return 1;
}

Msg *mqtt_queue_peek(const Queue *q) {
  Msg *e = q->events.head, *s = q->states.head;
  if (e && s) return e->seq < s->seq ? e : s;
  return e ? e : s;
}

void mqtt_queue_drop(Queue *q, const MqttAlloc *a, Msg *m) {
  if (m->retain) {
    unchain(q, m);
    list_remove(&q->states, m);
    /* A burst (the whole fleet's state after a reconnect) may have grown
    ** the hash far beyond what is left: give that memory back. */
    if (q->nbuckets > MIN_BUCKETS && q->states.n < q->nbuckets / 8)
      rehash(q, a, q->states.n < MIN_BUCKETS / 2 ? MIN_BUCKETS : q->nbuckets / 4);
  } else {
    list_remove(&q->events, m);
  }
  q->held -= m->size;
  mqtt_alloc(a, m, m->size, 0);
}

uint32_t mqtt_queue_pending(const Queue *q) {
  return q->events.n + q->states.n;
}

void mqtt_queue_free(Queue *q, const MqttAlloc *a) {
  Msg *m, *next;
  for (m = q->events.head; m; m = next) { next = m->next; mqtt_alloc(a, m, m->size, 0); }
  for (m = q->states.head; m; m = next) { next = m->next; mqtt_alloc(a, m, m->size, 0); }
  mqtt_alloc(a, q->buckets, (size_t)q->nbuckets * sizeof(Msg *), 0);
  memset(q, 0, sizeof *q);
}
