/*
** url.c — broker URLs: "mqtt://host[:port]" and "mqtts://host[:port]".
**
** The URL comes from the operator's configuration, and a bad one must stop
** mod_brisk_iot from loading with a message that says what is wrong, so the
** grammar is deliberately narrow: a scheme, a host (an ASCII host name, an
** IPv4 address, or an IPv6 address in brackets), an optional port, at most
** a trailing "/". Credentials in the URL are refused (they belong in
** username and password_file, where they do not end up in logs).
*/
#include <arpa/inet.h>
#include <string.h>
#include "mqtt.h"

static int lower(int ch) {
  return ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch;
}

/* s (n bytes) equals the lower-case word w, ignoring case. */
static int word_is(const char *s, size_t n, const char *w) {
  size_t i;
  if (strlen(w) != n) return 0;
  for (i = 0; i < n; i++)
    if (lower((unsigned char)s[i]) != w[i]) return 0;
  return 1;
}

static int host_char(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_';
}

int mqtt_url_parse(const char *s, size_t len, MqttUrl *u, const char **err) {
  const char *p, *end = s + len, *host, *hend;
  size_t i, hl;
  unsigned char addr[16];
  memset(u, 0, sizeof *u);
  if (len > MQTT_URL_MAXLEN) { *err = "broker URL is too long"; return -1; }
  for (i = 0; i < len; i++)
    if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7F) {
      *err = "broker URL has a space, control or non-ASCII character";
      return -1;
    }
  p = s;
  while (p < end && *p != ':') p++;
  if (p == end || end - p < 3 || memcmp(p, "://", 3) != 0) {
    *err = "broker must be a URL such as mqtt://127.0.0.1:1883";
    return -1;
  }
  if (word_is(s, (size_t)(p - s), "mqtt")) u->tls = 0;
  else if (word_is(s, (size_t)(p - s), "mqtts")) u->tls = 1;
  else { *err = "unknown scheme in broker URL (expected mqtt:// or mqtts://)"; return -1; }
  p += 3;
  /* The authority ends at the first '/'. */
  for (hend = p; hend < end && *hend != '/'; hend++)
    if (*hend == '@') {
      *err = "broker URL must not carry credentials (use username and password_file)";
      return -1;
    }
  if (hend < end && hend + 1 != end) {
    *err = "broker URL must not have a path, query or fragment";
    return -1;
  }
  end = hend;
  if (p < end && *p == '[') {
    host = ++p;
    while (p < end && *p != ']') p++;
    if (p == end) { *err = "broker URL has an unclosed '[' in its host"; return -1; }
    hl = (size_t)(p - host);
    p++;
    if (hl == 0 || hl > 45) { *err = "broker URL has a bad IPv6 address"; return -1; }
    memcpy(u->host, host, hl);
    u->host[hl] = '\0';
    if (inet_pton(AF_INET6, u->host, addr) != 1) {
      *err = "broker URL has a bad IPv6 address";
      return -1;
    }
    u->numeric = 6;
  } else {
    host = p;
    while (p < end && *p != ':') {
      if (!host_char((unsigned char)*p)) {
        *err = "broker host must be an ASCII host name or an IP address (IPv6 in brackets)";
        return -1;
      }
      p++;
    }
    hl = (size_t)(p - host);
    if (hl == 0) { *err = "broker URL has no host"; return -1; }
    if (hl > MQTT_HOST_MAXLEN) { *err = "broker host name is too long"; return -1; }
    memcpy(u->host, host, hl);
    u->host[hl] = '\0';
    if (inet_pton(AF_INET, u->host, addr) == 1) u->numeric = 4;
  }
  if (p < end) {
    unsigned long port = 0;
    const char *digits;
    if (*p != ':') { *err = "broker URL has junk after its host"; return -1; }
    digits = ++p;
    while (p < end && *p >= '0' && *p <= '9' && p - digits < 6)
      port = port * 10 + (unsigned long)(*p++ - '0');
    if (p != end || p == digits || port < 1 || port > 65535) {
      *err = "broker URL has a bad port (1-65535)";
      return -1;
    }
    u->port = (uint16_t)port;
  } else {
    u->port = u->tls ? 8883 : 1883;
  }
  return 0;
}

/*
** mqtt.parse_url(url) -> { scheme, tls, host, port, numeric }, or fail and
** what is wrong. numeric is false for a host name that must be resolved.
*/
static int l_parse_url(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *err = NULL;
  MqttUrl u;
  if (mqtt_url_parse(s, len, &u, &err) != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_createtable(L, 0, 5);
  lua_pushstring(L, u.tls ? "mqtts" : "mqtt");
  lua_setfield(L, -2, "scheme");
  lua_pushboolean(L, u.tls);
  lua_setfield(L, -2, "tls");
  lua_pushstring(L, u.host);
  lua_setfield(L, -2, "host");
  lua_pushinteger(L, u.port);
  lua_setfield(L, -2, "port");
  lua_pushboolean(L, u.numeric != 0);
  lua_setfield(L, -2, "numeric");
  return 1;
}

void mqtt_open_url(lua_State *L, int mod) {
  lua_pushcfunction(L, l_parse_url);
  lua_setfield(L, mod, "parse_url");
}
