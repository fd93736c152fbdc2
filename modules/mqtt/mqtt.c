/*
** mqtt.c — opener of brisk.mqtt, the C core of mod_brisk_iot's MQTT
** publishing: an MQTT client on libmosquitto driven by Prosody's event
** loop (client.c, queue.c, tls.c), broker URLs (url.c) and topic levels
** (topic.c).
**
** mosquitto_lib_init() is process-wide: in libmosquitto 2.0 it seeds C's
** rand() (which Lua 5.4's math.random does not use) and counts how often it
** was called; it keeps no state a client needs. It is called here, once per
** Lua state that opens the module, and mosquitto_lib_cleanup() never is:
** when its count drops to zero it unloads OpenSSL's configuration modules
** (CONF_modules_unload), which belong to the whole process — Prosody's own
** TLS (LuaSec) included. Nothing is lost by not cleaning up: the count is a
** number and the process's exit reclaims the rest.
*/
#include <mosquitto.h>
#include "mqtt.h"

#if LIBMOSQUITTO_MAJOR != 2
#error "brisk.mqtt is written against libmosquitto 2.x"
#endif

BRISK_EXPORT int luaopen_brisk_mqtt(lua_State *L) {
  int mod, major = 0, minor = 0, rev = 0;
  mosquitto_lib_version(&major, &minor, &rev);
  if (major != 2)
    return luaL_error(L, "brisk.mqtt needs libmosquitto 2.x, found %d.%d.%d", major, minor, rev);
  mosquitto_lib_init();
  lua_newtable(L);
  mod = lua_gettop(L);
  mqtt_open_url(L, mod);
  mqtt_open_topic(L, mod);
  mqtt_open_client(L, mod);
  lua_pushfstring(L, "%d.%d.%d", major, minor, rev);
  lua_setfield(L, mod, "libmosquitto_version");
  brisk_set_version(L);
  return 1;
}
