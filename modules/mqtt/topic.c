/*
** topic.c — MQTT topic names for mod_brisk_iot.
**
** A device's topics carry its JID's local part (and the host) as one topic
** level. XMPP allows '+' and '#' in a local part, which are wildcards in
** MQTT and may not appear in a topic name, and '%' must stay unambiguous,
** so such bytes are percent-encoded. The encoding is canonical both ways:
** unescape accepts exactly what escape produces, so that a topic read back
** from the broker (retained state of devices, after a restart) names one
** device or none.
*/
#include <string.h>
#include <mosquitto.h>
#include "mqtt.h"

static const char hex[] = "0123456789ABCDEF";

static int needs_escape(unsigned char ch) {
  return ch == '%' || ch == '+' || ch == '#' || ch == '/' || ch == '\0';
}

size_t mqtt_topic_escape(const char *s, size_t len, char *out) {
  size_t i, n = 0;
  for (i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (needs_escape(ch)) {
      out[n++] = '%';
      out[n++] = hex[ch >> 4];
      out[n++] = hex[ch & 15];
    } else {
      out[n++] = (char)ch;
    }
  }
  return n;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;  /* lower case is not what escape writes */
}

long mqtt_topic_unescape(const char *s, size_t len, char *out) {
  size_t i = 0, n = 0;
  while (i < len) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '%') {
      int hi, lo;
      if (len - i < 3) return -1;
      hi = hexval((unsigned char)s[i + 1]);
      lo = hexval((unsigned char)s[i + 2]);
      if (hi < 0 || lo < 0 || !needs_escape((unsigned char)(hi << 4 | lo))) return -1;
      out[n++] = (char)(hi << 4 | lo);
      i += 3;
    } else {
      if (needs_escape(ch)) return -1;
      out[n++] = (char)ch;
      i++;
    }
  }
  return (long)n;
}

/* mqtt.escape(s) -> s as one topic level */
static int l_escape(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out;
  luaL_argcheck(L, len <= 65535, 1, "longer than an MQTT topic can be");
  out = luaL_buffinitsize(L, &b, 3 * len);
  luaL_pushresultsize(&b, mqtt_topic_escape(s, len, out));
  return 1;
}

/* mqtt.unescape(level) -> the string escape() made it from, or fail */
static int l_unescape(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len);
  long n = mqtt_topic_unescape(s, len, out);
  if (n < 0) {
    luaL_pushfail(L);
    return 1;
  }
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/*
** mqtt.check_topic(topic) -> true, or fail and what is wrong: whether
** libmosquitto will publish to it (valid UTF-8, no wildcards, no NUL,
** not empty, at most 65535 bytes).
*/
static int l_check_topic(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *why = NULL;
  if (len == 0) why = "topic is empty";
  else if (len > 65535) why = "topic is longer than 65535 bytes";
  else if (memchr(s, '\0', len) != NULL) why = "topic has a NUL byte";
  else if (mosquitto_validate_utf8(s, (int)len) != MOSQ_ERR_SUCCESS)
    why = "topic is not valid UTF-8";
  else if (mosquitto_pub_topic_check2(s, len) != MOSQ_ERR_SUCCESS)
    why = "topic has a wildcard ('+' or '#')";
  if (why) {
    luaL_pushfail(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg topic_funcs[] = {
  {"escape", l_escape},
  {"unescape", l_unescape},
  {"check_topic", l_check_topic},
  {NULL, NULL}
};

void mqtt_open_topic(lua_State *L, int mod) {
  lua_pushvalue(L, mod);
  luaL_setfuncs(L, topic_funcs, 0);
  lua_pop(L, 1);
}
