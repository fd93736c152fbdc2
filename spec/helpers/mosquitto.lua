-- spec/helpers/mosquitto.lua — real MQTT brokers and subscribers for
-- mod_brisk_iot's MQTT specs.
--
--   local mosquitto = require "spec.helpers.mosquitto"
--   local b = mosquitto.start{ tls = certs, users = { prosody = "pw" }, plain_port = true }
--   b.url                        "mqtt://127.0.0.1:PORT" (or mqtts://localhost:PORT with tls)
--   b:stop() / b:start() / b:restart() / b:kill()   (same port and folder; persistence on)
--   b:snapshot(filter)           retained messages under filter now: { [topic] = payload }
--   local s = b:subscribe(filter, { id = "spec-sub" })   -- mosquitto_sub, QoS 1, persistent session
--   s:messages()                 every message so far, decoded: { topic, payload, retain, props, tst }
--   s:wait(pred, timeout)        until pred(messages) is true; returns the messages
--   s:stop()
--   local r = b:reader(filter)   the helper's own client, subscribed (QoS 0)
--   r:next(timeout)              topic, payload, retain of the next message, or nil
--   r:close()
--   mosquitto.certs(dir)         a CA, a server certificate for localhost/127.0.0.1 and a second CA
--   mosquitto.attach(port)       a broker started elsewhere (make run's), for snapshot() and reader()
--
-- Brokers run Debian's mosquitto on a free loopback port with a generated
-- config (persistence on, generous queues for offline persistent
-- subscribers) in their own /tmp folder; they are stopped when the spec
-- process exits. snapshot() is a minimal MQTT 3.1.1 client written here on
-- LuaSocket, independent of libmosquitto: it subscribes together with a
-- marker topic and publishes to the marker, and the broker sends retained
-- messages before routing the marker, so it knows when it has them all.

local socket = require "socket";
local json = require "util.json";
local prosody = require "spec.helpers.prosody";
local sh, q, read_file, write_file = prosody.sh, prosody.shell_quote, prosody.read_file, prosody.write_file;

local M = {};
local broker_methods = {};
local broker_mt = { __index = broker_methods };
local sub_methods = {};
local sub_mt = { __index = sub_methods };
local live = {};

local function is_root()
	return (sh("id -u")):match("^0") ~= nil;
end

-- Certificates made with openssl for one spec run: ca.crt signs
-- server.crt (localhost, 127.0.0.1); other-ca.crt signs nothing we use.
function M.certs(dir)
	local function run(cmd)
		local out, ok = sh("cd " .. q(dir) .. " && " .. cmd .. " 2>&1");
		assert(ok, cmd .. ": " .. out);
	end
	local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
	run("openssl req -x509 " .. ec .. " -keyout ca.key -out ca.crt -days 2 -subj '/CN=Brisk spec CA'");
	run("openssl req -x509 " .. ec .. " -keyout other-ca.key -out other-ca.crt -days 2 -subj '/CN=Brisk other CA'");
	run("openssl req " .. ec .. " -keyout server.key -out server.csr -subj '/CN=localhost'");
	write_file(dir .. "/san.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
	run("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext");
	return { dir = dir, ca = dir .. "/ca.crt", other_ca = dir .. "/other-ca.crt",
		cert = dir .. "/server.crt", key = dir .. "/server.key" };
end

--[[
start(opts): opts.tls = M.certs(...) (the main listener speaks TLS),
opts.users = { name = password } (password authentication, no anonymous),
opts.plain_port = true (a second, plain listener for snapshot() and
subscribers, with the same users), opts.config = extra config lines.
]]
function M.start(opts)
	opts = opts or {};
	local dir = sh("mktemp -d /tmp/brisk-mosquitto-XXXXXX"):gsub("%s+$", "");
	local self = setmetatable({ dir = dir, opts = opts, port = prosody.free_port() }, broker_mt);
	self.plain_port = opts.plain_port and prosody.free_port() or (not opts.tls and self.port) or nil;
	self.url = opts.tls and ("mqtts://localhost:%d"):format(self.port) or ("mqtt://127.0.0.1:%d"):format(self.port);
	local lines = {
		"per_listener_settings false",
		"persistence true",
		"persistence_location " .. dir .. "/",
		"autosave_interval 1",
		"max_queued_messages 1000000",
		"max_inflight_messages 20",
		"log_dest file " .. dir .. "/mosquitto.log",
		"log_type error", "log_type warning", "log_type notice", "log_type information",
		"connection_messages true",
	};
	if is_root() then lines[#lines + 1] = "user root"; end
	if opts.users then
		local first = true;
		for user, pw in pairs(opts.users) do
			local out, ok = sh(("mosquitto_passwd -b %s %s %s %s 2>&1"):format(first and "-c" or "",
				q(dir .. "/passwd"), q(user), q(pw)));
			assert(ok, "mosquitto_passwd: " .. out);
			first = false;
		end
		lines[#lines + 1] = "allow_anonymous false";
		lines[#lines + 1] = "password_file " .. dir .. "/passwd";
	else
		lines[#lines + 1] = "allow_anonymous true";
	end
	lines[#lines + 1] = ("listener %d 127.0.0.1"):format(self.port);
	if opts.tls then
		lines[#lines + 1] = "cafile " .. opts.tls.ca;
		lines[#lines + 1] = "certfile " .. opts.tls.cert;
		lines[#lines + 1] = "keyfile " .. opts.tls.key;
	end
	if opts.plain_port then lines[#lines + 1] = ("listener %d 127.0.0.1"):format(self.plain_port); end
	for _, l in ipairs(opts.config or {}) do lines[#lines + 1] = l; end
	self.config_path = dir .. "/mosquitto.conf";
	write_file(self.config_path, table.concat(lines, "\n") .. "\n");
	live[self] = true;
	self:start();
	return self;
end

local function port_open(port)
	local c = socket.tcp();
	c:settimeout(0.2);
	local ok = c:connect("127.0.0.1", port);
	c:close();
	return ok ~= nil;
end

function broker_methods:start()
	if self.pid and prosody.pid_alive(self.pid) then return; end
	self.pid = tonumber(sh(("exec mosquitto -c %s >>%s 2>&1 </dev/null & echo $!"):format(
		q(self.config_path), q(self.dir .. "/stdout.log"))):match("%d+"));
	assert(prosody.wait_for(function ()
		return port_open(self.port) and (not self.plain_port or port_open(self.plain_port))
			or not prosody.pid_alive(self.pid);
	end, 10, 0.02) and prosody.pid_alive(self.pid), "mosquitto did not start: " .. (read_file(self.dir .. "/mosquitto.log") or "")
		.. (read_file(self.dir .. "/stdout.log") or ""));
end

-- SIGTERM: mosquitto saves its database (sessions, queued and retained
-- messages) and exits.
function broker_methods:stop()
	if self.pid and prosody.pid_alive(self.pid) then
		os.execute("kill -TERM " .. self.pid);
		assert(prosody.wait_for(function () return not prosody.pid_alive(self.pid); end, 10, 0.02), "mosquitto did not stop");
	end
	self.pid = nil;
end

function broker_methods:kill()
	if self.pid and prosody.pid_alive(self.pid) then
		os.execute("kill -KILL " .. self.pid);
		prosody.wait_for(function () return not prosody.pid_alive(self.pid); end, 10, 0.02);
	end
	self.pid = nil;
end

function broker_methods:restart()
	self:stop();
	self:start();
end

function broker_methods:log_text()
	return read_file(self.dir .. "/mosquitto.log") or "";
end

function broker_methods:close()
	self:stop();
	for s in pairs(self.subs or {}) do s:stop(); end
	live[self] = nil;
	if os.getenv("BRISK_KEEP_SERVERS") ~= "1" then os.execute("rm -rf " .. q(self.dir)); end
end

-- A minimal MQTT 3.1.1 client for snapshot() -------------------------------------------

local function varint(n)
	local out = {};
	repeat
		local b = n % 128;
		n = n // 128;
		if n > 0 then b = b + 128; end
		out[#out + 1] = string.char(b);
	until n == 0;
	return table.concat(out);
end

local function str(s) return string.pack(">s2", s); end

local function packet(first, body) return string.char(first) .. varint(#body) .. body; end

local function read_packet(conn)
	local b1, err = conn:receive(1);
	if not b1 then return nil, err; end
	local len, mult = 0, 1;
	repeat
		local b = assert(conn:receive(1)):byte();
		len = len + (b % 128) * mult;
		mult = mult * 128;
	until b < 128;
	local body = len > 0 and assert(conn:receive(len)) or "";
	return b1:byte(), body;
end

local function mini_connect(self, timeout)
	local port = assert(self.plain_port, "needs a plain listener (plain_port = true)");
	local conn = assert(socket.tcp());
	conn:settimeout(timeout or 10);
	assert(conn:connect("127.0.0.1", port));
	conn:setoption("tcp-nodelay", true);
	local user, pw = next(self.opts.users or {});
	local flags = 0x02 + (user and 0xC0 or 0);
	local body = str("MQTT") .. string.char(4, flags) .. string.pack(">I2", 0) .. str("spec-mini-" .. math.random(1e9))
		.. (user and (str(user) .. str(pw)) or "");
	assert(conn:send(packet(0x10, body)));
	local t, b = read_packet(conn);
	assert(t == 0x20 and b:byte(2) == 0, "mini client: connection refused");
	return conn;
end

local function parse_publish(t, b)
	local tl = string.unpack(">I2", b);
	local topic = b:sub(3, 2 + tl);
	local rest = 3 + tl + (((t >> 1) & 3) > 0 and 2 or 0);
	return topic, b:sub(rest), t & 1 == 1;
end

-- Retained messages under filter right now: { [topic] = payload }.
function broker_methods:snapshot(filter, timeout)
	local conn = mini_connect(self, timeout);
	local t, b;
	local marker = "spec/marker/" .. math.random(1e9);
	assert(conn:send(packet(0x82, string.pack(">I2", 1) .. str(filter) .. "\0" .. str(marker) .. "\0")));
	local out = {};
	while true do
		t, b = read_packet(conn);
		assert(t, "snapshot: " .. tostring(b));
		if t == 0x90 then
			assert(conn:send(packet(0x30, str(marker) .. "x")));
		elseif t & 0xF0 == 0x30 then
			local topic, payload, retain = parse_publish(t, b);
			if topic == marker then break; end
			if retain then out[topic] = payload; end
		end
	end
	conn:send(string.char(0xE0, 0));
	conn:close();
	return out;
end

local reader_methods = {};
local reader_mt = { __index = reader_methods };

-- A subscriber on the helper's own client: QoS 0, messages as they come.
function broker_methods:reader(filter)
	local conn = mini_connect(self);
	assert(conn:send(packet(0x82, string.pack(">I2", 1) .. str(filter) .. "\0")));
	local t = read_packet(conn);
	assert(t == 0x90, "reader: no SUBACK");
	return setmetatable({ conn = conn }, reader_mt);
end

function reader_methods:next(timeout)
	self.conn:settimeout(timeout or 10);
	while true do
		local t, b = read_packet(self.conn);
		if not t then return nil, b; end
		if t & 0xF0 == 0x30 then return parse_publish(t, b); end
	end
end

function reader_methods:close()
	self.conn:send(string.char(0xE0, 0));
	self.conn:close();
end

-- Subscribers: mosquitto_sub -------------------------------------------------------------

--[[
subscribe(filter, opts): a mosquitto_sub process (MQTT 5, QoS 1, a
persistent session unless opts.clean, reconnecting by itself) writing each
message as JSON. opts.id names the session; opts.filters adds filters.
]]
function broker_methods:subscribe(filter, opts)
	opts = opts or {};
	local port = assert(self.plain_port, "subscribe() needs a plain listener");
	local tag = math.random(1e9);
	local s = setmetatable({ broker = self, path = self.dir .. "/sub-" .. tag .. ".jsonl", parsed = {}, pos = 0,
		probe = "spec/probe/" .. tag }, sub_mt);
	local user, pw = next(self.opts.users or {});
	local auth = user and (" -u " .. q(user) .. " -P " .. q(pw)) or "";
	local args = { "stdbuf -oL mosquitto_sub -h 127.0.0.1 -p " .. port .. auth, "-V 5 -q 1 -F %j -k 5" };
	if not opts.clean then args[#args + 1] = "-c -x 3600 -i " .. q(opts.id or ("spec-sub-" .. tag)); end
	for _, f in ipairs({ filter, s.probe, table.unpack(opts.filters or {}) }) do args[#args + 1] = "-t " .. q(f); end
	s.pid = tonumber(sh(("exec %s >%s 2>%s.err </dev/null & echo $!"):format(table.concat(args, " "), q(s.path), q(s.path))):match("%d+"));
	self.subs = self.subs or {};
	self.subs[s] = true;
	-- mosquitto_sub says nothing once it has subscribed: publish to its
	-- probe topic until the probe comes through.
	local pub = ("mosquitto_pub -h 127.0.0.1 -p %d%s -t %s -m probe -q 1 2>/dev/null"):format(port, auth, q(s.probe));
	assert(prosody.wait_for(function ()
		sh(pub);
		return (read_file(s.path) or ""):find(s.probe, 1, true) ~= nil;
	end, 10, 0.02), "mosquitto_sub did not subscribe: " .. (read_file(s.path .. ".err") or ""));
	return s;
end

function sub_methods:messages()
	local data = read_file(self.path) or "";
	while true do
		local nl = data:find("\n", self.pos + 1, true);
		if not nl then break; end
		local line = data:sub(self.pos + 1, nl - 1);
		self.pos = nl;
		local m = json.decode(line);
		if m and m.topic ~= self.probe then
			local payload = m.payload;
			if type(payload) ~= "string" then payload = json.encode(payload); end
			self.parsed[#self.parsed + 1] = {
				topic = m.topic; payload = payload; retain = m.retain == 1 or m.retain == true;
				props = m.properties and m.properties["user-properties"] or {}; tst = m.tst;
			};
		end
	end
	return self.parsed;
end

function sub_methods:wait(pred, timeout)
	local ok = prosody.wait_for(function () return pred(self:messages()); end, timeout or 10, 0.02);
	return ok and self:messages() or nil, self:messages();
end

function sub_methods:stop()
	if self.pid and prosody.pid_alive(self.pid) then
		os.execute("kill -TERM " .. self.pid);
		prosody.wait_for(function () return not prosody.pid_alive(self.pid); end, 5, 0.02);
	end
	self.pid = nil;
	if self.broker.subs then self.broker.subs[self] = nil; end
end

-- A broker this helper did not start (make run's): snapshot() and reader().
function M.attach(port, users)
	return setmetatable({ plain_port = port, port = port, opts = { users = users } }, broker_mt);
end

M._reaper = setmetatable({}, { __gc = function ()
	for b in pairs(live) do pcall(b.close, b); end
end });

return M;
