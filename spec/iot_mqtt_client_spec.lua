-- Specs of mod_brisk_iot's MQTT publishing without Prosody: the C client
-- (brisk.mqtt) and its driver (brisk.iot.mqtt) against real mosquitto
-- brokers, stepped by Prosody's own net.server backends loaded in this
-- process (epoll, select, libevent), read by real subscribers
-- (mosquitto_sub, and an independent MQTT client for retained state).
--
-- BRISK_MQTT_SPEC_EVENTS (default 300) sets how many events the restart
-- and outage specs push through.
local mosquitto = require "spec.helpers.mosquitto";
local prosody = require "spec.helpers.prosody";
local mqtt_lib = require "brisk.iot.mqtt";
local watch = require "brisk.iot.watch";
local json = require "util.json";
local socket = require "socket";

local EVENTS = tonumber(os.getenv("BRISK_MQTT_SPEC_EVENTS")) or 300;

-- A net.server backend, and a way to run its loop until something holds.
-- server_epoll's loop runs in a coroutine that a 10 ms timer leaves (its
-- loop(true) cannot be used: on Prosody 13 it calls runtimers() without
-- the arguments that needs); select has step(), libevent loopexit().
local function new_loop(backend)
	local server = require("net.server_" .. backend);
	local loop = { server = server, backend = backend };
	local co;
	server.add_task(0.01, function ()
		if co and coroutine.running() == co then coroutine.yield(); end
		return 0.01;
	end);
	function loop.turn()
		if backend == "select" then
			server.step();
		elseif backend == "epoll" then
			co = co or coroutine.create(function () server.loop(); end);
			local ok, err = coroutine.resume(co);
			assert(ok, err);
		else
			server.event_base:loopexit(0.01);
			server.loop();
		end
	end
	function loop.run(pred, timeout)
		local deadline = socket.gettime() + (timeout or 10);
		repeat
			if pred() then return true; end
			loop.turn();
		until socket.gettime() > deadline;
		return pred();
	end
	function loop.sleep(t)
		local deadline = socket.gettime() + t;
		loop.run(function () return socket.gettime() > deadline; end, t + 1);
	end
	return loop;
end

local loops = {};
local function get_loop(backend)
	loops[backend] = loops[backend] or new_loop(backend);
	return loops[backend];
end

local function new_publisher(loop, raw, fx_over, host)
	local logs = {};
	local settings = mqtt_lib.check(raw, { host = host or "devices.example", read_file = prosody.read_file and function (p)
		local data = prosody.read_file(p);
		if not data then return nil, "No such file or directory"; end
		return data;
	end });
	local fx = {
		watch = watch.new(loop.server);
		timer = function (delay, fn) loop.server.add_task(delay, function () return fn(); end); end;
		now = socket.gettime;
		resolve = function (_, cb) cb({ "127.0.0.1" }); end;
		log = function (level, fmt, ...) logs[#logs + 1] = level .. " " .. fmt:format(...); end;
		-- This publisher's own devices are known; only the stale spec says otherwise.
		known = function () return true; end;
		is_device = function () return true; end;
		states = function () return function () end; end;
	};
	for k, v in pairs(fx_over or {}) do fx[k] = v; end
	local p = mqtt_lib.new(settings, fx);
	p.logs = logs;
	function p.logged(pattern)
		for _, l in ipairs(logs) do if l:find(pattern) then return l; end end
	end
	return p;
end

local function state(jid, st, extra)
	local f = { jid = jid, state = st, since = "2026-01-01T00:00:00.000Z" };
	for k, v in pairs(extra or {}) do f[k] = v; end
	return f;
end

local function event(jid, kind, n)
	return { jid = jid, kind = kind }, json.encode({ type = "iot." .. kind, data = { jid = jid, n = n } });
end

-- Events as a subscriber saw them: per device, the n of each, duplicates
-- (QoS 1 may deliver twice) removed by event id.
local function per_device(msgs)
	local seen, out = {}, {};
	for _, m in ipairs(msgs) do
		if m.topic:match("/events$") then
			local id = m.props["event-id"];
			if not seen[id] then
				seen[id] = true;
				local body = json.decode(m.payload);
				local list = out[body.data.jid] or {};
				out[body.data.jid] = list;
				list[#list + 1] = body.data.n;
			end
		end
	end
	return out;
end

describe("brisk.iot.mqtt against a real mosquitto", function ()
	local broker;
	setup(function () broker = mosquitto.start{}; end);
	teardown(function () if broker then broker:close(); end end);

	for _, backend in ipairs({ "epoll", "select", "event" }) do
		it("publishes state and events from Prosody's " .. backend .. " loop", function ()
			local loop = get_loop(backend);
			local sub = broker:subscribe("brisk/devices.example/+/events", { clean = true });
			local p = new_publisher(loop, { broker = broker.url, client_id = "spec-" .. backend });
			p:start();
			assert.truthy(loop.run(function () return p.state == "connected"; end, 10), table.concat(p.logs, "\n"));
			local jid = backend .. "+1#a@devices.example";
			p:device_state(jid, state(jid, "online", { status = "ok" }));
			local ev, body = event(jid, "online", 1);
			p:device_event(ev, body);
			assert.truthy(loop.run(function () return #sub:messages() >= 1; end, 10));
			local m = sub:messages()[1];
			assert.equal("brisk/devices.example/" .. backend .. "%2B1%23a/events", m.topic);
			assert.equal(body, m.payload);
			assert.equal("iot.online", m.props["event-type"]);
			assert.matches("^%x+%-1$", m.props["event-id"]);
			local snap = broker:snapshot("brisk/devices.example/#");
			assert.same(state(jid, "online", { status = "ok" }), json.decode(snap["brisk/devices.example/" .. backend .. "%2B1%23a/state"]));
			assert.equal("online", snap["brisk/devices.example/$server"]);
			-- A rule's topic, under the prefix.
			local rsub = broker:subscribe("brisk/alerts/#", { clean = true });
			p:rule("alerts/" .. backend, "{}");
			assert.truthy(loop.run(function () return #rsub:messages() >= 1; end, 10));
			assert.equal("brisk/alerts/" .. backend, rsub:messages()[1].topic);
			p:close();
			loop.sleep(0.1);
			assert.equal("offline", broker:snapshot("brisk/devices.example/$server")["brisk/devices.example/$server"]);
			sub:stop(); rsub:stop();
		end);
	end

	it("resumes its session across a broker restart, and every event arrives, in order per device", function ()
		local loop = get_loop("epoll");
		local sub = broker:subscribe("brisk/restart.example/+/events", { id = "spec-restart-sub" });
		local p = new_publisher(loop, { broker = broker.url, client_id = "spec-restart", reconnect_delay = 0.05,
			reconnect_delay_max = 0.2 }, nil, "restart.example");
		p:start();
		assert.truthy(loop.run(function () return p.state == "connected"; end, 10));
		local devices = { "a@restart.example", "b@restart.example", "c@restart.example" };
		local n = 0;
		local function push(k)
			for _ = 1, k do
				n = n + 1;
				local jid = devices[n % #devices + 1];
				p:device_event(event(jid, "state", n));
				p:device_state(jid, state(jid, "online", { n = n }));
			end
		end
		-- Under load: events keep coming while the broker goes away and returns.
		for _ = 1, 5 do push(EVENTS // 10); loop.turn(); end
		broker:stop();
		for _ = 1, 5 do push(EVENTS // 10); loop.turn(); end
		broker:start();
		assert.truthy(loop.run(function () return p.state == "connected"; end, 10), table.concat(p.logs, "\n"));
		assert.truthy(p.logged("MQTT 5, resumed session"), "the broker kept the session");
		local total = n;
		-- The loop must turn while we wait: the publisher lives in it.
		local msgs = loop.run(function ()
			local c = 0;
			for _, l in pairs(per_device(sub:messages())) do c = c + #l; end
			return c >= total;
		end, 20) and sub:messages();
		if not msgs then
			local got = {};
			for jid, list in pairs(per_device(sub:messages())) do got[#got + 1] = jid .. ": " .. #list .. " last " .. list[#list]; end
			local st = {};
			for k, v in pairs(p:stats()) do st[#st + 1] = k .. "=" .. tostring(v); end
			error("not every event arrived (" .. total .. " sent): " .. table.concat(got, ", ") .. "\n" .. table.concat(st, " ") .. "\n" .. table.concat(p.logs, "\n"));
		end
		for jid, list in pairs(per_device(msgs)) do
			for i = 2, #list do
				assert.is_true(list[i] > list[i - 1], jid .. " out of order");
			end
		end
		assert.equal(0, p:stats().dropped);
		-- The last state of each device is the retained one.
		local snap = broker:snapshot("brisk/restart.example/+/state");
		for i = 1, #devices do
			local last = total - (total - i) % #devices;
			assert.equal(last, json.decode(snap["brisk/restart.example/" .. devices[(last % #devices) + 1]:match("^[^@]+") .. "/state"]).n);
		end
		p:close();
		sub:stop();
	end);

	it("keeps at most queue_size events while the broker is down, and every device's latest state", function ()
		local loop = get_loop("epoll");
		local p = new_publisher(loop, { broker = broker.url, client_id = "spec-outage", queue_size = 50, window = 10,
			reconnect_delay = 0.05, reconnect_delay_max = 0.1 }, nil, "outage.example");
		p:start();
		assert.truthy(loop.run(function () return p.state == "connected"; end, 10));
		local idle = p:stats().memory;
		broker:stop();
		loop.run(function () return p.state ~= "connected"; end, 5);
		local sub;
		for i = 1, EVENTS * 3 do
			local jid = ("d%d@outage.example"):format(i % 40);
			p:device_event(event(jid, "state", i));
			p:device_state(jid, state(jid, "online", { n = i }));
			if i % 100 == 0 then loop.turn(); end
		end
		local st = p:stats();
		assert.equal(50, st.queued - st.queued_states);
		assert.equal(40, st.queued_states);
		assert.equal(EVENTS * 3 - 50, st.dropped);
		-- 50 events and 40 states of a few hundred bytes each: flat, whatever the outage's length.
		assert.is_true(st.memory < idle + 90 * 400, "memory " .. st.memory);
		broker:start();
		sub = broker:subscribe("brisk/outage.example/+/events", { clean = true });
		assert.truthy(loop.run(function () return p.state == "connected" and p:stats().queued == 0 and p:stats().inflight == 0; end, 10));
		local snap = broker:snapshot("brisk/outage.example/+/state");
		for i = EVENTS * 3 - 39, EVENTS * 3 do
			assert.equal(i, json.decode(snap[("brisk/outage.example/d%d/state"):format(i % 40)]).n);
		end
		-- Drained: the memory is what it was before the outage.
		assert.equal(idle, p:stats().memory);
		p:close();
		sub:stop();
	end);

	it("reads stale retained state back once and corrects it", function ()
		local loop = get_loop("epoll");
		local base = "brisk/stale.example/";
		local pub = ("mosquitto_pub -p %d -q 1 -r"):format(broker.port);
		os.execute(pub .. " -t " .. base .. "ghost/state -m '{\"state\":\"online\"}'");
		os.execute(pub .. " -t " .. base .. "quiet/state -m '{\"state\":\"offline\"}'");
		os.execute(pub .. " -t " .. base .. "gone/state -m '{\"state\":\"online\"}'");
		os.execute(pub .. " -t " .. base .. "back/state -m '{\"state\":\"offline\"}'");
		local p = new_publisher(loop, { broker = broker.url, client_id = "spec-stale" }, {
			known = function (jid) return jid == "back@stale.example"; end;
			is_device = function (jid) return jid ~= "gone@stale.example"; end;
		}, "stale.example");
		p:start();
		assert.truthy(loop.run(function () return p.logged("checked %d+ retained") ~= nil; end, 10), table.concat(p.logs, "\n"));
		assert.truthy(p.logged("checked 4 retained device state%(s%): 1 no longer tracked %(cleared%), 1 stale %(now offline%)"));
		loop.sleep(0.1);
		local snap = broker:snapshot(base .. "+/state");
		assert.equal("offline", json.decode(snap[base .. "ghost/state"]).state);
		assert.equal('{"state":"offline"}', snap[base .. "quiet/state"]);
		assert.is_nil(snap[base .. "gone/state"]);
		assert.equal('{"state":"offline"}', snap[base .. "back/state"]);
		p:close();
	end);

	it("falls back to MQTT 3.1.1 when the broker refuses MQTT 5", function ()
		local loop = get_loop("epoll");
		local port = prosody.free_port();
		local out = os.tmpname();
		local pid = tonumber(prosody.sh(("exec lua5.4 %s/spec/helpers/mqtt_v3_proxy.lua %d %d >%s 2>&1 </dev/null & echo $!")
			:format(prosody.root, port, broker.port, out)):match("%d+"));
		assert.truthy(prosody.wait_for(function ()
			local c = socket.tcp(); local ok = c:connect("127.0.0.1", port); c:close(); return ok;
		end, 5));
		local p = new_publisher(loop, { broker = "mqtt://127.0.0.1:" .. port, client_id = "spec-v3" }, nil, "v3.example");
		p:start();
		assert.truthy(loop.run(function () return p.state == "connected"; end, 10), table.concat(p.logs, "\n"));
		assert.truthy(p.logged("refused MQTT 5"));
		assert.truthy(p.logged("MQTT 3.1.1"));
		assert.equal(4, p:stats().protocol);
		p:device_state("x@v3.example", state("x@v3.example", "online"));
		p:device_event(event("x@v3.example", "online", 1));
		loop.run(function () return p:stats().sent >= 3; end, 5);
		assert.equal("online", json.decode(broker:snapshot("brisk/v3.example/+/state")["brisk/v3.example/x/state"]).state);
		p:close();
		-- MQTT 3.1.1 has no "disconnect with will": the connection just ends,
		-- and the broker publishes the will.
		assert.truthy(prosody.wait_for(function ()
			return broker:snapshot("brisk/v3.example/$server")["brisk/v3.example/$server"] == "offline";
		end, 5));
		os.execute("kill " .. pid);
		assert.equal("refused-v5\n", prosody.read_file(out));
		os.remove(out);
	end);

	-- Keepalive: libmosquitto's minimum is 5 s, and a silent broker is noticed
	-- after about two of them, so this one runs only when asked.
	local long = os.getenv("BRISK_MQTT_SPEC_LONG") == "1" and it or pending;
	long("notices a broker that stops answering (keepalive), and resumes when it is back (BRISK_MQTT_SPEC_LONG=1)", function ()
		local loop = get_loop("epoll");
		local p = new_publisher(loop, { broker = broker.url, client_id = "spec-keepalive", keepalive = 5,
			reconnect_delay = 0.05, reconnect_delay_max = 0.2, connect_timeout = 1 }, nil, "keepalive.example");
		p:start();
		assert.truthy(loop.run(function () return p.state == "connected"; end, 10));
		os.execute("kill -STOP " .. broker.pid);
		local ok = loop.run(function () return p.logged("lost the connection") ~= nil; end, 20);
		os.execute("kill -CONT " .. broker.pid);
		assert.truthy(ok, table.concat(p.logs, "\n"));
		assert.truthy(loop.run(function () return p.state == "connected" and p.logged("resumed session"); end, 20),
			table.concat(p.logs, "\n"));
		p:close();
	end);

	it("gives up on a broker that accepts the connection but never answers", function ()
		local loop = get_loop("epoll");
		local silent = assert(socket.bind("127.0.0.1", 0));
		local _, port = silent:getsockname();
		local p = new_publisher(loop, { broker = "mqtt://127.0.0.1:" .. port, client_id = "spec-silent",
			connect_timeout = 0.2, reconnect_delay = 0.05, reconnect_delay_max = 0.05 }, nil, "silent.example");
		p:start();
		assert.truthy(loop.run(function ()
			local n = 0;
			for _, l in ipairs(p.logs) do if l:find("no answer from 127.0.0.1") then n = n + 1; end end
			return n >= 2;
		end, 10), table.concat(p.logs, "\n"));
		assert.are_not.equal("connected", p.state);
		p:close();
		silent:close();
	end);
end);

describe("brisk.iot.mqtt over TLS with password authentication", function ()
	local broker, certs, dir;
	setup(function ()
		dir = prosody.sh("mktemp -d /tmp/brisk-mqtt-tls-XXXXXX"):gsub("%s+$", "");
		certs = mosquitto.certs(dir);
		prosody.write_file(dir .. "/good.pass", "s3cret\n");
		prosody.write_file(dir .. "/bad.pass", "wrong\n");
		broker = mosquitto.start{ tls = certs, users = { prosody = "s3cret" }, plain_port = true };
	end);
	teardown(function ()
		if broker then broker:close(); end
		if dir then os.execute("rm -rf " .. dir); end
	end);

	it("connects with the CA, checks the broker's name, and publishes", function ()
		local loop = get_loop("epoll");
		local p = new_publisher(loop, { broker = broker.url, client_id = "spec-tls", username = "prosody",
			password_file = dir .. "/good.pass", tls = { ca_file = certs.ca } }, nil, "tls.example");
		p:start();
		assert.truthy(loop.run(function () return p.state == "connected"; end, 10), table.concat(p.logs, "\n"));
		p:device_state("t@tls.example", state("t@tls.example", "online"));
		loop.run(function () return p:stats().sent >= 2; end, 5);
		assert.equal("online", json.decode(broker:snapshot("brisk/tls.example/+/state")["brisk/tls.example/t/state"]).state);
		p:close();
	end);

	it("refuses a broker whose certificate another CA signed, or that has another name, and retries", function ()
		local loop = get_loop("epoll");
		for _, case in ipairs({
			{ url = broker.url, ca = certs.other_ca },
			{ url = ("mqtts://wrong.name:%d"):format(broker.port), ca = certs.ca },
		}) do
			local p = new_publisher(loop, { broker = case.url, client_id = "spec-tls-bad", username = "prosody",
				password_file = dir .. "/good.pass", tls = { ca_file = case.ca }, reconnect_delay = 0.05,
				reconnect_delay_max = 0.05 }, nil, "tls.example");
			p:start();
			assert.truthy(loop.run(function ()
				local n = 0;
				for _, l in ipairs(p.logs) do if l:find("retrying") then n = n + 1; end end
				return n >= 2;
			end, 10), table.concat(p.logs, "\n"));
			assert.truthy(p.logged("certificate verify failed"), table.concat(p.logs, "\n"));
			assert.are_not.equal("connected", p.state);
			p:close();
		end
	end);

	it("says clearly when the broker refuses the password, and retries", function ()
		local loop = get_loop("epoll");
		local p = new_publisher(loop, { broker = broker.url, client_id = "spec-auth", username = "prosody",
			password_file = dir .. "/bad.pass", tls = { ca_file = certs.ca }, reconnect_delay = 0.05,
			reconnect_delay_max = 0.05 }, nil, "tls.example");
		p:start();
		assert.truthy(loop.run(function ()
			local n = 0;
			for _, l in ipairs(p.logs) do if l:find("check username and password_file") then n = n + 1; end end
			return n >= 2;
		end, 10), table.concat(p.logs, "\n"));
		assert.matches("^error MQTT: 127%.0%.0%.1 refused the connection: .* %(code 13[45]%): check username and password_file; retrying",
			p.logged("check username"));
		p:close();
	end);

	it("fails to load with a clear message on bad settings", function ()
		local function err(raw)
			local ok, e = pcall(function ()
				local s = mqtt_lib.check(raw, { host = "h.example", read_file = function (p)
					local data = prosody.read_file(p);
					if not data then return nil, "No such file or directory"; end
					return data;
				end });
				mqtt_lib.new(s, {}):close();
			end);
			assert.is_false(ok);
			return e;
		end
		assert.equal("iot_mqtt: unknown scheme in broker URL (expected mqtt:// or mqtts://)", err{ broker = "http://127.0.0.1" });
		assert.equal("iot_mqtt: 'broker' is missing (mqtt://host:port or mqtts://host:port)", err{});
		assert.equal("iot_mqtt: unknown field 'brocker'", err{ brocker = "mqtt://x" });
		assert.equal("iot_mqtt: cannot read password_file '/nonexistent/pass': No such file or directory",
			err{ broker = broker.url, username = "u", password_file = "/nonexistent/pass", tls = { ca_file = certs.ca } });
		assert.equal("iot_mqtt: 'password_file' needs a 'username'", err{ broker = broker.url, password_file = dir .. "/good.pass" });
		assert.equal("iot_mqtt: cannot read tls.ca_file '/nonexistent/ca.crt': No such file or directory",
			err{ broker = broker.url, tls = { ca_file = "/nonexistent/ca.crt" } });
		assert.matches("^iot_mqtt: cannot load tls%.ca_file '.*/good%.pass': ", err{ broker = broker.url, tls = { ca_file = dir .. "/good.pass" } });
		assert.matches("^iot_mqtt: cannot load tls%.key_file '.*': .*key values mismatch", err{ broker = broker.url,
			tls = { ca_file = certs.ca, cert_file = certs.cert, key_file = dir .. "/ca.key" } });
		assert.equal("iot_mqtt: 'tls' needs an mqtts:// broker", err{ broker = "mqtt://127.0.0.1", tls = { ca_file = certs.ca } });
		assert.equal("iot_mqtt: 'topic_prefix' has a wildcard ('+' or '#')", err{ broker = "mqtt://127.0.0.1", topic_prefix = "a/#" });
		assert.equal("iot_mqtt: 'keepalive' must be an integer from 5 to 65535", err{ broker = "mqtt://127.0.0.1", keepalive = 1 });
		-- What mod_brisk_iot's load runs: brisk.iot.config, options and rules.
		local config = require "brisk.iot.config";
		local function compile(options)
			local ok, e = pcall(config.compile, options, { host = "h.example", now = 0 });
			assert.is_false(ok);
			return e;
		end
		assert.equal("iot_mqtt: unknown scheme in broker URL (expected mqtt:// or mqtts://)",
			compile{ mqtt = { broker = "amqp://127.0.0.1" }, rules = {} });
		assert.equal("rule 'r': 'mqtt' needs iot_mqtt to name a broker",
			compile{ rules = { { name = "r", on = "online", mqtt = "alerts" } } });
		assert.equal("rule 'r': 'mqtt' has a wildcard ('+' or '#')",
			compile{ mqtt = { broker = "mqtt://127.0.0.1" }, rules = { { name = "r", on = "online", mqtt = "alerts/+" } } });
		assert.equal("rule 'r': 'mqtt' must not begin or end with '/'",
			compile{ mqtt = { broker = "mqtt://127.0.0.1" }, rules = { { name = "r", on = "online", mqtt = "/alerts" } } });
	end);
end);
