-- Live specs of mod_brisk_iot's MQTT publishing: two real Prosody servers,
-- each with its own host, publishing into one real mosquitto (server A on
-- its plain listener, server B over TLS; both with password
-- authentication), real devices logging in and out, and real subscribers
-- reading what arrives (mosquitto_sub, and spec/helpers/mosquitto.lua's
-- own client for retained state).
--
-- BRISK_MQTT_SPEC_EVENTS (default 150) sets how many presences the
-- restart and outage specs send.
local prosody = require "spec.helpers.prosody";
local mosquitto = require "spec.helpers.mosquitto";
local st = require "util.stanza";
local json = require "util.json";
local socket = require "socket";

local EVENTS = tonumber(os.getenv("BRISK_MQTT_SPEC_EVENTS")) or 150;

-- A plugin that answers the spec's questions from inside the server:
-- mod_brisk_iot's stats (iot:stats()), and deleting an account.
local PROBE = [[
local json = require "util.json";
local st = require "util.stanza";
local ok, um = pcall(require, "prosody.core.usermanager");
if not ok then um = require "core.usermanager"; end
local registry = module:shared("/*/brisk_iot/hosts");
module:hook("iq/host/brisk:spec:mqtt:query", function (event)
	local q = event.stanza.tags[1];
	local out;
	if q.attr.delete then
		out = { deleted = um.delete_user(q.attr.delete, module.host) };
	else
		out = registry[module.host].stats();
	end
	event.origin.send(st.reply(event.stanza):tag("query", { xmlns = "brisk:spec:mqtt" }):text(json.encode(out)));
	return true;
end);
]];

local function wait_for(pred, timeout)
	return prosody.wait_for(pred, timeout or 10, 0.02);
end

describe("mod_brisk_iot publishing to MQTT, live", function ()
	local broker, certs, dir, a, b, plug;

	local function host_config(host, url, extra)
		local cfg = {
			iot_tick_interval = 0.05;
			iot_devices = { "dev-*@" .. host, "alert-*@" .. host, "flood-*@" .. host, "flap-*@" .. host };
			iot_mqtt = {
				broker = url; username = "prosody"; password_file = dir .. "/mqtt.pass";
				reconnect_delay = 0.05; reconnect_delay_max = 0.3; keepalive = 10;
			};
			iot_rules = {
				{ name = "alert", match = "alert-*@" .. host, on = "offline", mqtt = "alerts/offline" };
				{ name = "quiet", match = "flap-*@" .. host, on = "silent", after = 0.3, log = "debug" };
				{ name = "flap", match = "flap-*@" .. host, on = "flapping", transitions = 3, within = 30, log = "debug" };
			};
		};
		for k, v in pairs(extra or {}) do cfg.iot_mqtt[k] = v; end
		return cfg;
	end

	setup(function ()
		dir = prosody.sh("mktemp -d /tmp/brisk-mqtt-live-XXXXXX"):gsub("%s+$", "");
		certs = mosquitto.certs(dir);
		prosody.write_file(dir .. "/mqtt.pass", "s3cret\n");
		plug = dir .. "/plugins";
		os.execute("mkdir -p " .. plug);
		prosody.write_file(plug .. "/mod_iot_mqtt_probe.lua", PROBE);
		broker = mosquitto.start{ tls = certs, users = { prosody = "s3cret" }, plain_port = true };
		local accounts = { ["dev-1"] = "pw", ["dev-2"] = "pw", ["dev-x+3"] = "pw", ["alert-1"] = "pw", ["flood-1"] = "pw",
			["dev-gone"] = "pw", ["flap-1"] = "pw", ops = "pw" };
		a = prosody.start{
			host = "a.example"; plugin_paths = { plug }; accounts = accounts; log_level = "debug";
			-- Metrics as an operator scrapes them (module:measure -> OpenMetrics).
			modules = { "http_openmetrics" };
			config = { statistics = "internal", statistics_interval = "manual" };
			host_modules = { "brisk_iot", "iot_mqtt_probe" };
			host_config = host_config("a.example", ("mqtt://127.0.0.1:%d"):format(broker.plain_port), { queue_size = 40 });
		};
		b = prosody.start{
			host = "b.example"; plugin_paths = { plug }; accounts = accounts; log_level = "debug";
			host_modules = { "brisk_iot", "iot_mqtt_probe" };
			-- A name Prosody's own resolver turns into an address; the
			-- certificate is checked against the name.
			host_config = host_config("b.example", broker.url, { tls = { ca_file = certs.ca } });
		};
		assert(wait_for(function ()
			local snap = broker:snapshot("brisk/+/$server");
			return snap["brisk/a.example/$server"] == "online" and snap["brisk/b.example/$server"] == "online";
		end), "both servers connect: " .. a:log_text():sub(-3000) .. b:log_text():sub(-3000));
	end);

	teardown(function ()
		if a then a:stop(); end
		if b then b:stop(); end
		if broker then broker:close(); end
		if dir then os.execute("rm -rf " .. dir); end
	end);

	local function stats(srv, user)
		local c = srv:connect(user or "ops", "pw", "probe");
		local r = c:iq(st.iq({ type = "get", to = srv.host, id = "stats" }):tag("query", { xmlns = "brisk:spec:mqtt" }));
		c:close();
		return json.decode(r:get_child_text("query", "brisk:spec:mqtt"));
	end

	local function delete_account(srv, user)
		local c = srv:connect("ops", "pw", "probe");
		local r = c:iq(st.iq({ type = "set", to = srv.host, id = "delete" }):tag("query", { xmlns = "brisk:spec:mqtt", delete = user }));
		c:close();
		return json.decode(r:get_child_text("query", "brisk:spec:mqtt"));
	end

	-- mod_brisk_iot's MQTT metrics of srv, from its OpenMetrics endpoint.
	local function metrics(srv)
		local body = require "socket.http".request(("http://127.0.0.1:%d/metrics"):format(srv.http_port)) or "";
		local out = {};
		for name, value in body:gmatch("prosody_mod_brisk_iot__(mqtt_[%w_]+){host=\"" .. srv.host:gsub("%p", "%%%0") .. "\"} (%S+)") do
			out[name] = tonumber(value);
		end
		return out;
	end

	local function retained(filter)
		local out = {};
		for topic, payload in pairs(broker:snapshot(filter)) do
			out[topic] = payload ~= "" and (json.decode(payload) or payload) or nil;
		end
		return out;
	end

	-- Events a subscriber saw, per device, duplicates (QoS 1) removed.
	local function events_of(msgs, jid)
		local seen, out = {}, {};
		for _, m in ipairs(msgs) do
			local id = m.props["event-id"];
			local body = json.decode(m.payload);
			if id and not seen[id] and body and body.data.jid == jid then
				seen[id] = true;
				out[#out + 1] = { kind = body.type:match("^iot%.(.*)"), status = body.data.status, id = id,
					type = m.props["event-type"], body = body };
			end
		end
		return out;
	end

	it("gives a late subscriber the state of every device of both servers", function ()
		local a1 = a:connect("dev-1", "pw", "r");
		a1:send(st.presence():text_tag("show", "away"):text_tag("status", "battery=80"));
		local a2 = a:connect("dev-2", "pw", "r");
		a2:send(st.presence());
		local a3 = a:connect("dev-x+3", "pw", "r");
		a3:send(st.presence());
		local b1 = b:connect("dev-1", "pw", "r");
		b1:send(st.presence():text_tag("status", "on tls"));
		a2:close();
		assert(wait_for(function ()
			local s = retained("brisk/+/+/state");
			return s["brisk/a.example/dev-2/state"] and s["brisk/a.example/dev-2/state"].state == "offline"
				and s["brisk/b.example/dev-1/state"] and s["brisk/a.example/dev-x%2B3/state"];
		end));
		local s = retained("brisk/#");
		assert.equal("online", s["brisk/a.example/$server"]);
		assert.equal("online", s["brisk/b.example/$server"]);
		local d = s["brisk/a.example/dev-1/state"];
		assert.equal("dev-1@a.example", d.jid);
		assert.equal("online", d.state);
		assert.equal("away", d.show);
		assert.equal("battery=80", d.status);
		assert.is_false(d.flapping);
		assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z$", d.since);
		assert.equal("offline", s["brisk/a.example/dev-2/state"].state);
		assert.equal("unavailable", s["brisk/a.example/dev-2/state"].show);
		assert.equal("dev-x+3@a.example", s["brisk/a.example/dev-x%2B3/state"].jid);
		assert.equal("on tls", s["brisk/b.example/dev-1/state"].status);
		a1:close(); a3:close(); b1:close();
		-- prosodyctl shell: iot:stats() has a line for MQTT.
		local out = tostring(a:prosodyctl("shell", "iot:stats('a.example')"));
		assert.matches("a%.example: MQTT mqtt://127%.0%.0%.1:%d+ %(connected, MQTT 5%): sent %d+, queued %d+, in flight %d+, dropped 0, refused 0, %d+ bytes", out);
		assert.same({}, a:errors());
		assert.same({}, b:errors());
	end);

	it("publishes each event in order per device, with its id and type, and a rule's mqtt target", function ()
		local sub = broker:subscribe("brisk/a.example/+/events", { clean = true, filters = { "brisk/alerts/#" } });
		local c = a:connect("dev-1", "pw", "order");
		c:send(st.presence());
		for i = 1, 20 do c:send(st.presence():text_tag("status", "s" .. i)); end
		c:send(st.presence({ type = "unavailable" }));
		local al = a:connect("alert-1", "pw", "x");
		al:send(st.presence());
		al:kill();
		local msgs = sub:wait(function (m)
			local evs = events_of(m, "dev-1@a.example");
			local got_alert = false;
			for _, x in ipairs(m) do if x.topic == "brisk/alerts/offline" then got_alert = true; end end
			return #evs >= 22 and got_alert;
		end, 10);
		assert.truthy(msgs, "all events arrived");
		local evs = events_of(msgs, "dev-1@a.example");
		assert.equal("online", evs[1].kind);
		for i = 1, 20 do
			assert.equal("state", evs[i + 1].kind);
			assert.equal("s" .. i, evs[i + 1].status);
			assert.equal("iot.state", evs[i + 1].type);
		end
		assert.equal("offline", evs[22].kind);
		local boot, prev = nil, 0;
		for _, e in ipairs(evs) do
			local bt, n = e.id:match("^(%x+)%-(%d+)$");
			boot = boot or bt;
			assert.equal(boot, bt);
			assert.is_true(tonumber(n) > prev);
			prev = tonumber(n);
		end
		assert.equal("dev-1@a.example", evs[1].body.data.jid);
		assert.equal(0, evs[1].body.data.after);
		-- The rule's target: the webhook's body, with the rule's name.
		local alert;
		for _, m in ipairs(msgs) do if m.topic == "brisk/alerts/offline" then alert = json.decode(m.payload); end end
		assert.equal("iot.offline", alert.type);
		assert.equal("alert", alert.data.rule);
		assert.equal("alert-1@a.example", alert.data.jid);
		sub:stop();
		c:close();
	end);

	it("publishes the events rules ask the engine for: silent and flapping", function ()
		local sub = broker:subscribe("brisk/a.example/flap-1/events", { clean = true });
		local c = a:connect("flap-1", "pw", "r");
		c:send(st.presence());
		assert.truthy(sub:wait(function (m)
			for _, e in ipairs(events_of(m, "flap-1@a.example")) do if e.kind == "silent" then return true; end end
		end, 5), "a silent event");
		c:send(st.presence({ type = "unavailable" }));
		c:send(st.presence());
		local msgs = sub:wait(function (m)
			for _, e in ipairs(events_of(m, "flap-1@a.example")) do if e.kind == "flapping" then return true; end end
		end, 5);
		assert.truthy(msgs, "a flapping event");
		local kinds = {};
		for _, e in ipairs(events_of(msgs, "flap-1@a.example")) do kinds[#kinds + 1] = e.kind; end
		assert.same({ "online", "silent", "offline", "online", "flapping" }, { table.unpack(kinds, 1, 5) });
		for _, e in ipairs(events_of(msgs, "flap-1@a.example")) do
			if e.kind == "silent" then assert.equal("quiet", e.body.data.rule); assert.equal(0.3, e.body.data.after); end
			if e.kind == "flapping" then assert.equal("flap", e.body.data.rule); assert.equal(3, e.body.data.transitions); end
		end
		assert(wait_for(function ()
			local s = retained("brisk/a.example/flap-1/state")["brisk/a.example/flap-1/state"];
			return s and s.flapping == true and s.state == "online";
		end), "the state says flapping");
		sub:stop();
		c:close();
	end);

	it("delivers every acknowledged event after the broker restarts under load, in order", function ()
		local sub = broker:subscribe("brisk/b.example/+/events", { id = "spec-live-restart" });
		local c = b:connect("flood-1", "pw", "r");
		c:send(st.presence():text_tag("status", "0"));
		for i = 1, EVENTS do
			c:send(st.presence():text_tag("status", tostring(i)));
			if i == EVENTS // 3 then broker:stop(); end
			if i == 2 * EVENTS // 3 then broker:start(); end
			if i % 10 == 0 then socket.sleep(0.005); end
		end
		local msgs = sub:wait(function (m) return #events_of(m, "flood-1@b.example") >= EVENTS + 1; end, 20);
		assert.truthy(msgs, "every event arrived; got " .. #events_of(sub:messages(), "flood-1@b.example")
			.. " of " .. (EVENTS + 1) .. "\n" .. b:log_text():gsub("[^\n]*debug[^\n]*\n", ""):sub(-3000));
		local evs = events_of(msgs, "flood-1@b.example");
		assert.equal("online", evs[1].kind);
		for i = 1, EVENTS do assert.equal(tostring(i), evs[i + 1].status); end
		assert(wait_for(function ()
			local s = retained("brisk/b.example/flood-1/state")["brisk/b.example/flood-1/state"];
			return s and s.status == tostring(EVENTS);
		end));
		assert.matches("MQTT: connected to 127%.0%.0%.1 port %d+ as brisk%-b%.example %(MQTT 5, resumed session%)", b:log_text());
		local m = stats(b).mqtt;
		assert.equal(0, m.dropped);
		sub:stop();
		c:close();
		assert.same({}, b:errors());
	end);

	it("keeps memory bounded while the broker is down, and the latest state of each device", function ()
		-- Server A keeps at most 40 events (queue_size) while it cannot send.
		local c = a:connect("flood-1", "pw", "r");
		c:send(st.presence():text_tag("status", "0"));
		assert(wait_for(function () return stats(a).mqtt.queued == 0; end));
		local before = stats(a).mqtt;
		broker:stop();
		assert(wait_for(function () return not stats(a).mqtt.connected; end));
		for i = 1, EVENTS * 2 do
			c:send(st.presence():text_tag("status", tostring(i)));
			if i % 20 == 0 then socket.sleep(0.002); end
		end
		local m;
		assert(wait_for(function () m = stats(a).mqtt; return m.dropped - before.dropped >= EVENTS * 2 - 40; end),
			"events beyond queue_size are dropped");
		local om;
		assert(wait_for(function ()
			om = metrics(a);
			return om.mqtt_connected == 0 and (om.mqtt_dropped_total or 0) >= EVENTS * 2 - 40;
		end), "the metrics say so");
		assert.is_true(om.mqtt_queued <= 40 + 1 + 100);  -- events, one state, the window
		assert.is_true(m.queued - m.queued_states <= 40);
		assert.is_true(m.queued_states <= 1);
		assert.is_true(m.memory < before.memory + 40 * 1024, "memory " .. m.memory);
		broker:start();
		assert(wait_for(function ()
			local s = retained("brisk/a.example/flood-1/state")["brisk/a.example/flood-1/state"];
			return s and s.status == tostring(EVENTS * 2);
		end), "the latest state arrives");
		assert(wait_for(function () local x = stats(a).mqtt; return x.queued == 0 and x.inflight == 0; end));
		assert(wait_for(function () om = metrics(a); return om.mqtt_connected == 1 and om.mqtt_queued == 0; end));
		assert.is_true(om.mqtt_sent_total > 0);
		c:close();
	end);

	it("leaves its will when a server is killed, and corrects stale state when it is back", function ()
		local c = b:connect("dev-2", "pw", "r");
		c:send(st.presence());
		local g = b:connect("dev-gone", "pw", "r");
		g:send(st.presence());
		assert(wait_for(function ()
			local s = retained("brisk/b.example/+/state");
			return s["brisk/b.example/dev-2/state"] and s["brisk/b.example/dev-2/state"].state == "online"
				and s["brisk/b.example/dev-gone/state"];
		end));
		-- A state nothing on server B ever published, for an account that does not exist.
		os.execute(("mosquitto_pub -p %d -u prosody -P s3cret -q 1 -r -t brisk/b.example/stranger/state -m '{\"state\":\"online\"}'")
			:format(broker.plain_port));
		g:close();
		delete_account(b, "dev-gone");
		assert(wait_for(function () return retained("brisk/b.example/dev-gone/state")["brisk/b.example/dev-gone/state"] == nil; end),
			"a deleted account's state is cleared");
		b:kill();
		assert(wait_for(function () return retained("brisk/b.example/$server")["brisk/b.example/$server"] == "offline"; end, 10),
			"the will says the server is gone");
		-- Still "online": as far as the broker knows.
		assert.equal("online", retained("brisk/b.example/dev-2/state")["brisk/b.example/dev-2/state"].state);
		b:restart();
		assert(wait_for(function ()
			local s = retained("brisk/b.example/#");
			return s["brisk/b.example/$server"] == "online" and s["brisk/b.example/dev-2/state"].state == "offline"
				and s["brisk/b.example/stranger/state"] == nil;
		end), "stale state corrected after the restart");
		assert.matches("checked %d+ retained device state%(s%): 1 no longer tracked %(cleared%), %d+ stale %(now offline%)", b:log_text());
		assert.same({}, b:errors());
	end);
end);
