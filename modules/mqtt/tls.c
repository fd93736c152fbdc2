/*
** tls.c — the TLS context of an mqtts:// client (OpenSSL).
**
** libmosquitto could build this itself from file names, but it would only
** find a bad CA, certificate or key when it first connects, and it checks
** the broker's certificate against the address it was given. Brisk resolves
** broker names itself, without blocking Prosody, and hands libmosquitto an
** IP address; so the context is built here, once, when the module loads:
** files that are missing or wrong are a load error with OpenSSL's reason,
** the certificate must name the configured host, and SNI carries that
** host too (libmosquitto would send the IP address: an info callback puts
** the name back before the ClientHello is written).
*/
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "mqtt.h"

/* The reason OpenSSL gives for the last failure, after what we tried. */
static void fail(char *err, size_t errlen, const char *what, const char *path) {
  unsigned long e = ERR_peek_last_error();
  char reason[256];
  if (e) ERR_error_string_n(e, reason, sizeof reason);
  else snprintf(reason, sizeof reason, "unknown error");
  snprintf(err, errlen, "%s '%s': %s", what, path ? path : "", reason);
  ERR_clear_error();
}

/* A readable file, or a message with the system's reason. */
static int readable(const char *what, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "%s '%s': %s", what, path, strerror(errno));
    return 0;
  }
  fclose(f);
  return 1;
}

/* SNI: the configured name (app data of the context; NULL for an IP
** address, which SNI may not carry), set at the start of the handshake,
** after libmosquitto has set its address. */
static void sni_callback(const SSL *ssl, int where, int ret) {
  BRISK_UNUSED(ret);
  if ((where & SSL_CB_HANDSHAKE_START) && !SSL_is_init_finished(ssl)) {
    const char *name = (const char *)SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    SSL_set_tlsext_host_name((SSL *)ssl, name);
  }
}

void *mqtt_tls_new(const char *ca_file, const char *cert_file,
                   const char *key_file, const char *name, int numeric,
                   char *err, size_t errlen) {
  SSL_CTX *ctx;
  X509_VERIFY_PARAM *param;
  ERR_clear_error();
  if ((cert_file == NULL) != (key_file == NULL)) {
    snprintf(err, errlen, "tls needs both cert_file and key_file, or neither");
    return NULL;
  }
  if (ca_file && !readable("cannot read tls.ca_file", ca_file, err, errlen)) return NULL;
  if (cert_file && !readable("cannot read tls.cert_file", cert_file, err, errlen)) return NULL;
  if (key_file && !readable("cannot read tls.key_file", key_file, err, errlen)) return NULL;
  ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    fail(err, errlen, "cannot create a TLS context", NULL);
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (ca_file) {
    if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
      fail(err, errlen, "cannot load tls.ca_file", ca_file);
      goto bad;
    }
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    fail(err, errlen, "cannot load the system's CA certificates", NULL);
    goto bad;
  }
  if (cert_file) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
      fail(err, errlen, "cannot load tls.cert_file", cert_file);
      goto bad;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
      fail(err, errlen, "cannot load tls.key_file", key_file);
      goto bad;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      fail(err, errlen, "tls.key_file does not match tls.cert_file", key_file);
      goto bad;
    }
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  param = SSL_CTX_get0_param(ctx);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (numeric ? X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1
              : X509_VERIFY_PARAM_set1_host(param, name, 0) != 1) {
    fail(err, errlen, "cannot check the broker's certificate for", name);
    goto bad;
  }
  SSL_CTX_set_app_data(ctx, numeric ? NULL : (void *)name);
  SSL_CTX_set_info_callback(ctx, sni_callback);
  return ctx;
bad:
  SSL_CTX_free(ctx);
  return NULL;
}

void mqtt_tls_free(void *ctx) {
  SSL_CTX_free((SSL_CTX *)ctx);
}

int mqtt_tls_handshaking(void *ssl, int *want_write) {
  if (SSL_is_init_finished((SSL *)ssl)) return 0;
  *want_write = SSL_want_write((SSL *)ssl);
  return 1;
}
