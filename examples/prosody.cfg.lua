-- examples/prosody.cfg.lua — Prosody on loopback with every Brisk module.
--
-- `make run` starts Debian's Prosody with this file. Everything lives under
-- one local folder (run/ in the checkout unless BRISK_RUN_DIR says otherwise):
-- Prosody's data, Brisk's SQLite database, the pid file. Nothing needs TLS on
-- loopback, so plain SASL is allowed here — never do that on a public port.
--
-- To use it for your own server, replace the ENV_* lookups with fixed paths
-- and keep the Brisk lines (marked "Brisk:").

-- Prosody 13 wants Lua's own functions reached through `Lua` (and warns
-- otherwise); 0.12 has no `Lua` but lets them be used directly.
local tonumber = Lua and Lua.tonumber or tonumber

local root = ENV_BRISK_ROOT or "."
local run_dir = ENV_BRISK_RUN_DIR or (root .. "/run")

-- Prosody refuses to run as root unless told; make run tells it only when it
-- really is root (containers, CI), and then nothing switches users.
run_as_root = ENV_BRISK_RUN_AS_ROOT == "1"

data_path = run_dir .. "/data"
pidfile = run_dir .. "/prosody.pid"
certificates = run_dir .. "/certs"
daemonize = false
log = { { levels = { min = ENV_BRISK_LOG_LEVEL or "info" }, to = "console" } }

-- Brisk: where Prosody finds mod_brisk_*.lua (a checkout's lualib/; after
-- `luarocks make` use the tree's share/lua/5.4 instead, see the README).
plugin_paths = { root .. "/lualib" }

interfaces = { "127.0.0.1" }
c2s_ports = { tonumber(ENV_BRISK_C2S_PORT or "5222") }
c2s_direct_tls_ports = {}
legacy_ssl_ports = {}
s2s_ports = {}
http_ports = { tonumber(ENV_BRISK_HTTP_PORT or "5280") }
http_interfaces = { "127.0.0.1" }
https_ports = {}
admin_socket = run_dir .. "/prosody.sock"

c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"

-- Brisk: the garbage collector setting Brisk recommends for many connected
-- clients (docs/scaling.md). Against Prosody's default (incremental, 105/500)
-- it cut the server's CPU per stanza 2.1-2.5x at 2000-3000 clients, stock and
-- Brisk alike, for 0-7% more memory per client after login. A fleet also
-- wants blocklist_cache_size and pep_service_cache_size at least the number
-- of users online at once (the same page says why).
gc = { mode = "incremental", threshold = 120, speed = 400 }

modules_enabled = {
	"roster"; "saslauth"; "disco"; "carbons"; "pep"; "private"; "vcard";
	"version"; "uptime"; "time"; "ping"; "register"; "admin_shell";
	"brisk_xml"; -- Brisk: C stanza parser and serializer (global module)
	"brisk_util"; -- Brisk: util.jid and server_epoll's timer heap in C (global module)
}
modules_disabled = { "s2s"; "tls" }

-- Brisk: rosters in Brisk's SQLite database (<data_path>/brisk.sqlite by
-- default; see docs/storage.md). Everything else stays in Prosody's files.
storage = { roster = "brisk" }

VirtualHost "localhost"
	-- Brisk: device events. Here every account of the host is a device, so
	-- log alice and bob in and out to watch them; docs/iot.md has the rest.
	modules_enabled = { "brisk_iot" }
	iot_rules = {
		{ name = "offline", on = "offline", after = tonumber(ENV_BRISK_IOT_OFFLINE_AFTER or "30"), log = "info" };
		{ name = "flapping", on = "flapping", transitions = 5, within = 60, log = "warn" };
	}
	-- The example hook scripts: alice is paged when a device stays offline.
	iot_hook_scripts = { root .. "/examples/iot/*.lua" }
	-- Brisk: every device's state and events in MQTT. `make run BRISK_MQTT=1`
	-- starts a private mosquitto and sets ENV_BRISK_MQTT_BROKER; then
	--   mosquitto_sub -p 1883 -t 'brisk/#' -v
	-- shows brisk/localhost/<user>/state (retained), .../events and
	-- brisk/localhost/$server. docs/iot.md, "MQTT", has the rest.
	if ENV_BRISK_MQTT_BROKER then
		iot_mqtt = { broker = ENV_BRISK_MQTT_BROKER; client_id = "brisk-make-run" }
	end
	iot_script_config = { ops = "alice@localhost", offline_after = tonumber(ENV_BRISK_IOT_OFFLINE_AFTER or "30") }
