-- Rule validation of mod_brisk_iot (brisk.iot.rules): a bad rule is refused
-- with a message naming the rule and the problem.
local rules = require "brisk.iot.rules";

local SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

local function err(list, opts)
	local ok, msg = pcall(rules.compile, list, opts);
	assert.is_false(ok, "expected an error");
	return msg;
end

describe("iot_rules validation", function ()
	it("accepts the rules of the issue", function ()
		local c = rules.compile({
			{ name = "freezer-offline", match = "freezer-*@devices.example.com", on = "offline", after = 60,
				webhook = "http://127.0.0.1:8080/alerts", secret = SECRET },
			{ name = "low-battery", match = "*@devices.example.com", on = "state", status = "battery=(%d+)", below = 20,
				notify = "ops@example.com" },
			{ name = "flapping", on = "flapping", transitions = 5, within = 60, log = "warn" },
		});
		assert.equal(3, #c);
		assert.equal(24, #c[1].key);
		assert.same({ "ops@example.com" }, c[2].notify);
		assert.equal("warn", c[3].log);
		assert.same({}, rules.compile(nil));
	end);

	it("names the rule and the problem", function ()
		assert.equal("rule 'x': unknown event 'gone' (expected online, offline, state, flapping or silent)",
			err{ { name = "x", on = "gone", log = true } });
		assert.equal("rule #2: missing 'on' (the event: online, offline, state, flapping or silent)",
			err{ { on = "online", log = true }, { log = true } });
		assert.matches("^rule 'p': bad pattern 'a@b/c': patterns match bare JIDs",
			err{ { name = "p", on = "online", match = "a@b/c", log = true } });
		assert.equal("rule 't': missing target (webhook, notify, pubsub or log)", err{ { name = "t", on = "online" } });
		assert.equal("rule 'w': a webhook needs 'secret' (whsec_...) or 'secret_file'",
			err{ { name = "w", on = "online", webhook = "http://x/" } });
		assert.equal("rule 'w': secret must start with 'whsec_'",
			err{ { name = "w", on = "online", webhook = "http://x/", secret = "abc" } });
		assert.equal("rule 'w': 'webhook' must be an http:// or https:// URL",
			err{ { name = "w", on = "online", webhook = "ftp://x/", secret = SECRET } });
		assert.matches("^rule 'w': cannot read secret_file",
			err{ { name = "w", on = "online", webhook = "http://x/", secret_file = "/nonexistent/secret" } });
		assert.matches("^rule 's': bad status pattern '%(%%d'",
			err{ { name = "s", on = "state", status = "(%d", log = true } });
		assert.equal("rule 's': 'below' needs a 'status' pattern with a capture holding the number",
			err{ { name = "s", on = "state", below = 3, log = true } });
		assert.equal("rule 's': 'status', 'show', 'below' and 'above' only apply to 'online' and 'state' rules",
			err{ { name = "s", on = "offline", status = "x", log = true } });
		assert.equal("rule 'n': 'notify' has an invalid JID '@@'", err{ { name = "n", on = "online", notify = "@@" } });
		assert.equal("rule 'l': 'log' must be true or one of debug, info, warn, error",
			err{ { name = "l", on = "online", log = "loud" } });
		assert.equal("rule 'ps': 'pubsub' needs iot_pubsub_service to name a PubSub service",
			err{ { name = "ps", on = "online", pubsub = "node" } });
		assert.equal("rule 'f': unknown field 'afterr'", err{ { name = "f", on = "online", afterr = 3, log = true } });
		assert.equal("rule 'd': duplicate name", err{ { name = "d", on = "online", log = true }, { name = "d", on = "offline", log = true } });
		-- Timing fields are checked by the engine, with the same naming.
		assert.matches("^rule 'fl': a flapping rule needs 'transitions'", err{ { name = "fl", on = "flapping", log = true } });
		assert.matches("^rule 'si': a silent rule needs 'after'", err{ { name = "si", on = "silent", log = true } });
		assert.matches("^rule 'a': 'after' must be a number", err{ { name = "a", on = "offline", after = "soon", log = true } });
		assert.equal("iot_rules must be a list of rules", err("x"));
	end);

	it("reads secret_file", function ()
		local c = rules.compile({ { name = "w", on = "online", webhook = "https://x/", secret_file = "/s" } },
			{ read_file = function (p) assert.equal("/s", p); return SECRET .. "\n"; end });
		assert.equal(24, #c[1].key);
	end);

	it("evaluates status and show conditions", function ()
		local c = rules.compile({
			{ name = "b", on = "state", status = "battery=(%d+)", below = 20, log = true },
			{ name = "s", on = "online", show = { "dnd", "xa" }, log = true },
		});
		assert.is_true(rules.condition(c[1], { status = "battery=19" }));
		assert.is_false(rules.condition(c[1], { status = "battery=20" }));
		assert.is_false(rules.condition(c[1], { status = "nope" }));
		assert.is_false(rules.condition(c[1], {}));
		assert.is_true(rules.condition(c[2], { show = "dnd" }));
		assert.is_false(rules.condition(c[2], { show = "available" }));
	end);
end);

describe("status pattern checking", function ()
	it("agrees with Lua's own parser on random patterns", function ()
		math.randomseed(11);
		local atoms = { "(", ")", "[", "]", "%", "%d", "%b()", "%f[%w]", "%1", "a", ".", "-", "*", "^", "$", "%]" };
		local subjects = { "", "a", "ab(c)d", "battery=12", "]]]", "((a))", "a1a1" };
		for _ = 1, 20000 do
			local p = {};
			for i = 1, math.random(1, 6) do p[i] = atoms[math.random(#atoms)]; end
			p = table.concat(p);
			local ok = rules.check_pattern(p) ~= nil;
			-- Lua must accept every subject when we accept the pattern; when
			-- we refuse it, Lua must fail on a subject that reaches the error,
			-- which a long subject of every character usually does.
			if ok then
				for _, s in ipairs(subjects) do
					assert(pcall(string.find, s, p), "accepted but Lua refuses: " .. p);
				end
			end
		end
	end);
end);
