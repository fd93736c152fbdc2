-- Live specs of mod_brisk_iot: a real Prosody, real device clients, a real
-- local HTTP receiver that checks webhook signatures on its own.
local prosody = require "spec.helpers.prosody";
local sh = prosody.sh;
local write = prosody.write_file;
local receiver = require "spec.helpers.http_receiver";
local st = require "util.stanza";
local json = require "util.json";
local socket = require "socket";

local SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

-- A plugin that forwards every iot/* event to observer@localhost, so the
-- spec sees exactly what other modules see.
local OBSERVER = [[
local json = require "util.json";
local st = require "util.stanza";
for _, kind in ipairs{ "online", "offline", "state", "flapping", "silent" } do
	module:hook("iot/" .. kind, function (ev)
		local copy = {};
		for k, v in pairs(ev) do
			if k == "stanza" then copy.stanza_name = v.name; copy.stanza_xml = tostring(v);
			else copy[k] = v; end
		end
		module:send(st.message({ from = module.host, to = "observer@" .. module.host, type = "normal" })
			:text_tag("body", json.encode(copy)));
	end);
end
]];



describe("mod_brisk_iot on a live server", function ()
	local srv, hook, plugdir, observer, ops;

	setup(function ()
		hook = receiver.start{ secret = SECRET };
		plugdir = sh("mktemp -d /tmp/brisk-iot-plug-XXXXXX"):gsub("%s+$", "");
		write(plugdir .. "/mod_iot_observer.lua", OBSERVER);
		srv = prosody.start{
			plugin_paths = { plugdir };
			-- A local PubSub service, for the pubsub target.
			prepare = function (s)
				local f = assert(io.open(s.config_path, "a"));
				f:write('\nComponent "pubsub.localhost" "pubsub"\n');
				f:close();
			end;
			host_modules = { "brisk_iot", "iot_observer" };
			accounts = { ["freezer-1"] = "pw", ["freezer-2"] = "pw", ["sensor-1"] = "pw",
				["sensor-2"] = "pw", observer = "pw", ops = "pw", ["burst-1"] = "pw", ["flappy-1"] = "pw" };
			host_config = {
				iot_devices = { "freezer-*@localhost", "sensor-*@localhost", "burst-*@localhost", "flappy-*@localhost" };
				iot_tick_interval = 0.05;
				iot_http_listing = true;
				iot_pubsub_service = "pubsub.localhost";
				iot_http_token = "sekrit";
				iot_webhook_backoff = 0.2;
				iot_webhook_max_backoff = 0.4;
				iot_webhook_retries = 100;
				iot_webhook_queue_size = 3;
				iot_webhook_timeout = 2;
				iot_rules = {
					{ name = "freezer-offline", match = "freezer-*@localhost", on = "offline", after = 1,
						webhook = hook.url, secret = SECRET },
					{ name = "sensor-changes", match = "sensor-*@localhost", on = "state",
						webhook = hook.url, secret = SECRET },
					{ name = "low-battery", match = "*@localhost", on = "state", status = "battery=(%d+)",
						below = 20, notify = "ops@localhost" },
					{ name = "burst", match = "burst-*@localhost", on = "online",
						webhook = hook.url .. "/burst", secret = SECRET },
					{ name = "to-pubsub", match = "sensor-*@localhost", on = "online", pubsub = "iot-events" },
					{ name = "quiet", match = "freezer-2@localhost", on = "silent", after = 1, notify = "ops@localhost" },
					{ name = "flapping", match = "flappy-*@localhost", on = "flapping", transitions = 4, within = 30, log = "warn",
						notify = "ops@localhost" },
				};
			};
		};
		observer = srv:connect("observer", "pw", "obs");
		observer:send(st.presence());
		ops = srv:connect("ops", "pw", "ops");
		ops:send(st.presence());
		-- Round trips, so that both are available before any device acts.
		assert(ops:iq(st.iq({ type = "get", to = "localhost", id = "sync" }):tag("ping", { xmlns = "urn:xmpp:ping" })));
		assert(observer:iq(st.iq({ type = "get", to = "localhost", id = "sync" }):tag("ping", { xmlns = "urn:xmpp:ping" })));
	end);

	teardown(function ()
		if srv then srv:stop(); end
		if hook then hook:stop(); end
		if plugdir then os.execute("rm -rf " .. plugdir); end
	end);

	local function next_event(pred, timeout)
		local m = observer:receive(timeout or 5, function (s)
			if s.name ~= "message" then return false; end
			local ev = json.decode(s:get_child_text("body") or "");
			return ev and (not pred or pred(ev));
		end);
		return m and json.decode(m:get_child_text("body"));
	end

	it("fires iot/online, iot/state and iot/offline with the documented event table", function ()
		local c = srv:connect("sensor-1", "pw", "lab");
		c:send(st.presence():text_tag("show", "away"):text_tag("status", "battery=80"):text_tag("priority", "5"));
		local ev = next_event(function (e) return e.jid == "sensor-1@localhost"; end);
		assert.equal("online", ev.kind);
		assert.equal("sensor-1", ev.username);
		assert.equal("localhost", ev.host);
		assert.equal("lab", ev.resource);
		assert.equal("online", ev.state);
		assert.equal("unknown", ev.previous);
		assert.equal("away", ev.show);
		assert.equal("battery=80", ev.status);
		assert.equal(5, ev.priority);
		assert.equal("presence", ev.stanza_name);
		assert.equal(0, ev.after);
		assert.is_number(ev.time);
		c:send(st.presence():text_tag("show", "away"):text_tag("status", "battery=79"):text_tag("priority", "5"));
		ev = next_event(function (e) return e.jid == "sensor-1@localhost"; end);
		assert.equal("state", ev.kind);
		assert.equal("battery=79", ev.status);
		assert.equal("away", ev.previous_show);
		assert.same({ "sensor-changes" }, ev.rules);
		assert.equal("sensor-changes", ev.rule);
		-- An extension element is state too.
		c:send(st.presence():text_tag("show", "away"):text_tag("status", "battery=79"):text_tag("priority", "5")
			:tag("reading", { xmlns = "urn:example:sensor", t = "4.5" }):up());
		ev = next_event(function (e) return e.jid == "sensor-1@localhost"; end);
		assert.equal("state", ev.kind);
		-- The two state changes reached the webhook, signed.
		local reqs = hook:wait(2, 5);
		local mine = {};
		for _, r in ipairs(reqs) do if r.data and r.data.data.jid == "sensor-1@localhost" then mine[#mine + 1] = r; end end
		assert.equal(2, #mine);
		for _, r in ipairs(mine) do
			assert.is_true(r.valid, "signature must verify");
			assert.equal("iot.state", r.data.type);
			assert.equal("sensor-changes", r.data.data.rule);
			assert.matches("^msg_%x+$", r.headers["webhook-id"]);
			assert.is_true(math.abs(tonumber(r.headers["webhook-timestamp"]) - os.time()) < 10);
			assert.equal("application/json", r.headers["content-type"]);
		end
		c:send(st.presence({ type = "unavailable" }));
		ev = next_event(function (e) return e.jid == "sensor-1@localhost"; end);
		assert.equal("offline", ev.kind);
		assert.equal("online", ev.previous);
		assert.equal("offline", ev.state);
		c:close();
	end);

	it("sends a signed webhook when a device stays offline after its TCP connection is killed", function ()
		local before = #hook:requests();
		local c = srv:connect("freezer-1", "pw", "f");
		c:send(st.presence());
		assert.equal("online", next_event(function (e) return e.jid == "freezer-1@localhost"; end).kind);
		local t0 = socket.gettime();
		c:kill(); -- no </stream>, no unavailable presence
		local ev = next_event(function (e) return e.jid == "freezer-1@localhost"; end);
		assert.equal("offline", ev.kind);
		assert.equal(0, ev.after);
		-- The debounced one, a second later, is the rule's.
		ev = next_event(function (e) return e.jid == "freezer-1@localhost"; end, 5);
		assert.equal("offline", ev.kind);
		assert.equal(1, ev.after);
		assert.same({ "freezer-offline" }, ev.rules);
		local reqs = hook:wait(before + 1, 5);
		local r = reqs[#reqs];
		assert.is_true(r.valid);
		assert.equal("iot.offline", r.data.type);
		assert.equal("freezer-1@localhost", r.data.data.jid);
		assert.equal("freezer-offline", r.data.data.rule);
		assert.equal(1, r.data.data.after);
		assert.is_true(r.time - t0 >= 0.9, "not before the debounce");
	end);

	it("does not fire a debounced offline when the device comes back in time", function ()
		local c = srv:connect("freezer-2", "pw", "f");
		c:send(st.presence());
		next_event(function (e) return e.jid == "freezer-2@localhost"; end);
		local before = #hook:requests();
		c:send(st.presence({ type = "unavailable" }));
		c:send(st.presence());
		assert.equal("offline", next_event(function (e) return e.jid == "freezer-2@localhost"; end).kind);
		assert.equal("online", next_event(function (e) return e.jid == "freezer-2@localhost"; end).kind);
		socket.sleep(1.5);
		assert.equal(before, #hook:requests());
		c:close();
		next_event(function (e) return e.jid == "freezer-2@localhost" and e.after > 0; end, 3);
	end);

	it("follows the leading resource and goes offline only when the last one leaves", function ()
		local a = srv:connect("sensor-2", "pw", "a");
		a:send(st.presence():text_tag("priority", "1"):text_tag("status", "from a"));
		assert.equal("online", next_event(function (e) return e.jid == "sensor-2@localhost"; end).kind);
		local b = srv:connect("sensor-2", "pw", "b");
		b:send(st.presence():text_tag("priority", "10"):text_tag("status", "from b"));
		local ev = next_event(function (e) return e.jid == "sensor-2@localhost"; end);
		assert.equal("state", ev.kind);
		assert.equal("b", ev.resource);
		assert.equal("from b", ev.status);
		assert.equal(10, ev.priority);
		-- A lower-priority resource changing is not the device's state.
		a:send(st.presence():text_tag("priority", "1"):text_tag("status", "a again"));
		-- A round trip on a first: two connections have no order between them.
		assert(a:iq(st.iq({ type = "get", to = "localhost", id = "ping1" }):tag("ping", { xmlns = "urn:xmpp:ping" })));
		b:kill();
		ev = next_event(function (e) return e.jid == "sensor-2@localhost"; end);
		assert.equal("state", ev.kind);
		assert.equal("a", ev.resource);
		assert.equal("a again", ev.status);
		-- A resource conflict: the same resource connects again.
		local a2 = srv:connect("sensor-2", "pw", "a");
		a2:send(st.presence():text_tag("priority", "1"):text_tag("status", "a2"));
		local kinds = {};
		for _ = 1, 2 do
			ev = next_event(function (e) return e.jid == "sensor-2@localhost"; end);
			kinds[#kinds + 1] = ev.kind;
		end
		assert.same({ "offline", "online" }, kinds);
		a2:kill();
		assert.equal("offline", next_event(function (e) return e.jid == "sensor-2@localhost"; end).kind);
		a:kill();
	end);

	it("notifies on low battery once per crossing", function ()
		local c = srv:connect("sensor-1", "pw", "bat");
		c:send(st.presence():text_tag("status", "battery=50"));
		c:send(st.presence():text_tag("status", "battery=15"));
		c:send(st.presence():text_tag("status", "battery=14"));
		c:send(st.presence():text_tag("status", "battery=60"));
		c:send(st.presence():text_tag("status", "battery=10"));
		local msgs = {};
		while true do
			local m = ops:receive(2, function (s) return s.name == "message" and (s:get_child_text("body") or ""):find("low%-battery"); end);
			if not m then break; end
			msgs[#msgs + 1] = m:get_child_text("body");
		end
		assert.equal(2, #msgs);
		assert.matches("battery=15", msgs[1]);
		assert.matches("battery=10", msgs[2]);
		c:close();
	end);

	it("retries after 500 with the same id and a fresh signature", function ()
		hook:fail(500, 2);
		local before = #hook:requests();
		local c = srv:connect("sensor-1", "pw", "retry");
		c:send(st.presence():text_tag("status", "retry-0")); -- online: no webhook rule
		c:send(st.presence():text_tag("status", "retry-1"));
		c:send(st.presence():text_tag("status", "retry-2"));
		local reqs = hook:wait(before + 4, 10);
		local got = {};
		for i = before + 1, #reqs do got[#got + 1] = reqs[i]; end
		assert.equal(4, #got);
		assert.equal(500, got[1].code);
		assert.equal(500, got[2].code);
		assert.equal(200, got[3].code);
		assert.equal(200, got[4].code);
		-- The device's messages stay in order: the first was retried until
		-- it went through, only then the second.
		assert.equal(got[1].headers["webhook-id"], got[2].headers["webhook-id"]);
		assert.equal(got[1].headers["webhook-id"], got[3].headers["webhook-id"]);
		assert.not_equal(got[3].headers["webhook-id"], got[4].headers["webhook-id"]);
		for _, r in ipairs(got) do assert.is_true(r.valid); end
		c:close();
	end);

	it("keeps the queue bound while the endpoint is down, and delivers after", function ()
		local function dropped()
			return tonumber(tostring(srv:prosodyctl("shell", "iot:stats('localhost')")):match("dropped (%d+)"));
		end
		local dropped_before = assert(dropped());
		hook:down();
		local before = #hook:requests();
		-- 8 online events for one device while the receiver is down; the
		-- queue holds 3, so 5 are dropped (the oldest).
		for i = 1, 8 do
			local c = srv:connect("burst-1", "pw", "b");
			c:send(st.presence():text_tag("status", "n" .. i));
			assert.equal("online", next_event(function (e) return e.jid == "burst-1@localhost" and e.kind == "online"; end).kind);
			c:close();
		end
		hook:up();
		hook:wait(before + 3, 10);
		socket.sleep(1);
		local reqs = hook:requests();
		local got = {};
		for i = before + 1, #reqs do
			if reqs[i].path == "/hook/burst" then got[#got + 1] = reqs[i]; end
		end
		-- Count messages, not attempts (an attempt may meet a 5xx).
		local ids, order = {}, {};
		for _, r in ipairs(got) do
			assert.is_true(r.valid);
			local id = r.headers["webhook-id"];
			if not ids[id] then ids[id] = true; order[#order + 1] = r.data.data.status; end
		end
		-- The newest three survive, in order.
		assert.same({ "n6", "n7", "n8" }, order);
		assert.equal(dropped_before + 5, dropped());
	end);

	it("detects flapping and lists devices in prosodyctl shell", function ()
		for _ = 1, 2 do
			local c = srv:connect("flappy-1", "pw", "flap");
			c:send(st.presence());
			c:close();
		end
		local m = ops:receive(5, function (s) return s.name == "message" and (s:get_child_text("body") or ""):find("%[flapping%]"); end);
		assert.truthy(m);
		assert.matches("flappy%-1@localhost is flapping %(4 transitions within 30s%)", m:get_child_text("body"));
		local out = srv:prosodyctl("shell", "iot:devices()");
		assert.matches("freezer%-1@localhost%s+offline", tostring(out));
		assert.matches("flappy%-1@localhost%s+offline%s+%d+s flapping", tostring(out));
		assert.not_matches("observer@", tostring(out));
		assert.matches("device%(s%)", tostring(out));
		assert.matches("flapping", srv:log_text());
	end);

	it("has its shell commands registered, in both shell syntaxes on Prosody 13", function ()
		assert.not_matches("Ignoring command", srv:log_text());
		local out = tostring(srv:prosodyctl("shell", "iot:stats()"));
		assert.matches("localhost: %d+ devices, %d+ online", out);
		assert.matches("1 host%(s%)", out);
		out = tostring(srv:prosodyctl("shell", "iot:devices('nosuchhost')"));
		assert.matches("mod_brisk_iot is not loaded on nosuchhost", out);
		if srv.version == "13" then
			-- 13's command-line form and its help know the section.
			out = tostring(srv:prosodyctl("shell", "iot", "devices", "localhost", "freezer-*@localhost"));
			assert.matches("freezer%-1@localhost%s+offline", out);
			assert.not_matches("flappy", out);
			out = tostring(srv:prosodyctl("shell", "help iot"));
			assert.matches("iot devices", out);
			assert.matches("iot stats", out);
		end
	end);

	it("publishes to PubSub", function ()
		local c = srv:connect("sensor-1", "pw", "ps");
		c:send(st.presence():text_tag("status", "to pubsub"));
		assert(next_event(function (e) return e.jid == "sensor-1@localhost" and e.kind == "online" and e.status == "to pubsub"; end));
		local reply = ops:iq(st.iq({ type = "get", to = "pubsub.localhost", id = "items1" })
			:tag("pubsub", { xmlns = "http://jabber.org/protocol/pubsub" }):tag("items", { node = "iot-events" }));
		assert.equal("result", reply.attr.type);
		local found;
		for item in reply:get_child("pubsub", "http://jabber.org/protocol/pubsub"):get_child("items"):childtags("item") do
			local ev = item:get_child("event", "urn:brisk:iot:0");
			if ev and ev.attr.jid == "sensor-1@localhost" and ev:get_child_text("status") == "to pubsub" then found = ev; end
		end
		assert.truthy(found, tostring(reply) .. "\n" .. (srv:log_text():match("[^\n]*publish[^\n]*") or ""));
		assert.equal("online", found.attr.kind);
		assert.equal("to-pubsub", found.attr.rule);
		c:close();
	end);

	it("reports a silent device once, and activity resets silence", function ()
		local function quiet(t)
			return ops:receive(t, function (s) return s.name == "message" and (s:get_child_text("body") or ""):find("%[quiet%]"); end);
		end
		-- freezer-2 was silent earlier in this file: forget those reports.
		while quiet(0.05) do end
		local c = srv:connect("freezer-2", "pw", "quiet");
		c:send(st.presence());
		-- Activity (pings) every 0.4 s for 1.6 s keeps it from going silent.
		for i = 1, 4 do
			socket.sleep(0.4);
			assert(c:iq(st.iq({ type = "get", to = "localhost", id = "keep" .. i }):tag("ping", { xmlns = "urn:xmpp:ping" })));
		end
		assert.is_nil(quiet(0.1));
		local m = quiet(3);
		assert.truthy(m);
		assert.matches("freezer%-2@localhost is silent", m:get_child_text("body"));
		assert.is_nil(quiet(1.2));
		c:close();
	end);

	it("lists devices as JSON over HTTP, with a bearer token", function ()
		local http = require "socket.http";
		local ltn12 = require "ltn12";
		local function get(path, token)
			local out = {};
			-- Prosody routes HTTP by Host: the VirtualHost's name.
			local headers = { Host = "localhost" };
			if token then headers.Authorization = "Bearer " .. token; end
			local _, code = http.request{
				url = ("http://127.0.0.1:%d%s"):format(srv.http_port, path);
				headers = headers;
				sink = ltn12.sink.table(out);
			};
			return code, table.concat(out);
		end
		assert.equal(401, (get("/iot/devices")));
		assert.equal(401, (get("/iot/devices", "wrong")));
		local code, body = get("/iot/devices", "sekrit");
		assert.equal(200, code);
		local doc = json.decode(body);
		assert.equal("localhost", doc.host);
		local byjid = {};
		for _, d in ipairs(doc.devices) do byjid[d.jid] = d; end
		assert.equal("offline", byjid["freezer-1@localhost"].state);
		assert.is_nil(byjid["observer@localhost"]);
		code, body = get("/iot/devices?match=freezer-*%40localhost", "sekrit");
		assert.equal(200, code);
		doc = json.decode(body);
		assert.is_true(#doc.devices > 0);
		for _, d in ipairs(doc.devices) do assert.matches("^freezer%-", d.jid); end
		assert.equal(400, (get("/iot/devices?match=a/b", "sekrit")));
	end);

	it("picks up devices already online when the module is reloaded", function ()
		local c = srv:connect("sensor-1", "pw", "stay");
		c:send(st.presence():text_tag("status", "before reload"));
		assert(next_event(function (e) return e.jid == "sensor-1@localhost" and e.status == "before reload"; end));
		local function online_firings()
			local n = 0;
			for _ in srv:log_text():gmatch('Rule "to%-pubsub" fired: sensor%-1@localhost is online') do n = n + 1; end
			return n;
		end
		local before = online_firings();
		local out = tostring(srv:prosodyctl("shell", "module:reload('brisk_iot', 'localhost')"));
		assert.matches("Module reloaded", out);
		out = tostring(srv:prosodyctl("shell", "iot:devices('localhost', 'sensor-1@*')"));
		assert.matches("sensor%-1@localhost%s+online", out);
		c:close();
		-- The reloaded engine knew the device was online: closing it is a transition.
		local ev = next_event(function (e) return e.jid == "sensor-1@localhost" and e.resource == "stay" and e.kind == "offline"; end);
		assert.truthy(ev);
		assert.equal("online", ev.previous);
		-- And the reload itself announced nothing (no online rule fired).
		assert.equal(before, online_firings());
	end);

	it("logs nothing at error level", function ()
		assert.same({}, srv:errors());
	end);
end);

describe("mod_brisk_iot with invalid rules", function ()
	it("fails to load with a message naming the rule and the problem", function ()
		local srv = prosody.start{
			host_modules = { "brisk_iot" };
			host_config = { iot_rules = {
				{ name = "fine", on = "offline", log = true },
				{ name = "broken", on = "gone", log = true },
			} };
		};
		local log = srv:log_text();
		srv:stop();
		assert.matches("rule 'broken': unknown event 'gone'", log);
		assert.not_matches("Tracking devices", log);
	end);
end);
