-- mod_brisk_iot — presence-triggered event hooks for device fleets.
--
-- Devices are accounts of this host (all of them, or those matching
-- iot_devices globs). Their presence feeds brisk.presence, a C engine that
-- keeps each device's state compactly and turns presence into transitions:
-- online, offline, state, flapping, silent, with debounce ("after") and
-- silence timers in one heap driven by one module timer. Every transition
-- is fired as a Prosody event (iot/online, ...), handed to hook scripts
-- (iot_hook_scripts) and to the rules of iot_rules, whose actions are
-- signed webhooks, messages, PubSub publishes, MQTT publishes and log
-- lines. With iot_mqtt set, every event and every device's state also go
-- to an MQTT broker.
--
-- This file is the coupling with Prosody: options, hooks, sessions, the
-- timer, metrics, and the side effects the libraries are given.
--   brisk.iot.config    options; the engine and the rules' targets
--   brisk.iot.dispatch  what happens to each event (with brisk.iot.sinks)
--   brisk.iot.webhook   signed webhook delivery
--   brisk.iot.mqtt      fleet state and events in MQTT (brisk.mqtt, the C client)
--   brisk.iot.watch     the MQTT client's socket in Prosody's event loop
--   brisk.iot.scripts   the hook script sandbox
--   brisk.iot.listing   the device list for the shell and HTTP
-- The shell commands live in mod_brisk_iot_shell, a global module.

local try = require "brisk.prosody".lib;

local st = try "util.stanza";
local jid_util = try "util.jid";
local json = try "util.json";
local time_now = try "util.time".now;
-- Through brisk.loader, which also finds the C core in a luarocks tree.
local presence = require "brisk.loader".require("brisk.presence", module.path);
local config = require "brisk.iot.config";
local dispatch_lib = require "brisk.iot.dispatch";
local listing = require "brisk.iot.listing";
local scripts_lib = require "brisk.iot.scripts";
local webhook_lib = require "brisk.iot.webhook";
local sinks = require "brisk.iot.sinks";
local mqtt_lib;  -- brisk.iot.mqtt, with iot_mqtt

local host = module.host;
local bare_sessions = prosody.bare_sessions;

local KINDS = { "online", "offline", "state", "flapping", "silent" };

-- Configuration --------------------------------------------------------

local function get_option(name, kind, default)
	if kind == "raw" then return module:get_option(name, default); end
	return module["get_option_" .. kind](module, name, default);
end
local options = config.read(get_option);

-- The MQTT client's C core is loaded only when it is used, so that a
-- server without libmosquitto runs everything else.
if options.mqtt ~= nil then
	require "brisk.loader".require("brisk.mqtt", module.path);
end

-- Rules are compiled before anything else is set up: a bad rule stops the
-- module from loading, with the rule and the problem in the message.
local compiled = config.compile(options, { host = host, now = time_now() });
local engine, rules, selectors = compiled.engine, compiled.rules, compiled.selectors;

-- Metrics ----------------------------------------------------------------

local measure_online = module:measure("devices_online", "amount");
local measure_offline = module:measure("devices_offline", "amount");
local measure_devices = module:measure("devices", "amount");
local measure_memory = module:measure("engine_bytes", "amount");
local measure_queued = module:measure("webhook_queued", "amount");
local measure_event = {};
for _, k in ipairs(KINDS) do measure_event[k] = module:measure("events_" .. k, "rate"); end
local measure_sent = module:measure("webhook_sent", "rate");
local measure_failed = module:measure("webhook_failed", "rate");
local measure_dropped = module:measure("webhook_dropped", "rate");
local measure_retried = module:measure("webhook_retried", "rate");
local measure_latency = module:measure("webhook_latency", "distribution", { unit = "seconds" });
local measure_hook_errors = module:measure("hook_errors", "rate");

-- Side effects -------------------------------------------------------------

local function log(level, ...) module:log(level, ...); end

local http = try "net.http";
local webhooks = webhook_lib.new{
	request = function (url, ex, cb) return http.request(url, ex, cb); end;
	timer = function (delay, fn) module:add_timer(delay, function () fn(); end); end;
	now = time_now;
	clock = os.time;
	queue_max = options.webhook_queue_size;
	concurrency = options.webhook_concurrency;
	retries = options.webhook_retries;
	backoff = options.webhook_backoff;
	max_backoff = options.webhook_max_backoff;
	timeout = options.webhook_timeout;
	on = {
		sent = function (latency) measure_sent(); measure_latency(latency); end;
		failed = function () measure_failed(); end;
		dropped = function () measure_dropped(); end;
		retried = function () measure_retried(); end;
	};
	log = log;
};

local function send_message(to, text)
	local to_jid = jid_util.prep(tostring(to));
	if not to_jid then error("send_message: invalid JID '" .. tostring(to) .. "'", 2); end
	module:send(st.message({ from = host, to = to_jid, type = "chat" }):text_tag("body", tostring(text)));
end

-- The PubSub service of a local pubsub component, or nil.
local function pubsub_service(service_host)
	local svc = prosody.hosts[service_host];
	local pubsub = svc and svc.modules and svc.modules.pubsub;
	return pubsub and pubsub.service;
end

-- Devices' aggregate presence -----------------------------------------------

local seq = 0;

-- Everything in a presence besides show, status, priority and delay: its
-- extension elements (caps, sensor readings...), as one string.
local function payload_of(stanza)
	local parts;
	for _, tag in ipairs(stanza.tags) do
		local name, xmlns = tag.name, tag.attr.xmlns;
		if not ((name == "show" or name == "status" or name == "priority") and (xmlns == nil or xmlns == "jabber:client"))
		and not (name == "delay" and xmlns == "urn:xmpp:delay") then
			parts = parts or {};
			parts[#parts + 1] = tostring(tag);
		end
	end
	return parts and table.concat(parts) or nil;
end

-- The leading resource of a user: available, highest priority (read as
-- mod_presence reads it), then the most recent presence.
-- override/override_stanza stand for a presence that is being processed
-- (not yet stored in the session), or false for one that is going away.
local function leading(bare, override, override_stanza)
	local user = bare_sessions[bare];
	local best, best_stanza, best_prio, best_seq;
	for _, s in pairs(user and user.sessions or {}) do
		local p = s.presence;
		if s == override then p = override_stanza; end
		if p and not s.destroyed then
			local prio = presence.priority(p:get_child_text("priority"));
			local sq = s == override and math.huge or (s.brisk_iot_seq or 0);
			if not best or prio > best_prio or (prio == best_prio and sq > best_seq) then
				best, best_stanza, best_prio, best_seq = s, p, prio, sq;
			end
		end
	end
	return best, best_stanza, best_prio;
end

-- Events -------------------------------------------------------------------

local mqtt_publisher;  -- set below when iot_mqtt is

local dispatcher = dispatch_lib.new{
	rules = rules;
	fx = {
		fire = function (kind, ev) module:fire_event("iot/" .. kind, ev); end;
		count = function (kind) measure_event[kind](); end;
		hook_error = function () measure_hook_errors(); end;
		log = log;
		presence_of = function (jid) return leading(jid); end;
		send_message = send_message;
		webhook = function (url, key, device, body) webhooks:send(url, key, device, body); end;
		pubsub = pubsub_service;
		mqtt = function (topic, body) if mqtt_publisher then mqtt_publisher:rule(topic, body); end end;
	};
};

-- Hook scripts ---------------------------------------------------------------

local lfs = require "lfs";

local function list_dir(dir)
	local names = {};
	local ok = pcall(function ()
		for name in lfs.dir(dir) do names[#names + 1] = name; end
	end);
	return ok and names or nil;
end

local function load_scripts(paths, script_config)
	local set, errors = scripts_lib.load(scripts_lib.expand(paths, list_dir), {
		log = log;
		send_message = send_message;
		device = function (jid) return engine:get(jid); end;
		config = script_config;
		now = time_now;
		json = { encode = json.encode, decode = json.decode };
		read_file = config.read_file;
	});
	for _, e in ipairs(errors) do
		module:log("error", "Hook script not loaded: %s", e);
	end
	dispatcher:set_scripts(set);
	module:log("debug", "Loaded %d hook script(s): %s", #set.scripts, table.concat(set.scripts, ", "));
end
load_scripts(options.hook_scripts, options.script_config);

module:hook_global("config-reloaded", function ()
	load_scripts(get_option("iot_hook_scripts", "array", {}), get_option("iot_script_config", "raw", {}));
end);

-- Presence in, events out ------------------------------------------------------

local function feed(bare, cause_session, override, override_stanza)
	local now = time_now();
	local lead, pres, prio = leading(bare, override, override_stanza);
	local n;
	if lead then
		n = engine:update(bare, now, true, pres:get_child_text("show"), pres:get_child_text("status"),
			prio, payload_of(pres));
	else
		n = engine:update(bare, now, false);
	end
	if n and n > 0 then dispatcher:drain(engine, lead or cause_session, pres); end
end

-- Outgoing presence from a local client, before mod_presence stores it.
module:hook("pre-presence/bare", function (event)
	local origin, stanza = event.origin, event.stanza;
	if stanza.attr.to or origin.type ~= "c2s" or not origin.username then return; end
	local t = stanza.attr.type;
	if t ~= nil and t ~= "unavailable" then return; end
	seq = seq + 1;
	origin.brisk_iot_seq = seq;
	local bare = origin.username .. "@" .. origin.host;
	feed(bare, origin, origin, t == nil and stanza or false);
end, 10);

-- A session went away, with or without an unavailable presence (closed,
-- killed TCP connection, replaced by a resource conflict).
module:hook("resource-unbind", function (event)
	local session = event.session;
	if not session.username then return; end
	feed(session.username .. "@" .. session.host, session, session, false);
end, -10);

-- Any stanza from a device is activity (resets silence).
module:hook("pre-stanza", function (event)
	local origin = event.origin;
	if origin.type == "c2s" and origin.username then
		engine:touch(origin.username .. "@" .. origin.host, time_now());
	end
end, 1000);

-- The one timer -----------------------------------------------------------------

local function update_gauges()
	local s = engine:stats();
	measure_devices(s.devices);
	measure_online(s.online);
	measure_offline(s.offline);
	measure_memory(s.memory);
	measure_queued((webhooks:queued()));
end

local tick_interval = options.tick_interval;
local gauge_due = 0;
module:add_timer(tick_interval, function ()
	local now = time_now();
	if engine:tick(now) > 0 then dispatcher:drain_timers(engine); end
	if now >= gauge_due then
		gauge_due = now + 10;
		update_gauges();
	end
	return tick_interval;
end);

-- Devices already online when the module loads (module reload, late load)
-- are entered silently: announcing them all as "online" again would set
-- off every online rule for the whole fleet. Their events are dropped
-- unseen, so no condition counts as reported either.
for bare, user in pairs(bare_sessions) do
	if jid_util.host(bare) == host and user.sessions then
		local lead, pres, prio = leading(bare);
		if lead then
			engine:update(bare, time_now(), true, pres:get_child_text("show"), pres:get_child_text("status"),
				prio, payload_of(pres));
		end
	end
end
engine:clear();

-- MQTT: fleet state and events -------------------------------------------------------

local SHOW = { away = true, chat = true, dnd = true, xa = true };

local function show_of(stanza)
	local sh = stanza and stanza:get_child_text("show");
	return SHOW[sh] and sh or (sh == nil and "available" or sh);
end

-- A device's state topic fields from its leading presence now (when no
-- presence is being processed: a reconnect that must state the fleet again).
local function state_now(jid)
	local d = engine:get(jid);
	if not d or d.state == "unknown" then return nil; end
	local _, pres, prio = leading(jid);
	return mqtt_lib.state_fields(d, show_of(pres), pres and pres:get_child_text("status"), prio);
end

-- Every device the engine knows, with its state fields (an iterator).
local function all_states()
	local i, n = 0, engine:stats().devices;
	return function ()
		while i < n do
			i = i + 1;
			local d = engine:device(i);
			local fields = d and state_now(d.jid);
			if fields then return d.jid, fields; end
		end
	end;
end

if compiled.mqtt then
	mqtt_lib = require "brisk.iot.mqtt";
	local server = try "net.server";
	local resolvers = try "net.resolvers.basic";
	local usermanager = try "core.usermanager";
	local selector_globs = {};
	for i, g in ipairs(selectors) do selector_globs[i] = presence.glob(g); end
	local function selected(jid)
		for _, g in ipairs(selector_globs) do
			if g:match(jid) then return true; end
		end
		return false;
	end
	local measure_mqtt_connected = module:measure("mqtt_connected", "amount");
	local measure_mqtt_queued = module:measure("mqtt_queued", "amount");
	local measure_mqtt_sent = module:measure("mqtt_sent", "counter");
	local measure_mqtt_dropped = module:measure("mqtt_dropped", "counter");
	mqtt_publisher = mqtt_lib.new(compiled.mqtt, {
		watch = require "brisk.iot.watch".new(server);
		timer = function (delay, fn) module:add_timer(delay, function () return fn(); end); end;
		now = time_now;
		-- Prosody's asynchronous resolver (net.adns): never blocks.
		resolve = function (name, cb)
			local r = resolvers.new(name, compiled.mqtt.port, "tcp", {});
			local list = {};
			local function collect(_, ip)
				if not ip then cb(list, r.last_error); return; end
				list[#list + 1] = ip;
				r:next(collect);
			end
			r:next(collect);
		end;
		log = log;
		known = function (jid)
			local d = engine:get(jid);
			return d ~= nil and d.state ~= "unknown";
		end;
		is_device = function (jid)
			local user, h = jid_util.split(jid);
			return h == host and user ~= nil and selected(jid) and usermanager.user_exists(user, host);
		end;
		states = all_states;
		metrics = { connected = measure_mqtt_connected, queued = measure_mqtt_queued,
			sent = measure_mqtt_sent, dropped = measure_mqtt_dropped };
	});

	-- Every event: the device's state, then the event itself. The event
	-- table carries the presence being processed (mod_presence has not
	-- stored it in the session yet), so the state is taken from it. A
	-- debounced event (after > 0) or silence changes no state.
	local STATEFUL = { online = true, offline = true, state = true, flapping = true };
	for _, kind in ipairs(KINDS) do
		module:hook("iot/" .. kind, function (ev)
			if STATEFUL[kind] and ev.after == 0 then
				local d = engine:get(ev.jid);
				if d then mqtt_publisher:device_state(ev.jid, mqtt_lib.state_fields(d, ev.show, ev.status, ev.priority)); end
			end
			mqtt_publisher:device_event(ev, sinks.webhook_body(ev, { name = ev.rule }));
		end, -100);
	end

	-- An account deleted: no longer a device, its retained state goes.
	module:hook_global("user-deleted", function (event)
		if event.host ~= host then return; end
		local jid = event.username .. "@" .. host;
		if selected(jid) then mqtt_publisher:device_state(jid, nil); end
	end);

	-- A clean shutdown: after mod_c2s has closed the sessions (and waited
	-- for them, priority -100), so that devices going offline are
	-- published, then "offline" on $server.
	module:hook_global("server-stopping", function ()
		mqtt_publisher:close();
	end, -1000);

	-- Devices online when the module loads (entered silently above) are
	-- stated at once; what a restart left stale in the broker is checked
	-- after the first connection (brisk.iot.mqtt).
	for jid, fields in all_states() do mqtt_publisher:device_state(jid, fields); end
	mqtt_publisher:start();
end

-- Listing: prosodyctl shell and HTTP ----------------------------------------------

-- prosodyctl shell: iot:devices(), iot:stats() (mod_brisk_iot_shell, global)
-- list what each host registers here.
module:depends("brisk_iot_shell");
local registry = module:shared("/*/brisk_iot/hosts");
registry[host] = {
	list = function (pattern, limit) return listing.devices(engine, pattern, limit); end;
	stats = function () return listing.stats(engine, webhooks, dispatcher.scripts, mqtt_publisher); end;
};
function module.unload()
	registry[host] = nil;
	if mqtt_publisher then mqtt_publisher:close(); end
end

-- HTTP JSON listing (off unless iot_http_listing = true; with
-- iot_http_token set, requests must carry "Authorization: Bearer <token>").
if options.http_listing then
	module:depends("http");
	module:provides("http", {
		default_path = "/iot";
		route = {
			["GET /devices"] = listing.http_handler{ engine = engine, host = host, token = options.http_token };
		};
	});
end

module:log("info", "Tracking devices %s with %d rule(s), %d hook script(s)",
	table.concat(selectors, ", "), #rules, #dispatcher.scripts.scripts);
