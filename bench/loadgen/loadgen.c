/*
** Brisk's XMPP load generator: one process, one thread, epoll, thousands of
** real client connections to a Prosody on loopback.  Every connection does
** what a real client does (stream open, SASL PLAIN, resource bind, session,
** initial presence) and then takes part in one scenario:
**
**   pingpong  clients are paired; K messages are in flight at any time, each
**             a ping from one member of a pair to the other's bare JID and a
**             pong back; the token then moves on to the next pair, so every
**             pair takes part while the concurrency stays K.
**   presence  one controller account ("ctl", whose roster holds every device,
**             subscribed both ways) and many device accounts; K devices at a
**             time change presence (status updates, and every fourth change
**             an unavailable/available flap that makes the server probe the
**             controller again); the controller sees every change.
**   idle      every client connects, then nothing happens for the duration.
**   large     every client sends one large stanza (--stanza-kb, an IQ to the
**             server that it answers with an error), --inflight at a time,
**             then idles like "idle": the server's memory after large
**             stanzas.
**
** --tls: every client negotiates STARTTLS (OpenSSL, TLS 1.2 or 1.3, the
** server's certificate not verified) before it authenticates, as production
** clients do; everything after the handshake goes through TLS.
**
** --probe DIR: at two moments (before the first connect, and after the
** login burst settled) ask the server to describe its memory: write the
** moment's name into DIR/probe.request, send SIGUSR2 to --server-pid and
** wait until DIR/probe-<name>.txt appears (bench/e2e/mod_bench_probe.lua
** writes it). The clients stay serviced meanwhile.
**
** pingpong and presence can add a second, light window (--light-inflight K
** --light-duration S): the saturated window's latency is mostly queueing,
** the light one shows the cost of a single stanza and the pauses hitting it.
** Tokens carry their window's number, so stragglers of the first window are
** never counted in the second.
**
** The process measures its own numbers: stanzas delivered to its clients in
** the measured window, latency from the timestamp each stanza carries, the
** server's CPU time (utime+stime from /proc/<pid>/stat) and resident memory
** (VmRSS from /proc/<pid>/status) at the window's edges, and its own CPU time
** so that a reader can see it was not the bottleneck.  Output is one line of
** key=value pairs on stdout; progress and errors go to stderr.
**
** Everything is bounded: connection attempts time out, the run stops after
** its duration, and a hard deadline aborts whatever is still pending.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <expat.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* Connection states, in the order a client walks through them. */
enum {
  ST_IDLE, ST_CONNECTING, ST_FEATURES1, ST_STARTTLS, ST_TLS, ST_AUTH, ST_FEATURES2,
  ST_BIND, ST_SESSION, ST_READY, ST_DEAD
};

typedef struct Buf {
  char *p;
  size_t len, cap, off;
} Buf;

struct Run;

typedef struct Conn {
  struct Run *run;     /* expat callbacks get the Conn; the run is reached here */
  int fd;
  int idx;             /* client number; 0 is the controller in "presence" */
  int state;
  int depth;           /* XML element depth; 1 = stanza level */
  int restart;         /* SASL succeeded: reset the parser after this chunk */
  int in_text;         /* collecting <body>/<status> text at depth 2 */
  int writable_wait;   /* EPOLLOUT registered */
  int flaps;           /* presence: changes made by this device */
  char sname[24];      /* name of the stanza being parsed */
  char stype[16];      /* its type attribute */
  char sid[16];        /* its id attribute */
  char text[40];       /* timestamp text carried by the stanza */
  size_t textlen;
  int uploaded;        /* large: 1 sent, 2 answered */
  double started;      /* when the connect began (for timeouts) */
  XML_Parser xp;
  SSL *ssl;            /* --tls, from <proceed/> on */
  int tls_up;          /* the handshake is complete */
  Buf out;
} Conn;

/* Options and run-wide state: one instance, owned by main(). */
typedef struct Run {
  const char *host, *domain, *prefix, *password, *scenario, *ctl;
  int port, nclients, inflight, concurrency, server_pid;
  double duration, connect_timeout, warmup;
  int ep;
  Conn *conns;
  int nconn;            /* total connections (clients, plus ctl in presence) */
  int next_connect, connecting, ready, dead;
  int measuring, stopping;
  int gen;              /* window number carried by every token: stale ones are ignored */
  int light_inflight;
  double light_duration;
  int resync;           /* presence: the controller is logging in again */
  unsigned char *seen;  /* resync: devices whose presence reached it */
  int nseen;
  double t0, t1;
  uint64_t received, received_msg, received_pres, sent, errors;
  uint32_t *lat;        /* latency samples in microseconds */
  size_t nlat, caplat;
  uint64_t seen_lat;
  unsigned rng;
  int tls;              /* --tls: STARTTLS before SASL */
  SSL_CTX *sslctx;
  const char *probe_dir;  /* --probe DIR */
  int stanza_kb;        /* large: size of each client's stanza */
  char *blob;           /* large: the stanza itself */
  size_t bloblen;
  int next_upload, uploads_done, uploads_open;
} Run;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("loadgen: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (q == NULL) die("out of memory");
  return q;
}

/* ---- output buffers ---------------------------------------------------- */

static void buf_add(Buf *b, const char *s, size_t n) {
  if (b->off > 0 && b->off == b->len) b->off = b->len = 0;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 512;
    while (cap < b->len + n) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void conn_close(Run *r, Conn *c, int error);

/* One write to the socket or through TLS: bytes written, 0 when it would
** block (errno EAGAIN), -1 on error. */
static ssize_t conn_write(Conn *c, const char *p, size_t n) {
  if (!c->ssl) {
    ssize_t w;
    do w = write(c->fd, p, n); while (w < 0 && errno == EINTR);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    return w;
  }
  ERR_clear_error();
  int w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
  if (w > 0) return w;
  int e = SSL_get_error(c->ssl, w);
  if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) { errno = EAGAIN; return 0; }
  errno = EIO;
  return -1;
}

/* Write what is queued; on a full socket wait for EPOLLOUT. */
static void conn_flush(Run *r, Conn *c) {
  if (c->ssl && !c->tls_up) return;   /* queued until the handshake is done */
  while (c->out.off < c->out.len) {
    ssize_t n = conn_write(c, c->out.p + c->out.off, c->out.len - c->out.off);
    if (n > 0) { c->out.off += (size_t)n; continue; }
    if (n == 0) {
      if (!c->writable_wait) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)c->idx };
        epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->writable_wait = 1;
      }
      return;
    }
    conn_close(r, c, 1);
    return;
  }
  c->out.off = c->out.len = 0;
  if (c->out.cap > 65536) {   /* a large stanza went out: give its buffer back */
    free(c->out.p);
    c->out.p = NULL;
    c->out.cap = 0;
  }
  if (c->writable_wait) {
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)c->idx };
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->writable_wait = 0;
  }
}

static void conn_send(Run *r, Conn *c, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) die("stanza too long");
  if (c->state == ST_DEAD) return;
  buf_add(&c->out, tmp, (size_t)n);
  conn_flush(r, c);
}

/* ---- account names ----------------------------------------------------- */

static void conn_user(Run *r, const Conn *c, char *out, size_t n) {
  if (r->ctl && c->idx == 0) snprintf(out, n, "%s", r->ctl);
  else snprintf(out, n, "%s%d", r->prefix, r->ctl ? c->idx - 1 : c->idx);
}

static void base64(const unsigned char *in, size_t n, char *out) {
  static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i;
  for (i = 0; i + 2 < n; i += 3) {
    *out++ = t[in[i] >> 2];
    *out++ = t[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
    *out++ = t[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
    *out++ = t[in[i + 2] & 63];
  }
  if (i < n) {
    *out++ = t[in[i] >> 2];
    if (i + 1 < n) {
      *out++ = t[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
      *out++ = t[(in[i + 1] & 15) << 2];
    } else {
      *out++ = t[(in[i] & 3) << 4];
      *out++ = '=';
    }
    *out++ = '=';
  }
  *out = '\0';
}

/* ---- latency samples --------------------------------------------------- */

/* Keep every sample up to the cap, then a uniform reservoir sample, so a
** long run has bounded memory and unbiased percentiles. */
static void lat_add(Run *r, uint64_t sent_ns) {
  uint64_t t = now_ns();
  if (sent_ns == 0 || sent_ns > t) return;
  uint64_t us = (t - sent_ns) / 1000;
  if (us > UINT32_MAX) us = UINT32_MAX;
  r->seen_lat++;
  if (r->nlat < r->caplat) {
    r->lat[r->nlat++] = (uint32_t)us;
  } else {
    r->rng = r->rng * 1103515245u + 12345u;
    uint64_t j = ((uint64_t)r->rng << 16 ^ (uint64_t)rand()) % r->seen_lat;
    if (j < r->caplat) r->lat[j] = (uint32_t)us;
  }
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double percentile(const uint32_t *v, size_t n, double p) {
  if (n == 0) return 0;
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i] / 1000.0;
}

/* ---- scenario actions -------------------------------------------------- */

static int pairs(const Run *r) { return r->nclients / 2; }

/* pingpong: pair p's first member pings the second. */
static void send_ping(Run *r, int p, int reverse) {
  Conn *from = &r->conns[2 * p + (reverse ? 1 : 0)];
  Conn *to = &r->conns[2 * p + (reverse ? 0 : 1)];
  char user[64];
  conn_user(r, to, user, sizeof user);
  if (from->state != ST_READY) return;
  conn_send(r, from, "<message to='%s@%s' type='chat' id='%c%d'><body>%d:%llu</body></message>",
            user, r->domain, reverse ? 'o' : 'i', p, r->gen, (unsigned long long)now_ns());
  r->sent++;
}

/* presence: device d announces a change; every fourth one is a flap. */
static void send_presence(Run *r, int d) {
  Conn *c = &r->conns[d + 1];
  if (c->state != ST_READY) return;
  if (++c->flaps % 4 == 0) {
    conn_send(r, c, "<presence type='unavailable'/>");
    r->sent++;
  }
  conn_send(r, c, "<presence><show>%s</show><status>%d:%llu</status></presence>",
            (c->flaps & 1) ? "away" : "chat", r->gen, (unsigned long long)now_ns());
  r->sent++;
}

/* A stanza reached client c.  Count it, take its latency, move the token. */
static void on_stanza(Run *r, Conn *c) {
  if (r->resync && c->idx == 0 && strcmp(c->sname, "presence") == 0 && c->stype[0] == '\0') {
    int d = atoi(c->sid);
    if (d >= 0 && d < r->nclients && !r->seen[d]) { r->seen[d] = 1; r->nseen++; }
    return;
  }
  if (!r->measuring || r->stopping) return;
  /* Tokens carry "<window>:<send time in ns>"; a token of an earlier window
  ** still in the server's queues is neither counted nor passed on. */
  char *end;
  long gen = strtol(c->text, &end, 10);
  if (c->textlen > 0 && (*end != ':' || gen != r->gen)) return;
  uint64_t ts = c->textlen > 0 ? strtoull(end + 1, NULL, 10) : 0;
  r->received++;
  if (strcmp(c->sname, "message") == 0) {
    r->received_msg++;
    if (strcmp(r->scenario, "pingpong") != 0 || c->sid[0] == '\0') return;
    lat_add(r, ts);
    int p = atoi(c->sid + 1);
    if (p < 0 || p >= pairs(r)) return;
    if (c->sid[0] == 'i') send_ping(r, p, 1);  /* pong back */
    else send_ping(r, (p + r->inflight) % pairs(r), 0);  /* token moves on */
  } else if (strcmp(c->sname, "presence") == 0) {
    r->received_pres++;
    if (strcmp(r->scenario, "presence") != 0 || c->idx != 0) return;
    if (c->stype[0] != '\0' || c->textlen == 0) return;  /* unavailable or probe reply */
    lat_add(r, ts);
    /* The sender is in the from attribute, "<prefix><n>@domain/res". */
    int d = atoi(c->sid);
    if (d < 0 || d >= r->nclients) return;
    send_presence(r, (d + r->inflight) % r->nclients);
  }
}

/* ---- XMPP client state machine ----------------------------------------- */

static void send_stream_header(Run *r, Conn *c) {
  conn_send(r, c, "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>", r->domain);
}

static void became_ready(Run *r, Conn *c) {
  c->state = ST_READY;
  r->connecting--;
  r->ready++;
}

/* A complete stanza-level element (depth 1) ended. */
static void on_top_element(Run *r, Conn *c) {
  const char *n = c->sname;
  switch (c->state) {
  case ST_FEATURES1:
    if (strcmp(n, "stream:features") == 0 && r->tls && !c->ssl) {
      c->state = ST_STARTTLS;
      conn_send(r, c, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    } else if (strcmp(n, "stream:features") == 0) {
      char user[64], raw[160], b64[240];
      conn_user(r, c, user, sizeof user);
      int len = snprintf(raw, sizeof raw, "%c%s%c%s", 0, user, 0, r->password);
      base64((const unsigned char *)raw, (size_t)len, b64);
      c->state = ST_AUTH;
      conn_send(r, c, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>", b64);
    }
    break;
  case ST_STARTTLS:
    if (strcmp(n, "proceed") == 0) {
      c->restart = 2;   /* TLS starts after this chunk */
    } else {
      fprintf(stderr, "loadgen: client %d: STARTTLS refused (%s)\n", c->idx, n);
      conn_close(r, c, 1);
    }
    break;
  case ST_AUTH:
    if (strcmp(n, "success") == 0) {
      c->state = ST_FEATURES2;
      c->restart = 1;
    } else if (strcmp(n, "failure") == 0) {
      fprintf(stderr, "loadgen: client %d: SASL failure\n", c->idx);
      conn_close(r, c, 1);
    }
    break;
  case ST_FEATURES2:
    if (strcmp(n, "stream:features") == 0) {
      c->state = ST_BIND;
      conn_send(r, c, "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                "<resource>lg%d</resource></bind></iq>", c->idx);
    }
    break;
  case ST_BIND:
    if (strcmp(n, "iq") == 0 && strcmp(c->sid, "bind") == 0) {
      if (strcmp(c->stype, "result") != 0) { conn_close(r, c, 1); break; }
      c->state = ST_SESSION;
      conn_send(r, c, "<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    }
    break;
  case ST_SESSION:
    if (strcmp(n, "iq") == 0 && strcmp(c->sid, "sess") == 0) {
      if (strcmp(c->stype, "result") != 0) { conn_close(r, c, 1); break; }
      conn_send(r, c, "<presence/>");
      became_ready(r, c);
    }
    break;
  case ST_READY:
    if (c->uploaded == 1 && strcmp(n, "iq") == 0 && strcmp(c->sid, "big") == 0) {
      c->uploaded = 2;
      r->uploads_open--;
      r->uploads_done++;
      break;
    }
    on_stanza(r, c);
    break;
  default:
    break;
  }
}

static const char *attr(const XML_Char **a, const char *name) {
  for (; a[0]; a += 2)
    if (strcmp(a[0], name) == 0) return a[1];
  return NULL;
}

static void copy(char *dst, size_t n, const char *src) {
  snprintf(dst, n, "%s", src ? src : "");
}

static void xml_start(void *ud, const XML_Char *name, const XML_Char **atts) {
  Conn *c = ud;
  c->depth++;
  if (c->depth == 2) {
    copy(c->sname, sizeof c->sname, name);
    copy(c->stype, sizeof c->stype, attr(atts, "type"));
    copy(c->sid, sizeof c->sid, attr(atts, "id"));
    c->text[0] = '\0';
    c->textlen = 0;
    /* For presence the useful part of the sender is the device number. */
    if (strcmp(name, "presence") == 0) {
      const char *from = attr(atts, "from");
      c->sid[0] = '\0';
      if (from) {
        const char *p = from;
        while (*p && (*p < '0' || *p > '9') && *p != '@') p++;
        if (*p >= '0' && *p <= '9') copy(c->sid, sizeof c->sid, p);
        else copy(c->sid, sizeof c->sid, "-1");
      }
    }
  } else if (c->depth == 3 && (strcmp(name, "body") == 0 || strcmp(name, "status") == 0)) {
    c->in_text = 1;
  }
}

static void xml_text(void *ud, const XML_Char *s, int len) {
  Conn *c = ud;
  if (!c->in_text) return;
  size_t room = sizeof c->text - 1 - c->textlen;
  size_t n = (size_t)len < room ? (size_t)len : room;
  memcpy(c->text + c->textlen, s, n);
  c->textlen += n;
  c->text[c->textlen] = '\0';
}

static void xml_end(void *ud, const XML_Char *name) {
  Conn *c = ud;
  (void)name;
  if (c->depth == 3) c->in_text = 0;
  if (c->depth == 2) on_top_element(c->run, c);
  c->depth--;
}

static void parser_setup(Conn *c) {
  XML_SetUserData(c->xp, c);
  XML_SetElementHandler(c->xp, xml_start, xml_end);
  XML_SetCharacterDataHandler(c->xp, xml_text);
  c->depth = 0;
  c->in_text = 0;
}

/* ---- connection lifecycle ---------------------------------------------- */

static void conn_close(Run *r, Conn *c, int error) {
  if (c->state == ST_DEAD || c->fd < 0) return;
  if (c->state != ST_READY && c->state != ST_IDLE) r->connecting--;
  else if (c->state == ST_READY) r->ready--;
  if (c->uploaded == 1) { c->uploaded = 3; r->uploads_open--; }
  epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
  if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; c->tls_up = 0; }
  close(c->fd);
  c->fd = -1;
  c->state = ST_DEAD;
  r->dead++;
  if (error) r->errors++;
}

static void conn_start(Run *r, Conn *c) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)r->port);
  if (inet_pton(AF_INET, r->host, &sa.sin_addr) != 1) die("bad address %s", r->host);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket: %s (raise ulimit -n)", strerror(errno));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->state = ST_CONNECTING;
  c->started = now_s();
  r->connecting++;
  struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)c->idx };
  c->writable_wait = 1;
  if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
    fprintf(stderr, "loadgen: connect: %s\n", strerror(errno));
    conn_close(r, c, 1);
  }
}

static void conn_connected(Run *r, Conn *c) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    fprintf(stderr, "loadgen: connect: %s\n", strerror(err));
    conn_close(r, c, 1);
    return;
  }
  c->state = ST_FEATURES1;
  if (c->xp == NULL) {
    c->xp = XML_ParserCreate("UTF-8");
    if (c->xp == NULL) die("out of memory");
  }
  parser_setup(c);
  send_stream_header(r, c);
  if (c->out.len == 0 && c->writable_wait) {
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)c->idx };
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->writable_wait = 0;
  }
}

static void set_events(Run *r, Conn *c, int out) {
  struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)c->idx };
  epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->writable_wait = out;
}

/* Drive the TLS handshake; when it completes the stream starts over. */
static void tls_handshake(Run *r, Conn *c) {
  ERR_clear_error();
  int rc = SSL_do_handshake(c->ssl);
  if (rc == 1) {
    c->tls_up = 1;
    c->state = ST_FEATURES1;
    set_events(r, c, 0);
    send_stream_header(r, c);
    return;
  }
  int e = SSL_get_error(c->ssl, rc);
  if (e == SSL_ERROR_WANT_READ) { if (c->writable_wait) set_events(r, c, 0); return; }
  if (e == SSL_ERROR_WANT_WRITE) { if (!c->writable_wait) set_events(r, c, 1); return; }
  unsigned long err = ERR_get_error();
  fprintf(stderr, "loadgen: client %d: TLS handshake failed: %s\n", c->idx,
          err ? ERR_error_string(err, NULL) : "connection closed");
  conn_close(r, c, 1);
}

static void tls_start(Run *r, Conn *c) {
  c->ssl = SSL_new(r->sslctx);
  if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) die("SSL_new failed");
  SSL_set_connect_state(c->ssl);
  c->tls_up = 0;
  c->state = ST_TLS;
  XML_ParserReset(c->xp, "UTF-8");
  parser_setup(c);
  tls_handshake(r, c);
}

static void conn_readable(Run *r, Conn *c) {
  char buf[16384];
  for (;;) {
    ssize_t n;
    if (c->ssl) {
      ERR_clear_error();
      int k = SSL_read(c->ssl, buf, (int)sizeof buf);
      if (k > 0) {
        n = k;
      } else {
        int e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_READ) return;
        if (e == SSL_ERROR_WANT_WRITE) { if (!c->writable_wait) set_events(r, c, 1); return; }
        n = e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
      }
    } else {
      n = read(c->fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    }
    if (n <= 0) {
      if (!r->stopping) fprintf(stderr, "loadgen: client %d: server closed the stream\n", c->idx);
      conn_close(r, c, !r->stopping);
      return;
    }
    if (XML_Parse(c->xp, buf, (int)n, 0) == XML_STATUS_ERROR) {
      fprintf(stderr, "loadgen: client %d: XML error: %s\n", c->idx,
              XML_ErrorString(XML_GetErrorCode(c->xp)));
      conn_close(r, c, 1);
      return;
    }
    if (c->state == ST_DEAD) return;
    /* After <success/> the stream starts over.  The server sends nothing
    ** more until it sees our new header, so nothing is lost by resetting
    ** after this chunk. */
    if (c->restart == 2) {   /* <proceed/>: the server waits for our ClientHello */
      c->restart = 0;
      tls_start(r, c);
      return;
    }
    if (c->restart) {
      c->restart = 0;
      XML_ParserReset(c->xp, "UTF-8");
      parser_setup(c);
      send_stream_header(r, c);
    }
    /* A short read emptied the socket; TLS may hold decrypted bytes, so it
    ** reads until OpenSSL says it wants more. */
    if (!c->ssl && (size_t)n < sizeof buf) return;
  }
}

/* ---- /proc readings of the server -------------------------------------- */

static double proc_cpu(int pid) {
  char path[64], line[2048];
  if (pid <= 0) return 0;
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(line, 1, sizeof line - 1, f);
  fclose(f);
  line[n] = '\0';
  /* The command name may contain spaces; fields resume after its ')'. */
  char *p = strrchr(line, ')');
  if (!p) return -1;
  unsigned long ut = 0, st = 0;
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    field++;
    if (field == 14) ut = strtoul(tok, NULL, 10);
    if (field == 15) { st = strtoul(tok, NULL, 10); break; }
  }
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(int pid) {
  char path[64], line[256];
  long kb = -1;
  if (pid <= 0) return 0;
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) { kb = strtol(line + 6, NULL, 10); break; }
  fclose(f);
  return kb;
}

static double self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- main loop --------------------------------------------------------- */

static void poll_once(Run *r, int timeout_ms) {
  struct epoll_event evs[256];
  int n = epoll_wait(r->ep, evs, 256, timeout_ms);
  if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
  for (int i = 0; i < n; i++) {
    Conn *c = &r->conns[evs[i].data.u32];
    if (c->state == ST_DEAD) continue;
    if (c->state == ST_CONNECTING) {
      if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) conn_connected(r, c);
      continue;
    }
    if (c->state == ST_TLS) {
      tls_handshake(r, c);
      continue;
    }
    if (evs[i].events & EPOLLOUT) conn_flush(r, c);
    if (c->state != ST_DEAD && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) conn_readable(r, c);
  }
}

/* Open connections, at most `concurrency` handshakes at a time so the
** server's listen backlog never overflows, until all are ready or failed. */
static void connect_all(Run *r, double deadline) {
  int last_report = 0;
  while (r->ready + r->dead < r->nconn) {
    /* In "presence" the controller logs in alone first, as a real one would. */
    int limit = (r->ctl && r->ready == 0 && r->dead == 0) ? 1 : r->concurrency;
    while (r->next_connect < r->nconn && r->connecting < limit)
      conn_start(r, &r->conns[r->next_connect++]);
    poll_once(r, 50);
    double t = now_s();
    for (int i = 0; i < r->next_connect; i++) {
      Conn *c = &r->conns[i];
      if (c->state != ST_READY && c->state != ST_DEAD && t - c->started > r->connect_timeout) {
        fprintf(stderr, "loadgen: client %d: login timed out (state %d)\n", i, c->state);
        conn_close(r, c, 1);
      }
    }
    if (r->ready / 1000 != last_report) {
      last_report = r->ready / 1000;
      fprintf(stderr, "loadgen: %d/%d clients ready\n", r->ready, r->nconn);
    }
    if (t > deadline) {
      /* Report what did log in rather than nothing (a server out of file
      ** descriptors never accepts the rest); the others count as errors. */
      fprintf(stderr, "loadgen: connecting took too long (%d ready of %d)\n", r->ready, r->nconn);
      for (int i = 0; i < r->nconn; i++) {
        Conn *c = &r->conns[i];
        if (c->state != ST_READY && c->state != ST_DEAD) conn_close(r, c, 1);
        else if (c->state == ST_IDLE) { c->state = ST_DEAD; r->dead++; r->errors++; }
      }
      r->next_connect = r->nconn;
      return;
    }
  }
}

/* Ask the server to describe its memory now (see --probe above). */
static void probe(Run *r, const char *label) {
  char req[600], tmp[600], out[600];
  if (!r->probe_dir || r->server_pid <= 0) return;
  snprintf(out, sizeof out, "%s/probe-%s.txt", r->probe_dir, label);
  snprintf(req, sizeof req, "%s/probe.request", r->probe_dir);
  snprintf(tmp, sizeof tmp, "%s/probe.request.tmp", r->probe_dir);
  unlink(out);
  FILE *f = fopen(tmp, "w");
  if (!f) { fprintf(stderr, "loadgen: cannot write %s\n", tmp); return; }
  fprintf(f, "%s\n", label);
  fclose(f);
  if (rename(tmp, req) != 0) { fprintf(stderr, "loadgen: cannot write %s\n", req); return; }
  kill(r->server_pid, SIGUSR2);
  double deadline = now_s() + 120;
  struct stat st;
  while (stat(out, &st) != 0) {
    if (now_s() > deadline) { fprintf(stderr, "loadgen: probe %s: no answer from the server\n", label); return; }
    poll_once(r, 20);
  }
}

/* large: the stanza every client sends once. */
static void make_blob(Run *r) {
  size_t n = (size_t)r->stanza_kb * 1024;
  char head[256];
  int h = snprintf(head, sizeof head, "<iq type='set' id='big' to='%s'><blob xmlns='urn:brisk:bench:blob'>", r->domain);
  const char *tail = "</blob></iq>";
  size_t t = strlen(tail);
  r->bloblen = (size_t)h + n + t;
  r->blob = malloc(r->bloblen);
  if (!r->blob) die("out of memory");
  memcpy(r->blob, head, (size_t)h);
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t i = 0; i < n; i++) r->blob[(size_t)h + i] = b64[(i * 7 + i / 64) & 63];
  memcpy(r->blob + h + n, tail, t);
}

/* large: every ready client sends the stanza, at most --inflight at once,
** until each got its answer (or the deadline passed). */
static void upload_all(Run *r, double deadline) {
  while (r->next_upload < r->nconn || r->uploads_open > 0) {
    while (r->uploads_open < r->inflight && r->next_upload < r->nconn) {
      Conn *c = &r->conns[r->next_upload++];
      if (c->state != ST_READY) continue;
      c->uploaded = 1;
      r->uploads_open++;
      buf_add(&c->out, r->blob, r->bloblen);
      conn_flush(r, c);
    }
    poll_once(r, 20);
    if (now_s() > deadline) {
      fprintf(stderr, "loadgen: uploads took too long (%d done)\n", r->uploads_done);
      r->errors++;
      return;
    }
  }
}

static void usage(void) {
  fprintf(stderr,
    "usage: loadgen --scenario pingpong|presence|idle|large --port N [--host 127.0.0.1]\n"
    "  [--domain localhost] [--clients N] [--prefix u] [--password pw] [--ctl ctl]\n"
    "  [--duration S] [--warmup S] [--inflight K] [--concurrency N] [--server-pid PID]\n"
    "  [--light-inflight K --light-duration S] [--connect-timeout S]\n"
    "  [--tls 1] [--tls-max 1.2|1.3] [--probe DIR] [--stanza-kb N]\n");
  exit(2);
}

int main(int argc, char **argv) {
  Run run;
  Run *r = &run;
  memset(r, 0, sizeof *r);
  r->host = "127.0.0.1"; r->domain = "localhost"; r->prefix = "u"; r->password = "bench";
  r->scenario = NULL; r->port = 0; r->nclients = 100; r->inflight = 64;
  r->concurrency = 100; r->duration = 5; r->warmup = 1; r->connect_timeout = 30;
  r->light_inflight = 0; r->light_duration = 0;
  const char *ctl = "ctl", *tls_max = NULL;
  r->stanza_kb = 500;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    i++;
    if (!strcmp(a, "--scenario")) r->scenario = v;
    else if (!strcmp(a, "--host")) r->host = v;
    else if (!strcmp(a, "--port")) r->port = atoi(v);
    else if (!strcmp(a, "--domain")) r->domain = v;
    else if (!strcmp(a, "--clients")) r->nclients = atoi(v);
    else if (!strcmp(a, "--prefix")) r->prefix = v;
    else if (!strcmp(a, "--password")) r->password = v;
    else if (!strcmp(a, "--ctl")) ctl = v;
    else if (!strcmp(a, "--duration")) r->duration = atof(v);
    else if (!strcmp(a, "--warmup")) r->warmup = atof(v);
    else if (!strcmp(a, "--inflight")) r->inflight = atoi(v);
    else if (!strcmp(a, "--concurrency")) r->concurrency = atoi(v);
    else if (!strcmp(a, "--server-pid")) r->server_pid = atoi(v);
    else if (!strcmp(a, "--connect-timeout")) r->connect_timeout = atof(v);
    else if (!strcmp(a, "--light-inflight")) r->light_inflight = atoi(v);
    else if (!strcmp(a, "--light-duration")) r->light_duration = atof(v);
    else if (!strcmp(a, "--tls")) r->tls = atoi(v) != 0;
    else if (!strcmp(a, "--tls-max")) { r->tls = 1; tls_max = v; }
    else if (!strcmp(a, "--probe")) r->probe_dir = v;
    else if (!strcmp(a, "--stanza-kb")) r->stanza_kb = atoi(v);
    else usage();
  }
  if (!r->scenario || r->port <= 0 || r->nclients < 2 || r->nclients > 1000000 ||
      r->inflight < 1 || r->concurrency < 1 || r->duration <= 0 || r->duration > 3600 ||
      r->light_inflight < 0 || r->light_duration < 0 || r->light_duration > 3600)
    usage();
  int is_pp = !strcmp(r->scenario, "pingpong"), is_pres = !strcmp(r->scenario, "presence");
  int is_large = !strcmp(r->scenario, "large");
  if (!is_pp && !is_pres && !is_large && strcmp(r->scenario, "idle") != 0) usage();
  if (is_large && (r->stanza_kb < 1 || r->stanza_kb > 100000)) usage();
  if (is_large) make_blob(r);
  if (r->tls) {
    r->sslctx = SSL_CTX_new(TLS_client_method());
    if (!r->sslctx) die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(r->sslctx, TLS1_2_VERSION);
    if (tls_max && !strcmp(tls_max, "1.2")) SSL_CTX_set_max_proto_version(r->sslctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(r->sslctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(r->sslctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(r->sslctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                     SSL_MODE_RELEASE_BUFFERS);
  }
  if (is_pres) r->ctl = ctl;
  if (is_pp && r->inflight > pairs(r)) r->inflight = pairs(r);
  if (is_pres && r->inflight > r->nclients) r->inflight = r->nclients;
  int inflight = r->inflight;

  signal(SIGPIPE, SIG_IGN);
  r->nconn = r->nclients + (r->ctl ? 1 : 0);
  r->conns = calloc((size_t)r->nconn, sizeof *r->conns);
  if (!r->conns) die("out of memory");
  for (int i = 0; i < r->nconn; i++) { r->conns[i].idx = i; r->conns[i].fd = -1; r->conns[i].run = r; }
  r->caplat = 2000000;
  r->lat = malloc(r->caplat * sizeof *r->lat);
  if (!r->lat) die("out of memory");
  r->rng = 12345;
  r->ep = epoll_create1(EPOLL_CLOEXEC);
  if (r->ep < 0) die("epoll_create1: %s", strerror(errno));

  /* Phase 1: log everybody in; the server's cost of that is reported too. */
  long rss0 = proc_rss_kb(r->server_pid);
  probe(r, "base");
  double scpu0 = proc_cpu(r->server_pid), lcpu0 = self_cpu(), tc0 = now_s();
  connect_all(r, tc0 + r->connect_timeout * 4 + r->nconn / 50.0);
  double tc1 = now_s(), scpu_login = proc_cpu(r->server_pid) - scpu0;
  int logged_in = r->ready;
  fprintf(stderr, "loadgen: %d clients ready in %.2f s (%d failed)\n", r->ready, tc1 - tc0, r->dead);
  if (r->ready == 0) die("no client could log in");

  /* Phase 1b (large): every client sends its large stanza. */
  double upload_s = 0, upload_cpu = 0;
  if (is_large) {
    double tu0 = now_s(), su0 = proc_cpu(r->server_pid);
    upload_all(r, tu0 + 60 + r->nconn * (double)r->stanza_kb / 20000.0);
    upload_s = now_s() - tu0;
    upload_cpu = proc_cpu(r->server_pid) - su0;
    fprintf(stderr, "loadgen: %d large stanzas answered in %.2f s\n", r->uploads_done, upload_s);
  }

  /* Phase 2: let the login burst (initial presence, probes) settle. */
  double tw = now_s() + r->warmup;
  while (now_s() < tw) poll_once(r, 20);
  long rss1 = proc_rss_kb(r->server_pid);
  probe(r, "ready");

  /* Phase 3: the measured window (bracketed by two counter-only probes,
  ** which the server answers without collecting garbage). */
  probe(r, "mark-start");
  double scpu1 = proc_cpu(r->server_pid), lcpu1 = self_cpu();
  r->measuring = 1;
  r->gen = 1;
  r->t0 = now_s();
  if (is_pp)
    for (int k = 0; k < r->inflight; k++) send_ping(r, (int)((long)k * pairs(r) / r->inflight), 0);
  else if (is_pres)
    for (int k = 0; k < r->inflight; k++) send_presence(r, (int)((long)k * r->nclients / r->inflight));
  double tend = r->t0 + r->duration;
  while (now_s() < tend) poll_once(r, 20);
  r->t1 = now_s();
  double scpu2 = proc_cpu(r->server_pid), lcpu2 = self_cpu();
  long rss2 = proc_rss_kb(r->server_pid);
  r->measuring = 0;
  uint64_t received = r->received, received_msg = r->received_msg, received_pres = r->received_pres;
  uint64_t sent = r->sent, samples = r->seen_lat;
  probe(r, "mark-end");
  qsort(r->lat, r->nlat, sizeof *r->lat, cmp_u32);
  double p50 = percentile(r->lat, r->nlat, 0.50), p90 = percentile(r->lat, r->nlat, 0.90);
  double p99 = percentile(r->lat, r->nlat, 0.99), pmax = r->nlat ? r->lat[r->nlat - 1] / 1000.0 : 0.0;

  /* Phase 3a: latency at light load.  The saturated window's latency is
  ** mostly queueing (Little's law: in flight / throughput); with only a few
  ** tokens in flight it shows the cost of one stanza and the pauses (GC,
  ** timers) that hit it.  Tokens of the first window drain first. */
  double lp50 = 0, lp99 = 0, lcpu = 0, lsecs = 0;
  uint64_t lsamples = 0, lreceived = 0;
  if ((is_pp || is_pres) && r->light_inflight > 0 && r->light_duration > 0) {
    double td = now_s() + 1.0;
    while (now_s() < td) poll_once(r, 20);
    r->nlat = 0;
    r->seen_lat = 0;
    r->inflight = r->light_inflight;
    if (is_pp && r->inflight > pairs(r)) r->inflight = pairs(r);
    if (is_pres && r->inflight > r->nclients) r->inflight = r->nclients;
    r->gen = 2;
    probe(r, "mark-light-start");
    uint64_t lrec0 = r->received;
    double lc0 = proc_cpu(r->server_pid), lt0 = now_s();
    r->measuring = 1;
    if (is_pp)
      for (int k = 0; k < r->inflight; k++) send_ping(r, (int)((long)k * pairs(r) / r->inflight), 0);
    else
      for (int k = 0; k < r->inflight; k++) send_presence(r, (int)((long)k * r->nclients / r->inflight));
    double tl = now_s() + r->light_duration;
    while (now_s() < tl) poll_once(r, 5);
    lcpu = proc_cpu(r->server_pid) - lc0;
    lsecs = now_s() - lt0;
    r->measuring = 0;
    lreceived = r->received - lrec0;
    probe(r, "mark-light-end");
    qsort(r->lat, r->nlat, sizeof *r->lat, cmp_u32);
    lp50 = percentile(r->lat, r->nlat, 0.50);
    lp99 = percentile(r->lat, r->nlat, 0.99);
    lsamples = r->seen_lat;
  }

  /* Phase 3b (presence): the roster-heavy controller logs in again and we
  ** time how long until it holds the presence of every online device: the
  ** server loads its big roster, probes every contact and routes each
  ** answer.  First let the tokens still in flight drain. */
  double resync_ms = -1, resync_cpu = -1;
  int resync_devices = 0;
  if (is_pres && r->conns[0].state == ST_READY) {
    double td = now_s() + 0.5;
    while (now_s() < td) poll_once(r, 20);
    Conn *c = &r->conns[0];
    conn_send(r, c, "</stream:stream>");
    conn_close(r, c, 0);
    r->dead--;
    c->state = ST_IDLE;
    c->out.off = c->out.len = 0;
    XML_ParserReset(c->xp, "UTF-8");
    for (int i = 1; i < r->nconn; i++) resync_devices += r->conns[i].state == ST_READY;
    r->seen = calloc((size_t)r->nclients, 1);
    if (!r->seen) die("out of memory");
    r->nseen = 0;
    r->resync = 1;
    double sc0 = proc_cpu(r->server_pid), t0 = now_s(), tmax = t0 + 30;
    conn_start(r, c);
    while (r->nseen < resync_devices && now_s() < tmax && c->state != ST_DEAD) poll_once(r, 20);
    if (r->nseen >= resync_devices) {
      resync_ms = (now_s() - t0) * 1000;
      resync_cpu = proc_cpu(r->server_pid) - sc0;
    } else {
      fprintf(stderr, "loadgen: controller resync incomplete: %d of %d device presences\n",
              r->nseen, resync_devices);
      r->errors++;
    }
    r->resync = 0;
  }
  r->stopping = 1;

  /* Phase 4: close politely; then give the server a moment to tidy up. */
  for (int i = 0; i < r->nconn; i++)
    if (r->conns[i].state != ST_DEAD) conn_send(r, &r->conns[i], "</stream:stream>");
  double tq = now_s() + 1.0;
  while (now_s() < tq && r->ready > 0) poll_once(r, 20);
  for (int i = 0; i < r->nconn; i++) conn_close(r, &r->conns[i], 0);

  double secs = r->t1 - r->t0, scpu = scpu2 - scpu1;
  printf("scenario=%s clients=%d connections=%d logged_in=%d errors=%llu inflight=%d seconds=%.3f "
         "sent=%llu received=%llu messages=%llu presences=%llu rate=%.1f "
         "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f samples=%llu "
         "server_cpu_s=%.3f server_cpu_per_100k=%.3f server_util=%.3f "
         "login_s=%.3f login_cpu_s=%.3f loadgen_cpu_s=%.3f loadgen_util=%.3f loadgen_login_cpu_s=%.3f "
         "rss_start_kb=%ld rss_ready_kb=%ld rss_end_kb=%ld rss_per_client_kb=%.2f "
         "resync_devices=%d resync_ms=%.1f resync_cpu_s=%.3f "
         "light_inflight=%d light_p50_ms=%.3f light_p99_ms=%.3f light_samples=%llu "
         "tls=%d uploads=%d upload_s=%.3f upload_cpu_s=%.3f stanza_kb=%d "
         "light_received=%llu light_seconds=%.3f light_server_cpu_s=%.3f\n",
         r->scenario, r->nclients, r->nconn, logged_in, (unsigned long long)r->errors, inflight, secs,
         (unsigned long long)sent, (unsigned long long)received,
         (unsigned long long)received_msg, (unsigned long long)received_pres,
         received / secs, p50, p90, p99, pmax, (unsigned long long)samples,
         scpu, received ? scpu / (double)received * 1e5 : 0.0, scpu / secs,
         tc1 - tc0, scpu_login, lcpu2 - lcpu1, (lcpu2 - lcpu1) / secs, lcpu1 - lcpu0,
         rss0, rss1, rss2, logged_in ? (double)(rss1 - rss0) / logged_in : 0.0,
         resync_devices, resync_ms, resync_cpu,
         r->light_inflight, lp50, lp99, (unsigned long long)lsamples,
         r->tls, r->uploads_done, upload_s, upload_cpu, is_large ? r->stanza_kb : 0,
         (unsigned long long)lreceived, lsecs, lcpu);
  for (int i = 0; i < r->nconn; i++) {
    if (r->conns[i].xp) XML_ParserFree(r->conns[i].xp);
    free(r->conns[i].out.p);
  }
  free(r->conns);
  free(r->lat);
  free(r->blob);
  if (r->sslctx) SSL_CTX_free(r->sslctx);
  free(r->seen);
  close(r->ep);
  return r->errors > (uint64_t)r->nconn / 100 ? 1 : 0;
}
