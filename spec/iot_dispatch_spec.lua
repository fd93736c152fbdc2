-- What mod_brisk_iot does with an engine event (brisk.iot.dispatch and the
-- sinks of brisk.iot.sinks), with every side effect injected and recorded:
-- no server. The live spec (iot_live_spec.lua) does the same end to end.
local dispatch = require "brisk.iot.dispatch";
local config = require "brisk.iot.config";
local scripts = require "brisk.iot.scripts";
local sinks = require "brisk.iot.sinks";
local st = require "util.stanza";
local json = require "util.json";

local SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

-- The webhook body as mod_brisk_iot built it before it was split into
-- libraries, character for character: the reference for byte-identical.
local function iso(t)
	local secs = math.floor(t);
	return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. (".%03dZ"):format(math.floor((t - secs) * 1000));
end
local function reference_body(ev, rule)
	return json.encode({
		type = "iot." .. ev.kind;
		timestamp = iso(ev.time);
		data = {
			rule = rule.name;
			jid = ev.jid;
			resource = ev.resource;
			state = ev.state;
			previous = ev.previous;
			show = ev.show;
			status = ev.status;
			priority = ev.priority;
			duration = ev.duration;
			after = ev.after;
			since = iso(ev.since);
			time = iso(ev.time);
			transitions = ev.transitions;
			within = ev.within;
		};
	});
end

-- A dispatcher over compiled rules, with fakes that record every effect.
local function harness(rule_list, opts)
	opts = opts or {};
	local h = { fired = {}, counted = {}, logs = {}, sent = {}, hooks = {}, published = {}, hook_errors = 0 };
	local c = config.compile({ rules = rule_list, pubsub_service = "pubsub.h" }, { host = "h", now = opts.now or 0 });
	h.engine = c.engine;
	h.service = opts.service;
	h.fx = {
		fire = function (kind, ev) h.fired[#h.fired + 1] = { kind = kind, ev = ev }; end;
		count = function (kind) h.counted[#h.counted + 1] = kind; end;
		hook_error = function () h.hook_errors = h.hook_errors + 1; end;
		log = function (level, fmt, ...) h.logs[#h.logs + 1] = level .. " " .. fmt:format(...); end;
		presence_of = function (jid) return h.now_session, h.now_stanza, jid; end;
		send_message = function (to, text) h.sent[#h.sent + 1] = to .. " " .. text; end;
		webhook = function (url, key, device, body)
			h.hooks[#h.hooks + 1] = { url = url, key = key, device = device, body = body };
		end;
		pubsub = function (service) h.pubsub_asked = service; return h.service; end;
	};
	h.d = dispatch.new{ rules = c.rules, fx = h.fx };
	return h;
end

local function logs_matching(h, pattern)
	local out = {};
	for _, l in ipairs(h.logs) do if l:find(pattern) then out[#out + 1] = l; end end
	return out;
end

describe("brisk.iot.dispatch", function ()
	it("completes an event from the presence that caused it and fires it", function ()
		local h = harness{ { name = "on", on = "online", log = true } };
		local session = { resource = "lab" };
		local pres = st.presence():text_tag("show", "away"):text_tag("status", "battery=80"):text_tag("priority", "5");
		h.engine:update("sensor-1@h", 1000, true, "away", "battery=80", 5);
		h.d:drain(h.engine, session, pres);
		assert.equal(1, #h.fired);
		local ev = h.fired[1].ev;
		assert.equal("online", h.fired[1].kind);
		assert.same({ "online" }, h.counted);
		assert.equal("sensor-1", ev.username);
		assert.equal("h", ev.host);
		assert.equal("lab", ev.resource);
		assert.equal("online", ev.state);
		assert.equal("unknown", ev.previous);
		assert.equal("away", ev.show);
		assert.equal("battery=80", ev.status);
		assert.equal(5, ev.priority);
		assert.equal(pres, ev.stanza);
		assert.same({ "on" }, ev.rules);
		assert.equal("on", ev.rule);
		assert.is_nil(ev.show_class);
		assert.is_nil(ev.previous_show_class);
		assert.same({ "debug Rule \"on\" fired: sensor-1@h is online (was unknown for 0s) show=away status=battery=80",
			"info Rule \"on\": sensor-1@h is online (was unknown for 0s) show=away status=battery=80" }, h.logs);
	end);

	it("takes a timer event's details from the device's presence now, and an offline one's from nothing", function ()
		local h = harness{ { name = "on10", on = "online", after = 10, log = "warn" } };
		h.engine:update("d@h", 0, true); h.engine:clear();
		h.now_session = { resource = "r" };
		h.now_stanza = st.presence():text_tag("status", "now");
		h.engine:tick(10);
		h.d:drain_timers(h.engine);
		local ev = h.fired[1].ev;
		assert.equal("r", ev.resource);
		assert.equal("now", ev.status);
		assert.equal("available", ev.show);
		assert.equal(10, ev.after);
		assert.same({ "on10" }, ev.rules);
		assert.same({ "warn Rule \"on10\": d@h is online (was offline for 10s) [for 10s] show=available status=now" },
			logs_matching(h, "^warn"));
		h.engine:update("d@h", 20, false);
		h.d:drain(h.engine, { resource = "gone" }, nil);
		ev = h.fired[2].ev;
		assert.equal("offline", ev.kind);
		assert.equal("gone", ev.resource);
		assert.equal("unavailable", ev.show);
		assert.is_nil(ev.status);
		assert.is_nil(ev.priority);
		assert.equal("available", ev.previous_show);
		assert.same({}, ev.rules);
	end);

	it("posts the same webhook body as before, byte for byte", function ()
		local h = harness({ { name = "hook", on = "state", webhook = "http://127.0.0.1:9/x", secret = SECRET } },
			{ now = 1764078745 });
		h.engine:update("s@h", 1764078745.25, true, nil, "a", 1);
		h.d:drain(h.engine, { resource = "r" }, st.presence():text_tag("status", "a"));
		h.engine:update("s@h", 1764078750.5, true, "dnd", "b", 2);
		h.d:drain(h.engine, { resource = "r" }, st.presence():text_tag("show", "dnd"):text_tag("status", "b"));
		assert.equal(1, #h.hooks);
		local hook = h.hooks[1];
		assert.equal("http://127.0.0.1:9/x", hook.url);
		assert.equal(24, #hook.key);
		assert.equal("s@h", hook.device);
		local ev = h.fired[2].ev;
		assert.equal(reference_body(ev, { name = "hook" }), hook.body);
		local doc = json.decode(hook.body);
		assert.equal("iot.state", doc.type);
		assert.equal("2025-11-25T13:52:30.500Z", doc.timestamp);
		assert.equal("dnd", doc.data.show);
		assert.equal("b", doc.data.status);
		assert.equal(2, doc.data.priority);
		assert.equal("2025-11-25T13:52:25.250Z", doc.data.since);
	end);

	it("notifies every JID of a rule, and runs rules on despite one failing", function ()
		local h = harness{
			{ name = "page", on = "offline", notify = { "ops@h", "Boss@H" } },
			{ name = "also", on = "offline", log = "error" },
		};
		h.engine:update("f@h", 0, true); h.engine:clear();
		h.engine:update("f@h", 5, false);
		h.d:drain(h.engine, { resource = "x" }, nil);
		assert.same({ "ops@h [page] f@h is offline (was online for 5s) show=unavailable",
			"boss@h [page] f@h is offline (was online for 5s) show=unavailable" }, h.sent);
		h.fx.send_message = function () error("no route"); end;
		h.engine:update("f@h", 6, true); h.engine:update("f@h", 7, false);
		h.d:drain(h.engine, { resource = "x" }, nil);
		assert.equal(1, #logs_matching(h, "^error Rule \"page\" failed: .*no route"));
		assert.equal(2, #logs_matching(h, "^error Rule \"also\": f@h is offline"));
	end);

	it("publishes to PubSub, creating the node when it is missing", function ()
		local calls = {};
		local service = {
			publish = function (_, node, actor, id, item)
				calls[#calls + 1] = "publish " .. node .. " " .. tostring(actor) .. " " .. id;
				if #calls == 1 then return nil, "item-not-found"; end
				calls.item = tostring(item);
				return true;
			end;
			create = function (_, node, actor) calls[#calls + 1] = "create " .. node .. " " .. tostring(actor); end;
		};
		local h = harness({ { name = "ps", on = "online", pubsub = "iot-events" } }, { service = service, now = 1764078745 });
		h.engine:update("p@h", 1764078745.125, true, nil, "hi");
		h.d:drain(h.engine, { resource = "r" }, st.presence():text_tag("status", "hi"));
		assert.equal("pubsub.h", h.pubsub_asked);
		assert.same({ "publish iot-events true online-p@h-1764078745125", "create iot-events true",
			"publish iot-events true online-p@h-1764078745125" }, { calls[1], calls[2], calls[3] });
		-- The item as mod_brisk_iot built it before the split.
		local ev = h.fired[1].ev;
		local id = ("%s-%s-%d"):format(ev.kind, ev.jid, math.floor(ev.time * 1000));
		local reference = st.stanza("item", { id = id, xmlns = "http://jabber.org/protocol/pubsub" })
			:tag("event", { xmlns = "urn:brisk:iot:0", kind = ev.kind, jid = ev.jid, state = ev.state,
				time = iso(ev.time), rule = "ps" })
				:text_tag("status", ev.status):up();
		assert.equal(tostring(reference), calls.item);
		assert.matches("time='2025%-11%-25T13:52:25%.125Z'", calls.item);
		assert.matches("<status>hi</status></event></item>$", calls.item);
		-- No service, or a failing one: a warning, as before.
		h.service = nil;
		h.engine:update("p@h", 1764078746, false); h.engine:update("p@h", 1764078747, true);
		h.d:drain(h.engine, { resource = "r" }, st.presence());
		assert.same({ "warn Rule \"ps\": no PubSub service on pubsub.h" }, logs_matching(h, "^warn"));
		h.service = { publish = function () return nil, "forbidden"; end };
		h.engine:update("p@h", 1764078748, false); h.engine:update("p@h", 1764078749, true);
		h.d:drain(h.engine, { resource = "r" }, st.presence());
		assert.equal("warn Rule \"ps\": publish to iot-events failed: forbidden", logs_matching(h, "^warn")[2]);
	end);

	it("hands hook scripts a copy with the presence as XML, and contains their errors", function ()
		local h = harness{};
		local seen = {};
		local files = { ["/s/a.lua"] = [[
			on("state", function (ev) record(ev) end)
			on("*", "bad@*", function (ev) error("boom") end)
		]] };
		local set = scripts.load({ "/s/a.lua" }, {
			log = function () end, config = {}, now = function () return 0; end,
			read_file = function (p) return files[p]; end,
		});
		set.handlers.state[1].fn = function (ev) seen[#seen + 1] = ev; end;
		h.d:set_scripts(set);
		local pres = st.presence():text_tag("status", "x");
		h.engine:update("bad@h", 0, true); h.engine:clear();
		h.engine:update("bad@h", 1, true, nil, "x");
		h.d:drain(h.engine, { resource = "r" }, pres);
		assert.equal(1, #seen);
		assert.is_nil(seen[1].stanza);
		assert.equal(tostring(pres), seen[1].xml);
		assert.equal("state", seen[1].kind);
		assert.equal(1, h.hook_errors);
		assert.equal(1, #logs_matching(h, "^error Hook script a.lua failed on state for bad@h: .*boom"));
		-- The event every other module sees still has its stanza.
		assert.equal(pres, h.fired[1].ev.stanza);
	end);

	it("dispatches timer events one by one, logging one that fails", function ()
		local h = harness{ { name = "q", on = "silent", after = 1, log = true } };
		h.engine:update("a@h", 0, true); h.engine:update("b@h", 0, true); h.engine:clear();
		local n = 0;
		h.fx.fire = function (_, ev) n = n + 1; if ev.jid == "a@h" then error("listener broke"); end end;
		assert.equal(2, h.engine:tick(5));
		h.d:drain_timers(h.engine);
		assert.equal(2, n);
		assert.equal(1, #logs_matching(h, "^error Dispatching silent for a@h failed: .*listener broke"));
		assert.equal(1, #logs_matching(h, "^info Rule \"q\": b@h is silent"));
	end);

	it("reaches every target through a sink that owns its fields", function ()
		local owned = {};
		for _, sink in ipairs(sinks.list) do
			assert.is_function(sink.check);
			assert.is_function(sink.run);
			for _, f in ipairs(sink.fields) do
				assert.is_nil(owned[f], f .. " owned twice");
				owned[f] = sink.name;
			end
		end
		assert.same(owned, sinks.fields);
		assert.equal("webhook, notify, pubsub, mqtt or log", sinks.names);
	end);
end);
