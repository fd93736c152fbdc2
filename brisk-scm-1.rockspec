-- brisk-scm-1.rockspec — install Brisk's C modules and Prosody glue with
-- `luarocks --lua-version 5.4 make` from a checkout (works offline: Brisk's
-- only dependencies are Debian's libexpat, libsodium, SQLite, libmosquitto
-- and OpenSSL headers).
package = "brisk"
version = "scm-1"
source = {
   url = "git+file:///usr/src/brisk",
}
description = {
   summary = "Native C modules for the Prosody XMPP server",
   detailed = [[
      Brisk gives Prosody a libexpat stanza parser and C serializer
      (mod_brisk_xml), C drop-ins for util.jid and util.indexedbheap
      (mod_brisk_util), compact binary storage of rosters and other
      keyval/map stores in SQLite (mod_storage_brisk, C core brisk.store) and
      presence-triggered IoT event hooks with signed webhooks and fleet
      state in MQTT (mod_brisk_iot).
   ]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
external_dependencies = {
   EXPAT = { header = "expat.h" },
   SODIUM = { header = "sodium.h" },
   SQLITE = { header = "sqlite3.h" },
   MOSQUITTO = { header = "mosquitto.h" },
   OPENSSL = { header = "openssl/ssl.h" },
}
build = {
   -- The Makefile builds every modules/<name>/ into brisk.<name> and installs
   -- all of lualib/, so new modules need no change here.
   type = "make",
   build_variables = {
      LUA_CFLAGS = "-I$(LUA_INCDIR)",
   },
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
   },
}
