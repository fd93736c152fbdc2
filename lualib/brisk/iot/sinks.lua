-- brisk.iot.sinks — what an IoT rule does when it fires: its targets.
--
-- A sink owns the fields of a rule that name it. check() reads and checks
-- them when mod_brisk_iot loads (a bad value is an error naming the rule,
-- through fail), and returns what run() needs, or nil when the rule does
-- not use the sink. run() carries the action out for one event. Sinks
-- reach the world only through fx, the side effects mod_brisk_iot injects
-- (brisk.iot.dispatch lists them), so that they run in specs without a
-- server. Adding a sink is one entry in M.list, plus a function in fx when
-- it needs a new kind of side effect.
--
-- Everything else in a rule (its event, match, timing and condition)
-- belongs to the engine, brisk.presence, which checks it.

local webhook = require "brisk.iot.webhook";
local mqtt = require "brisk.iot.mqtt";
local prosody_lib = require "brisk.prosody".lib;
local jid_util = prosody_lib "util.jid";
local json = prosody_lib "util.json";
local st = prosody_lib "util.stanza";

local M = {};

-- RFC 3339 / XEP-0082 time with milliseconds (util.datetime wants whole seconds).
function M.iso(t)
	local secs = math.floor(t);
	return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. (".%03dZ"):format(math.floor((t - secs) * 1000));
end

-- One line about an event, for logs and messages.
function M.describe(ev)
	local s = ("%s is %s"):format(ev.jid, ev.kind == "state" and "changed" or ev.kind);
	if ev.kind == "offline" or ev.kind == "online" then
		s = s .. (" (was %s for %gs)"):format(ev.previous, ev.duration);
	end
	if ev.after and ev.after > 0 then s = s .. (" [for %gs]"):format(ev.after); end
	if ev.kind == "flapping" then s = s .. (" (%d transitions within %gs)"):format(ev.transitions, ev.within); end
	if ev.show then s = s .. " show=" .. ev.show; end
	if ev.status then s = s .. " status=" .. ev.status; end
	return s;
end

-- The Standard Webhooks body of an event (docs/iot.md, "Webhooks").
function M.webhook_body(ev, rule)
	return json.encode({
		type = "iot." .. ev.kind;
		timestamp = M.iso(ev.time);
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
			since = M.iso(ev.since);
			time = M.iso(ev.time);
			transitions = ev.transitions;
			within = ev.within;
		};
	});
end

-- The PubSub item of an event, and its id.
function M.pubsub_item(ev, rule)
	local id = ("%s-%s-%d"):format(ev.kind, ev.jid, math.floor(ev.time * 1000));
	return st.stanza("item", { id = id, xmlns = "http://jabber.org/protocol/pubsub" })
		:tag("event", { xmlns = "urn:brisk:iot:0", kind = ev.kind, jid = ev.jid, state = ev.state,
			time = M.iso(ev.time), rule = rule.name })
			:text_tag("status", ev.status):up(), id;
end

local LOG_LEVELS = { debug = true, info = true, warn = true, error = true };

-- check(r, opts, fail): r is the rule as configured; opts holds
-- pubsub_service (iot_pubsub_service), mqtt (the iot_mqtt settings, or nil)
-- and read_file(path) -> data or nil, err.
-- run(target, rule, ev, fx): rule is { name = ... }.
M.list = {
	{
		name = "webhook";
		fields = { "webhook", "secret", "secret_file" };
		check = function (r, opts, fail)
			if r.webhook == nil then
				if r.secret ~= nil or r.secret_file ~= nil then fail("'secret' and 'secret_file' need a 'webhook'"); end
				return nil;
			end
			if type(r.webhook) ~= "string" or not r.webhook:match("^https?://[^/%s]+") then
				fail("'webhook' must be an http:// or https:// URL");
			end
			if r.secret ~= nil and r.secret_file ~= nil then fail("give 'secret' or 'secret_file', not both"); end
			local key, err;
			if r.secret ~= nil then
				key, err = webhook.decode_secret(r.secret);
			elseif r.secret_file ~= nil then
				if type(r.secret_file) ~= "string" then fail("'secret_file' must be a path"); end
				local data, rerr = opts.read_file(r.secret_file);
				if data then
					key, err = webhook.decode_secret(data);
				else
					err = "cannot read secret_file" .. (rerr and ": " .. tostring(rerr) or "");
				end
			else
				err = "a webhook needs 'secret' (whsec_...) or 'secret_file'";
			end
			if not key then fail(err); end
			return { url = r.webhook, key = key };
		end;
		run = function (t, rule, ev, fx)
			fx.webhook(t.url, t.key, ev.jid, M.webhook_body(ev, rule));
		end;
	},
	{
		name = "notify";
		fields = { "notify" };
		check = function (r, _, fail)
			if r.notify == nil then return nil; end
			local list = type(r.notify) == "table" and r.notify or { r.notify };
			local jids = {};
			for _, j in ipairs(list) do
				local p = type(j) == "string" and jid_util.prep(j);
				if not p then fail(("'notify' has an invalid JID '%s'"):format(tostring(j))); end
				jids[#jids + 1] = p;
			end
			if #jids == 0 then fail("'notify' is empty"); end
			return jids;
		end;
		run = function (jids, rule, ev, fx)
			local text = ("[%s] %s"):format(rule.name, M.describe(ev));
			for _, to in ipairs(jids) do fx.send_message(to, text); end
		end;
	},
	{
		name = "pubsub";
		fields = { "pubsub" };
		check = function (r, opts, fail)
			if r.pubsub == nil then return nil; end
			if type(r.pubsub) ~= "string" or r.pubsub == "" then fail("'pubsub' must be a node name"); end
			if not opts.pubsub_service then fail("'pubsub' needs iot_pubsub_service to name a PubSub service"); end
			return { node = r.pubsub, service = opts.pubsub_service };
		end;
		run = function (t, rule, ev, fx)
			local service = fx.pubsub(t.service);
			if not service then
				fx.log("warn", "Rule %q: no PubSub service on %s", rule.name, t.service);
				return;
			end
			local item, id = M.pubsub_item(ev, rule);
			local ok, err = service:publish(t.node, true, id, item);
			if not ok and err == "item-not-found" then
				service:create(t.node, true);
				ok, err = service:publish(t.node, true, id, item);
			end
			if not ok then fx.log("warn", "Rule %q: publish to %s failed: %s", rule.name, t.node, tostring(err)); end
		end;
	},
	{
		name = "mqtt";
		fields = { "mqtt" };
		check = function (r, opts, fail)
			if r.mqtt == nil then return nil; end
			if type(r.mqtt) ~= "string" then fail("'mqtt' must be a topic (under iot_mqtt's topic_prefix)"); end
			if not opts.mqtt then fail("'mqtt' needs iot_mqtt to name a broker"); end
			mqtt.check_topic_part("mqtt", r.mqtt, fail);
			return r.mqtt;
		end;
		run = function (topic, rule, ev, fx)
			fx.mqtt(topic, M.webhook_body(ev, rule));
		end;
	},
	{
		name = "log";
		fields = { "log" };
		check = function (r, _, fail)
			if r.log == nil then return nil; end
			local level = r.log == true and "info" or r.log;
			if not LOG_LEVELS[level] then fail("'log' must be true or one of debug, info, warn, error"); end
			return level;
		end;
		run = function (level, rule, ev, fx)
			fx.log(level, "Rule %q: %s", rule.name, M.describe(ev));
		end;
	},
};

-- Every field some sink owns (the rest of a rule goes to the engine), and
-- the sinks' names as the "missing target" message lists them.
M.fields = {};
local names = {};
for _, sink in ipairs(M.list) do
	for _, f in ipairs(sink.fields) do M.fields[f] = sink.name; end
	names[#names + 1] = sink.name;
end
M.names = table.concat(names, ", ", 1, #names - 1) .. " or " .. names[#names];

return M;
