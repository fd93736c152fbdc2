-- brisk.iot.mqtt — mod_brisk_iot's fleet state in MQTT.
--
-- With iot_mqtt set, every device event of the host is published to an
-- MQTT broker (docs/iot.md, "MQTT"):
--   <prefix>/<host>/<node>/state   retained, QoS 1: the device's state now
--                                  (empty: the device is no longer tracked)
--   <prefix>/<host>/<node>/events  QoS 1: each event, the webhook's JSON,
--                                  MQTT 5 user properties event-id, event-type
--   <prefix>/<host>/$server        retained: "online", and "offline" as the
--                                  connection's will
-- and rules with an `mqtt` target publish to <prefix>/<topic>.
--
-- check(raw, opts) turns the iot_mqtt option into settings, or raises an
-- error that stops the module from loading. new(settings, fx) makes the
-- publisher: a brisk.mqtt client and the state machine around it —
-- resolving the broker's name, connecting to each of its addresses in turn,
-- backing off, falling back to MQTT 3.1.1 when the broker refuses 5, and
-- stepping the client from the event loop. After its first connection it
-- reads the retained state of this host's devices back once, and corrects
-- what a restart left stale (a device that was online when the server
-- stopped and has not come back; a device that is no longer tracked).
--
-- Side effects are injected (fx), so that it runs in specs without a
-- server:
--   watch(fd, on_readable, on_writable) -> handle (brisk.iot.watch)
--   timer(delay, fn)       fn() may return a delay to run again
--   now()                  seconds
--   resolve(name, cb)      cb(addresses) or cb(nil, err): IP addresses of name
--   log(level, fmt, ...)
--   known(jid)             the server has seen the device since it started
--   is_device(jid)         jid is (still) a tracked device
--   states()               iterator: jid, state fields of every known device
--   metrics                optional: connected(v), queued(v), sent(n), dropped(n)

local prosody_lib = require "brisk.prosody".lib;
local json = prosody_lib "util.json";

local M = {};

local function mqtt_lib()
	return require "brisk.mqtt";
end

-- RFC 3339 with milliseconds, as in webhooks (brisk.iot.sinks.iso).
local function iso(t)
	local secs = math.floor(t);
	return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. (".%03dZ"):format(math.floor((t - secs) * 1000));
end

-- Configuration -------------------------------------------------------------------

-- field = { type, default, minimum, maximum, integer }
local FIELDS = {
	broker = { "string" };
	client_id = { "string" };
	username = { "string" };
	password_file = { "string" };
	topic_prefix = { "string", "brisk" };
	tls = { "table" };
	keepalive = { "number", 60, 5, 65535, true };
	session_expiry = { "number", 86400, 0, 4294967295, true };
	queue_size = { "number", 10000, 1, 100000000, true };
	window = { "number", 100, 1, 65535, true };
	reconnect_delay = { "number", 1, 0.01, 3600 };
	reconnect_delay_max = { "number", 60, 0.01, 86400 };
	connect_timeout = { "number", 10, 0.1, 3600 };
	clean_stale = { "boolean", true };
};
local TLS_FIELDS = { ca_file = true, cert_file = true, key_file = true };

local function check_topic_part(what, s, fail)
	local mqtt = mqtt_lib();
	local ok, err = mqtt.check_topic(s);
	if not ok then fail(("'%s' %s"):format(what, err:gsub("^topic ", ""))); end
	if s:sub(1, 1) == "/" or s:sub(-1) == "/" then fail(("'%s' must not begin or end with '/'"):format(what)); end
	if s:sub(1, 1) == "$" then fail(("'%s' must not begin with '$' (reserved by brokers)"):format(what)); end
end
M.check_topic_part = check_topic_part;

--[[
check(raw, opts) -> settings, or raises "iot_mqtt: <what is wrong>".
  raw: the iot_mqtt option
  opts.host: the VirtualHost (topics, default client id)
  opts.read_file(path) -> data or nil, err (password_file)
]]
function M.check(raw, opts)
	local function fail(msg) error("iot_mqtt: " .. msg, 0); end
	if type(raw) ~= "table" then fail("must be a table such as { broker = \"mqtt://127.0.0.1:1883\" }"); end
	for k in pairs(raw) do
		if not FIELDS[k] then fail(("unknown field '%s'"):format(tostring(k))); end
	end
	local s = { xmpp_host = opts.host };
	for k, f in pairs(FIELDS) do
		local v = raw[k];
		if v == nil then
			v = f[2];
		elseif type(v) ~= f[1] then
			fail(("'%s' must be a %s"):format(k, f[1]));
		elseif f[1] == "number" and (v ~= v or v < f[3] or v > f[4] or (f[5] and math.type(v) ~= "integer" and v % 1 ~= 0)) then
			fail(("'%s' must be %s from %s to %s"):format(k, f[5] and "an integer" or "a number", f[3], f[4]));
		end
		if f[5] and v ~= nil then v = math.tointeger(v); end
		s[k] = v;
	end
	if s.reconnect_delay_max < s.reconnect_delay then fail("'reconnect_delay_max' is less than 'reconnect_delay'"); end
	if not s.broker then fail("'broker' is missing (mqtt://host:port or mqtts://host:port)"); end
	local url, err = mqtt_lib().parse_url(s.broker);
	if not url then fail(err); end
	s.host, s.port, s.numeric = url.host, url.port, url.numeric;
	if url.tls then
		local tls = s.tls or {};
		for k, v in pairs(tls) do
			if not TLS_FIELDS[k] then fail(("unknown field 'tls.%s' (ca_file, cert_file, key_file)"):format(tostring(k))); end
			if type(v) ~= "string" then fail(("'tls.%s' must be a path"):format(k)); end
		end
		if (tls.cert_file == nil) ~= (tls.key_file == nil) then fail("'tls' needs both cert_file and key_file, or neither"); end
		s.tls = { name = url.host, numeric = url.numeric, ca_file = tls.ca_file, cert_file = tls.cert_file, key_file = tls.key_file };
	elseif s.tls then
		fail("'tls' needs an mqtts:// broker");
	end
	if s.password_file then
		if not s.username then fail("'password_file' needs a 'username'"); end
		local data, rerr = opts.read_file(s.password_file);
		if not data then fail(("cannot read password_file '%s': %s"):format(s.password_file, tostring(rerr))); end
		s.password = data:gsub("[\r\n]+$", "");
		if s.password == "" then fail(("password_file '%s' is empty"):format(s.password_file)); end
	end
	s.client_id = s.client_id or ("brisk-" .. opts.host);
	if s.client_id == "" then fail("'client_id' is empty"); end
	check_topic_part("topic_prefix", s.topic_prefix, fail);
	return s;
end

-- The JSON fields of a device's state topic: d is the engine's view
-- (engine:get), show/status/priority those of its leading resource.
function M.state_fields(d, show, status, priority)
	local online = d.state == "online";
	return {
		jid = d.jid;
		state = online and "online" or "offline";
		since = iso(d.since);
		changed = iso(d.changed);
		show = online and (show or "available") or "unavailable";
		status = online and status or nil;
		priority = online and priority or nil;
		flapping = d.flapping == true;
	};
end

-- The publisher ------------------------------------------------------------------------

local publisher = {};
local publisher_mt = { __index = publisher };

-- 16 random hex digits (libsodium's CSPRNG, through brisk.presence).
local function random_token()
	local bytes = require "brisk.presence".random_bytes(8);
	return (bytes:gsub(".", function (c) return ("%02x"):format(c:byte()); end));
end

-- Codes of a CONNACK that refuses because of who we are.
local AUTH_CODES = { [4] = true, [5] = true, [134] = true, [135] = true, [138] = true, [140] = true };

function M.new(s, fx)
	local mqtt = mqtt_lib();
	local base = s.topic_prefix .. "/" .. mqtt.escape(s.xmpp_host) .. "/";
	local client, err = mqtt.client{
		id = s.client_id;
		keepalive = s.keepalive;
		session_expiry = s.session_expiry;
		username = s.username;
		password = s.password;
		window = s.window;
		queue_size = s.queue_size;
		tls = s.tls;
		will = { topic = base .. "$server", payload = "offline", retain = true };
	};
	if not client then error("iot_mqtt: " .. tostring(err), 0); end
	local self = setmetatable({
		s = s;
		fx = fx;
		mqtt = mqtt;
		client = client;
		base = base;
		server_topic = base .. "$server";
		state = "idle";      -- idle, resolving, connecting, connected, closed
		gen = 0;             -- bumped whenever pending timers and callbacks go stale
		failures = 0;
		boot = random_token();
		seq = 0;
		started = fx.now();
		reported = { sent = 0, dropped = 0 };
		log_once = {};
	}, publisher_mt);
	return self;
end

-- Topics of a device (a bare JID of this host).
function publisher:device_topic(jid, leaf)
	local node = jid:match("^(.*)@") or "";
	return self.base .. self.mqtt.escape(node) .. "/" .. leaf;
end

-- Publishing (queued in C; never fails but for out of memory) -----------------------------

function publisher:publish_raw(topic, payload, retain, id, kind)
	if self.state == "closed" then return; end
	local ok, err = self.client:publish(topic, payload, retain, id, kind);
	if not ok then self.fx.log("warn", "MQTT: cannot queue a message for %s: %s", topic, err); end
	self:settle();
end

-- The device's state topic: fields from state_fields() (nil: clear it).
function publisher:device_state(jid, fields)
	self:publish_raw(self:device_topic(jid, "state"), fields and json.encode(fields) or "", true);
end

-- An event on the device's events topic; body: the webhook's JSON.
function publisher:device_event(ev, body)
	self.seq = self.seq + 1;
	self:publish_raw(self:device_topic(ev.jid, "events"), body, false,
		self.boot .. "-" .. self.seq, "iot." .. ev.kind);
end

-- A rule's target: <prefix>/<topic>.
function publisher:rule(topic, body)
	self:publish_raw(self.s.topic_prefix .. "/" .. topic, body, false);
end

-- The connection -------------------------------------------------------------------------

function publisher:start()
	local period = math.min(1, self.s.keepalive / 4);
	self.fx.timer(period, function ()
		if self.state == "closed" then return; end
		if self.state == "connecting" or self.state == "connected" then
			self.client:misc();
			self:settle();
		end
		self:report();
		return period;
	end);
	self:connect_next();
end

function publisher:bump()
	self.gen = self.gen + 1;
	return self.gen;
end

-- Connect to the next address of the broker; resolve its name again when
-- none is left.
function publisher:connect_next()
	if self.state == "closed" then return; end
	local s = self.s;
	local addr = self.targets and table.remove(self.targets, 1);
	if not addr then
		if s.numeric then
			self.targets = { s.host };
			return self:connect_next();
		end
		self.state = "resolving";
		local gen = self:bump();
		self.fx.resolve(s.host, function (list, err)
			if gen ~= self.gen or self.state ~= "resolving" then return; end
			if not list or #list == 0 then
				self.targets = nil;
				return self:retry(("cannot resolve %s: %s"):format(s.host, tostring(err or "no address")));
			end
			self.targets = list;
			self:connect_next();
		end);
		return;
	end
	self.state = "connecting";
	self.addr = addr;
	local gen = self:bump();
	local fd, err = self.client:connect(addr, s.port);
	if not fd then
		self:settle();
		return self:retry(("cannot connect to %s port %d: %s"):format(addr, s.port, tostring(err)));
	end
	self:watch(fd);
	self.fx.timer(s.connect_timeout, function ()
		if gen ~= self.gen or self.state ~= "connecting" then return; end
		self.fx.log("warn", "MQTT: no answer from %s port %d within %gs", addr, s.port, s.connect_timeout);
		self.timed_out = true;
		self.client:abort();
		self:settle();
	end);
	self:settle();
end

-- A connection attempt failed: the next address at once, or after a delay
-- that doubles up to reconnect_delay_max (with some jitter, so that many
-- servers do not come back to a broker all at once).
function publisher:retry(why, level)
	if self.state == "closed" then return; end
	self.state = "idle";
	if self.targets and #self.targets > 0 then
		self.fx.log("debug", "MQTT: %s; trying the next address", why);
		return self:connect_next();
	end
	self.targets = nil;
	local s = self.s;
	local delay = math.min(s.reconnect_delay * 2 ^ self.failures, s.reconnect_delay_max);
	delay = delay * (0.85 + 0.3 * math.random());
	self.failures = self.failures + 1;
	self.fx.log(level or "warn", "MQTT: %s; retrying in %.2fs", why, delay);
	local gen = self:bump();
	self.fx.timer(delay, function ()
		if gen == self.gen and self.state == "idle" then self:connect_next(); end
	end);
end

function publisher:watch(fd)
	self:unwatch();
	local token = {};
	self.watch_token = token;
	self.writing = nil;
	self.watcher = self.fx.watch(fd,
		function () if self.watch_token == token then self.client:read(); self:settle(); end end,
		function () if self.watch_token == token then self.client:write(); self:settle(); end end);
	self:update_write();
end

function publisher:unwatch()
	self.watch_token = nil;
	if self.watcher then
		self.watcher:close();
		self.watcher = nil;
	end
end

function publisher:update_write()
	if not self.watcher then return; end
	local w = self.client:want_write();
	if w ~= self.writing then
		self.writing = w;
		self.watcher:want_write(w);
	end
end

local function drain(self)
	local client = self.client;
	while self.state ~= "closed" do
		local kind, a, b, c = client:poll();
		if not kind then break; end
		self["on_" .. kind](self, a, b, c);
	end
	if self.state ~= "closed" then self:update_write(); end
end

-- After every call into the client: what it has to say, then whether to
-- watch for writing. A handler that fails is logged; the client goes on.
function publisher:settle()
	if self.settling then return; end
	self.settling = true;
	local ok, err = pcall(drain, self);
	self.settling = false;
	if not ok then self.fx.log("error", "MQTT: %s", tostring(err)); end
end

function publisher:on_connect(code, session_present, text)
	local s = self.s;
	if code == 0 then
		self.state = "connected";
		self.failures = 0;
		self.fx.log("info", "MQTT: connected to %s port %d as %s (MQTT %s, %s session)", self.addr, s.port,
			s.client_id, self.protocol3 and "3.1.1" or "5", session_present and "resumed" or "new");
		self.client:publish(self.server_topic, "online", true);
		if self.was_connected and not session_present then
			-- The broker lost our session, and may have lost its
			-- retained messages with it (a restart without persistence):
			-- state again every device this server knows.
			local n = 0;
			for jid, fields in self.fx.states() do
				self.client:publish(self:device_topic(jid, "state"), json.encode(fields), true);
				n = n + 1;
			end
			self.fx.log("info", "MQTT: the broker had no session for us; published the state of %d device(s) again", n);
		end
		self.was_connected = true;
		if s.clean_stale and not self.swept then self:start_sweep(); end
		self:report();
	elseif (code == 132 or code == 1) and not self.protocol3 then
		-- The broker does not speak MQTT 5 (libmosquitto reports a 3.1.1
		-- broker's "unacceptable protocol version" as 132).
		self.fx.log("warn", "MQTT: %s refused MQTT 5 (%s); using MQTT 3.1.1 from now on", self.addr, text);
		self.client:set_protocol(4);
		self.protocol3 = true;
		self.retry_now = true;
	elseif AUTH_CODES[code] then
		self.refusal = ("%s refused the connection: %s (code %d): check username and password_file"):format(
			self.addr, text, code);
	else
		self.refusal = ("%s refused the connection: %s (code %d)"):format(self.addr, text, code);
	end
end

function publisher:on_disconnect(code, text)
	self:unwatch();
	self.client:release();
	if self.state == "closed" then return; end
	local was = self.state;
	self.sweep = nil;
	self:report();
	if self.retry_now then
		self.retry_now = false;
		self.state = "idle";
		self.targets = self.targets or {};
		table.insert(self.targets, 1, self.addr);
		local gen = self:bump();
		self.fx.timer(0, function ()
			if gen == self.gen and self.state == "idle" then self:connect_next(); end
		end);
	elseif self.refusal then
		local why = self.refusal;
		self.refusal = nil;
		self.targets = nil;  -- every address of a cluster would say the same
		self:retry(why, "error");
	elseif was == "connected" then
		self:retry(("lost the connection to %s: %s"):format(self.addr, text));
	else
		local why = self.timed_out and "timed out" or text;
		self.timed_out = nil;
		self:retry(("cannot connect to %s port %d: %s"):format(self.addr, self.s.port, why));
	end
end

function publisher:on_refused(_, code, text)
	local key = tostring(code) .. text;
	if not self.log_once[key] then
		self.log_once[key] = true;
		self.fx.log("warn", "MQTT: a message was refused: %s (code %d); such messages are dropped", text, code);
	end
end

function publisher:on_log(level, text)
	self.fx.log(level == "error" and "warn" or "debug", "MQTT (libmosquitto): %s", text);
end

function publisher:on_unsuback()
end

-- Stale retained state -----------------------------------------------------------------
--
-- Once, after the first connection: subscribe to the retained state of
-- this host's devices, plus a private marker topic; after the SUBACK,
-- publish to the marker. The broker sends a subscription's retained
-- messages before it routes anything published after it, so when the
-- marker comes back, every retained state has been seen (a timeout covers
-- brokers that do not keep that order). A state of a device this server
-- has not seen since it started that says "online" is stale (the device
-- was online when the server stopped and has not come back): it becomes
-- "offline". A state of something that is no longer a device (account
-- deleted, iot_devices changed) is cleared.

local SWEEP_TIMEOUT = 30;

function publisher:start_sweep()
	local token = random_token();
	local sweep = { marker = self.base .. "$sync/" .. token, token = token, seen = 0, cleared = 0, offline = 0 };
	local mid, err = self.client:subscribe({ self.base .. "+/state", sweep.marker });
	if not mid then
		self.fx.log("debug", "MQTT: cannot read back retained states: %s", tostring(err));
		return;
	end
	sweep.mid = mid;
	self.sweep = sweep;
	self.fx.timer(SWEEP_TIMEOUT, function ()
		if self.sweep == sweep then self:finish_sweep("timed out"); end
	end);
end

function publisher:on_suback(mid, granted)
	local sweep = self.sweep;
	if not sweep or mid ~= sweep.mid then return; end
	if granted >= 128 then
		self.fx.log("debug", "MQTT: the broker does not let us read retained states back (code %d)", granted);
		self.sweep = nil;
		self.swept = true;
		return;
	end
	self.client:publish(sweep.marker, sweep.token, false);
end

function publisher:on_message(topic, payload, retain)
	local sweep = self.sweep;
	if not sweep then return; end
	if topic == sweep.marker then
		if payload == sweep.token then self:finish_sweep(); end
		return;
	end
	if not retain or payload == "" or topic:sub(1, #self.base) ~= self.base then return; end
	local level = topic:sub(#self.base + 1):match("^([^/]+)/state$");
	local node = level and self.mqtt.unescape(level);
	if not node then return; end
	local jid = node .. "@" .. self.s.xmpp_host;
	sweep.seen = sweep.seen + 1;
	if self.fx.known(jid) then return; end
	if not self.fx.is_device(jid) then
		sweep.cleared = sweep.cleared + 1;
		self.client:publish(topic, "", true);
		return;
	end
	local ok, old = pcall(json.decode, payload);
	if ok and type(old) == "table" and old.state == "offline" then return; end
	sweep.offline = sweep.offline + 1;
	self.client:publish(topic, json.encode({
		jid = jid; state = "offline"; since = iso(self.started); changed = iso(self.started);
		show = "unavailable"; flapping = false;
	}), true);
end

function publisher:finish_sweep(why)
	local sweep = self.sweep;
	self.sweep = nil;
	self.swept = true;
	if self.client:connected() then
		self.client:unsubscribe({ self.base .. "+/state", sweep.marker });
	end
	self.fx.log(why and "warn" or "info",
		"MQTT: checked %d retained device state(s)%s: %d no longer tracked (cleared), %d stale (now offline)",
		sweep.seen, why and (" (" .. why .. ")") or "", sweep.cleared, sweep.offline);
end

-- Metrics and shutdown ---------------------------------------------------------------------

function publisher:stats()
	if self.state == "closed" then return { state = "closed", broker = self.s.broker }; end
	local st = self.client:stats();
	st.state = self.state;
	st.broker = self.s.broker;
	return st;
end

function publisher:report()
	local m = self.fx.metrics;
	if not m then return; end
	local st = self.client:stats();
	if m.connected then m.connected(st.connected and 1 or 0); end
	if m.queued then m.queued(st.queued + st.inflight); end
	if m.sent and st.sent > self.reported.sent then m.sent(st.sent - self.reported.sent); end
	if m.dropped and st.dropped + st.refused > self.reported.dropped then
		m.dropped(st.dropped + st.refused - self.reported.dropped);
	end
	self.reported.sent, self.reported.dropped = st.sent, st.dropped + st.refused;
end

-- Say goodbye and free the client. MQTT 5: "offline" on $server and a
-- DISCONNECT that asks the broker to publish the will as well (the
-- publication may still wait behind unacknowledged messages; the will
-- does not). MQTT 3.1.1 has no such DISCONNECT, and a plain one would
-- cancel the will: the connection is just closed, and the broker
-- publishes the will.
function publisher:close()
	if self.state == "closed" then return; end
	local connected = self.client:connected();
	self.state = "closed";
	self:bump();
	if connected and not self.protocol3 then
		self.client:publish(self.server_topic, "offline", true);
		self.client:disconnect(true);
	end
	self:unwatch();
	self.client:close();
end

return M;
