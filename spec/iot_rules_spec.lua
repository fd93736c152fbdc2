-- iot_rules and the other options of mod_brisk_iot (brisk.iot.config): a
-- bad rule is refused with a message naming the rule and the problem,
-- whichever part owns the field (the engine: event, match, timing,
-- conditions; brisk.iot.sinks: the targets).
local config = require "brisk.iot.config";
local presence = require "brisk.presence";

local SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

local function compile(list, opts)
	opts = opts or {};
	return config.compile({ rules = list, devices = opts.devices, pubsub_service = opts.pubsub_service },
		{ host = "devices.example.com", now = 0, read_file = opts.read_file });
end

local function err(list, opts)
	local ok, msg = pcall(compile, list, opts);
	assert.is_false(ok, "expected an error");
	return msg;
end

describe("iot options", function ()
	it("are read through the module's typed getters, with their defaults", function ()
		local asked = {};
		local options = config.read(function (name, kind, default)
			asked[#asked + 1] = name .. ":" .. kind;
			if name == "iot_tick_interval" then return 1; end
			return default;
		end);
		assert.equal(1, options.tick_interval);
		assert.equal(1000, options.webhook_queue_size);
		assert.equal(false, options.http_listing);
		assert.is_nil(options.devices);
		assert.same({}, options.rules);
		assert.equal(#config.OPTIONS, #asked);
		assert.equal("iot_devices:array", asked[1]);
	end);
end);

describe("iot_rules validation", function ()
	it("accepts the rules of the issue", function ()
		local c = compile({
			{ name = "freezer-offline", match = "freezer-*@devices.example.com", on = "offline", after = 60,
				webhook = "http://127.0.0.1:8080/alerts", secret = SECRET },
			{ name = "low-battery", match = "*@devices.example.com", on = "state", status = "battery=(%d+)", below = 20,
				notify = "ops@example.com" },
			{ name = "flapping", on = "flapping", transitions = 5, within = 60, log = "warn" },
		});
		assert.equal(3, #c.rules);
		assert.equal("freezer-offline", c.rules[1].name);
		assert.equal(24, #c.rules[1].targets.webhook.key);
		assert.equal("http://127.0.0.1:8080/alerts", c.rules[1].targets.webhook.url);
		assert.same({ "ops@example.com" }, c.rules[2].targets.notify);
		assert.equal("warn", c.rules[3].targets.log);
		assert.same({ "*@devices.example.com" }, c.selectors);
		assert.same({}, compile(nil).rules);
		-- The engine got the rest of each rule: its condition works.
		local e = c.engine;
		e:update("s@devices.example.com", 1, true, nil, "battery=50"); e:clear();
		e:update("s@devices.example.com", 2, true, nil, "battery=10");
		assert.same({ 2 }, e:pop().rules);
	end);

	it("names unnamed rules rule-<n>", function ()
		local c = compile({ { on = "online", log = true }, { name = "x", on = "offline", log = true } });
		assert.equal("rule-1", c.rules[1].name);
		assert.equal("x", c.rules[2].name);
	end);

	it("names the rule and the problem", function ()
		assert.equal("rule 'x': unknown event 'gone' (expected online, offline, state, flapping or silent)",
			err{ { name = "x", on = "gone", log = true } });
		assert.equal("rule #2: missing 'on' (the event: online, offline, state, flapping or silent)",
			err{ { on = "online", log = true }, { log = true } });
		assert.matches("^rule 'p': bad pattern 'a@b/c': patterns match bare JIDs",
			err{ { name = "p", on = "online", match = "a@b/c", log = true } });
		assert.equal("rule 't': missing target (webhook, notify, pubsub, mqtt or log)", err{ { name = "t", on = "online" } });
		assert.equal("rule 'w': a webhook needs 'secret' (whsec_...) or 'secret_file'",
			err{ { name = "w", on = "online", webhook = "http://x/" } });
		assert.equal("rule 'w': secret must start with 'whsec_'",
			err{ { name = "w", on = "online", webhook = "http://x/", secret = "abc" } });
		assert.equal("rule 'w': 'webhook' must be an http:// or https:// URL",
			err{ { name = "w", on = "online", webhook = "ftp://x/", secret = SECRET } });
		assert.equal("rule 'w': give 'secret' or 'secret_file', not both",
			err{ { name = "w", on = "online", webhook = "http://x/", secret = SECRET, secret_file = "/s" } });
		assert.equal("rule 'w': 'secret' and 'secret_file' need a 'webhook'",
			err{ { name = "w", on = "online", secret = SECRET, log = true } });
		assert.matches("^rule 'w': cannot read secret_file",
			err{ { name = "w", on = "online", webhook = "http://x/", secret_file = "/nonexistent/secret" } });
		assert.matches("^rule 's': bad status pattern '%(%%d'",
			err{ { name = "s", on = "state", status = "(%d", log = true } });
		assert.equal("rule 's': 'below' needs a 'status' pattern with a capture holding the number",
			err{ { name = "s", on = "state", below = 3, log = true } });
		assert.equal("rule 's': 'status', 'show', 'below' and 'above' only apply to 'online' and 'state' rules",
			err{ { name = "s", on = "offline", status = "x", log = true } });
		assert.equal("rule 'n': 'notify' has an invalid JID '@@'", err{ { name = "n", on = "online", notify = "@@" } });
		assert.equal("rule 'n': 'notify' is empty", err{ { name = "n", on = "online", notify = {} } });
		assert.equal("rule 'l': 'log' must be true or one of debug, info, warn, error",
			err{ { name = "l", on = "online", log = "loud" } });
		assert.equal("rule 'ps': 'pubsub' needs iot_pubsub_service to name a PubSub service",
			err{ { name = "ps", on = "online", pubsub = "node" } });
		assert.equal("rule 'ps': 'pubsub' must be a node name",
			err({ { name = "ps", on = "online", pubsub = "" } }, { pubsub_service = "pubsub.h" }));
		assert.equal("rule 'f': unknown field 'afterr'", err{ { name = "f", on = "online", afterr = 3, log = true } });
		assert.equal("rule 'd': duplicate name", err{ { name = "d", on = "online", log = true }, { name = "d", on = "offline", log = true } });
		assert.matches("^rule 'fl': a flapping rule needs 'transitions'", err{ { name = "fl", on = "flapping", log = true } });
		assert.matches("^rule 'si': a silent rule needs 'after'", err{ { name = "si", on = "silent", log = true } });
		assert.matches("^rule 'a': 'after' must be a number", err{ { name = "a", on = "offline", after = "soon", log = true } });
		assert.equal("rule #2: not a table", err{ { on = "online", log = true }, "x" });
		assert.equal("rule #2: not a table", err{ { on = "online", log = true }, false });
		assert.equal("iot_rules must be a list of rules", err("x"));
		assert.equal("iot_rules must be a list of rules (found key x)", err{ x = {} });
		assert.matches("^devices: bad pattern 'a/b'", err({}, { devices = { "a/b" } }));
	end);

	it("reads secret_file", function ()
		local c = compile({ { name = "w", on = "online", webhook = "https://x/", secret_file = "/s" } },
			{ read_file = function (p) assert.equal("/s", p); return SECRET .. "\n"; end });
		assert.equal(24, #c.rules[1].targets.webhook.key);
		assert.equal("rule 'w': cannot read secret_file: gone",
			err({ { name = "w", on = "online", webhook = "https://x/", secret_file = "/s" } },
				{ read_file = function () return nil, "gone"; end }));
	end);

	it("builds one engine, with the rules in order", function ()
		local made = 0;
		local new = presence.new;
		presence.new = function (...) made = made + 1; return new(...); end;
		local ok, c = pcall(compile, { { name = "a", on = "online", log = true }, { name = "b", on = "offline", log = true } });
		presence.new = new;
		assert.is_true(ok, c);
		assert.equal(1, made);
		c.engine:update("d@devices.example.com", 1, true);
		assert.same({ 1 }, c.engine:pop().rules);
	end);
end);
