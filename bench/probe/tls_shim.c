/*
** tls_shim — a bench-only LD_PRELOAD library for the TLS study of
** bench/e2e.lua (--study=tls). It sits between LuaSec and libssl and
** answers "does LuaSec set SSL_MODE_RELEASE_BUFFERS, and what does it buy?":
**
**   - every SSL_set_mode/SSL_CTX_set_mode call (SSL_ctrl/SSL_CTX_ctrl with
**     SSL_CTRL_MODE) that carries SSL_MODE_RELEASE_BUFFERS is counted, and
**     the count is printed to stderr when the process exits;
**   - with BENCH_TLS_NO_RELEASE=1 in the environment the flag is removed
**     from those calls, so the server runs exactly as it would on a LuaSec
**     that never set it.
**
** Nothing else is changed. Never loaded by the ordinary benchmark runs.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/ssl.h>

static long (*real_ssl_ctrl)(SSL *, int, long, void *);
static long (*real_ctx_ctrl)(SSL_CTX *, int, long, void *);
static unsigned long seen_ssl, seen_ctx, masked;
static int no_release = -1;

static void report(void) {
  fprintf(stderr, "tls_shim: SSL_MODE_RELEASE_BUFFERS set on %lu connection(s) and %lu context(s)%s\n",
          seen_ssl, seen_ctx, masked ? " (masked: BENCH_TLS_NO_RELEASE=1)" : "");
}

static void init(void) {
  if (no_release >= 0) return;
  const char *e = getenv("BENCH_TLS_NO_RELEASE");
  no_release = e && e[0] == '1';
  atexit(report);
}

/* LuaSec's ssl.so is dlopen()ed with RTLD_LOCAL, so libssl is not in the
** global scope that RTLD_NEXT searches: look the real functions up in
** libssl itself (already loaded as ssl.so's dependency by the first call). */
static void *real(const char *name) {
  void *h = dlopen("libssl.so.3", RTLD_NOW | RTLD_NOLOAD);
  if (!h) h = dlopen("libssl.so.3", RTLD_NOW);
  void *f = h ? dlsym(h, name) : NULL;
  if (!f) { fprintf(stderr, "tls_shim: cannot find %s\n", name); abort(); }
  return f;
}

static long filter(int cmd, long larg, unsigned long *seen) {
  init();
  if (cmd == SSL_CTRL_MODE && (larg & SSL_MODE_RELEASE_BUFFERS)) {
    if (seen_ssl + seen_ctx == 0)   /* the process may not exit normally: say it now */
      fprintf(stderr, "tls_shim: SSL_MODE_RELEASE_BUFFERS is set by the %s%s\n",
              seen == &seen_ssl ? "connection (SSL_set_mode)" : "context (SSL_CTX_set_mode)",
              no_release ? ", masked: BENCH_TLS_NO_RELEASE=1" : "");
    (*seen)++;
    if (no_release) { larg &= ~(long)SSL_MODE_RELEASE_BUFFERS; masked++; }
  }
  return larg;
}

long SSL_ctrl(SSL *s, int cmd, long larg, void *parg) {
  if (!real_ssl_ctrl) real_ssl_ctrl = (long (*)(SSL *, int, long, void *))real("SSL_ctrl");
  return real_ssl_ctrl(s, cmd, filter(cmd, larg, &seen_ssl), parg);
}

long SSL_CTX_ctrl(SSL_CTX *c, int cmd, long larg, void *parg) {
  if (!real_ctx_ctrl) real_ctx_ctrl = (long (*)(SSL_CTX *, int, long, void *))real("SSL_CTX_ctrl");
  return real_ctx_ctrl(c, cmd, filter(cmd, larg, &seen_ctx), parg);
}
