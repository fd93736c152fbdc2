-- Unit specs of brisk.presence's engine: transitions, debounce, flapping,
-- silence, timer order, 100k devices and the memory they take. The clock is
-- always passed in, so nothing here sleeps.
local presence = require "brisk.presence"

local function drain(e)
	local out = {};
	while true do
		local ev = e:pop();
		if not ev then return out; end
		out[#out + 1] = ev;
	end
end

local function kinds(evs)
	local out = {};
	for i, ev in ipairs(evs) do out[i] = ev.kind; end
	return table.concat(out, " ");
end

describe("brisk.presence engine", function ()
	it("turns presence into online, state and offline transitions", function ()
		local e = presence.new{ now = 1000 };
		assert.equal(1, e:update("a@h", 1000, true, nil, "hello", 0));
		local ev = drain(e);
		assert.equal("online", ev[1].kind);
		assert.equal("a@h", ev[1].jid);
		assert.equal("unknown", ev[1].previous);
		assert.equal(1000, ev[1].time);
		-- The same presence again is no transition.
		assert.equal(0, e:update("a@h", 1001, true, nil, "hello", 0));
		-- show, status, priority and payload each make a state change.
		assert.equal(1, e:update("a@h", 1002, true, "away", "hello", 0));
		assert.equal(1, e:update("a@h", 1003, true, "away", "bye", 0));
		assert.equal(1, e:update("a@h", 1004, true, "away", "bye", 5));
		assert.equal(1, e:update("a@h", 1005, true, "away", "bye", 5, "<x/>"));
		ev = drain(e);
		assert.equal("state state state state", kinds(ev));
		assert.equal("", ev[1].previous_show_class);
		assert.equal("away", ev[2].previous_show_class);
		assert.equal(0, ev[3].previous_priority);
		assert.equal(5, ev[4].priority);
		-- Moving bytes between fields is still a change.
		assert.equal(1, e:update("a@h", 1006, true, "away", "bye<x/>", 5, ""));
		drain(e);
		assert.equal(1, e:update("a@h", 1010, false));
		ev = drain(e);
		assert.equal("offline", ev[1].kind);
		assert.equal("online", ev[1].previous);
		assert.near(10, ev[1].duration, 0.011);
		assert.equal(0, e:update("a@h", 1011, false));
		assert.equal(1, e:update("a@h", 1020, true));
		ev = drain(e);
		assert.equal("offline", ev[1].previous);
		assert.near(10, ev[1].duration, 0.011);
		assert.equal("online", e:get("a@h").state);
	end);

	it("clamps priority to -128..127 and keeps it exactly", function ()
		local e = presence.new{};
		e:update("p@h", 1, true, nil, nil, -128);
		assert.equal(-128, e:get("p@h").priority);
		e:update("p@h", 2, true, nil, nil, 500);
		assert.equal(127, e:get("p@h").priority);
	end);

	it("reads priority as mod_presence does: presence.priority", function ()
		assert.equal(0, presence.priority(nil));
		assert.equal(5, presence.priority("5"));
		assert.equal(5, presence.priority("+5"));
		assert.equal(-3, presence.priority("-3"));
		assert.equal(127, presence.priority("128"));
		assert.equal(-128, presence.priority("-99999999999999999999999"));
		assert.equal(127, presence.priority(("9"):rep(400)));
		for _, bad in ipairs{ "", "+", "-", "1.5", " 1", "1 ", "0x10", "1e3", "abc", "1\0" } do
			assert.equal(0, presence.priority(bad), bad);
		end
		assert.equal(0, math.type(presence.priority("0")) == "integer" and 0 or 1);
	end);

	it("fires a rule with a status or show condition when it becomes true (edge-triggered)", function ()
		local e = presence.new{ now = 0, rules = {
			{ name = "low", on = "state", status = "battery=(%d+)", below = 20 },
			{ name = "quiet", on = "online", show = { "dnd", "xa" } },
			{ name = "any", on = "state" },
		} };
		local function fired(...)
			e:update("b@h", ...);
			local out = {};
			for _, ev in ipairs(drain(e)) do out[#out + 1] = ev.kind .. ":" .. table.concat(ev.rules, ","); end
			return table.concat(out, " ");
		end
		assert.equal("online:", fired(1, true, nil, "battery=50"));
		assert.equal("state:1,3", fired(2, true, nil, "battery=19"));
		assert.equal("state:3", fired(3, true, nil, "battery=18"));      -- still low: latched
		assert.equal("state:3", fired(4, true, nil, "battery=nope"));    -- no number: not low
		assert.equal("state:1,3", fired(5, true, nil, "battery=5"));     -- low again
		assert.equal("offline:", fired(6, false));                     -- forgets
		assert.equal("online:2", fired(7, true, "dnd", "battery=5"));
		assert.equal("state:1,3", fired(8, true, "dnd", "battery=4"));   -- a new crossing after offline
		-- Events dropped unseen change no latch: the offline event that
		-- would have cleared "low" never reached anyone.
		e:update("b@h", 9, false);
		e:update("b@h", 10, true, "xa");
		assert.equal(2, e:clear());
		assert.is_nil(e:pop());
		assert.equal("state:3", fired(11, true, "xa", "battery=3"));
	end);

	it("judges a debounced condition rule by the presence that started the debounce", function ()
		local e = presence.new{ now = 0, rules = {
			{ name = "low", on = "state", after = 5, status = "battery=(%d+)", below = 20 },
		} };
		e:update("d@h", 0, true, nil, "battery=50"); drain(e);
		e:update("d@h", 1, true, nil, "battery=10"); drain(e);
		assert.equal(1, e:tick(6));
		local ev = drain(e);
		assert.equal(1, #ev);
		assert.same({ 1 }, ev[1].rules);
		assert.equal(5, ev[1].after);
		-- Still low at the next crossing: latched, so the timer event fires
		-- no rule and is not delivered at all.
		e:update("d@h", 10, true, nil, "battery=9"); drain(e);
		assert.equal(1, e:tick(20));
		assert.same({}, drain(e));
		-- A status that does not hold: no event either, and the latch is clear.
		e:update("d@h", 30, true, nil, "battery=90"); drain(e);
		e:tick(40);
		assert.same({}, drain(e));
		e:update("d@h", 50, true, nil, "battery=1"); drain(e);
		e:tick(60);
		assert.same({ 1 }, drain(e)[1].rules);
	end);

	it("takes a status Lua cannot match as not matching, without an error", function ()
		local e = presence.new{ rules = { { on = "online", status = ("a?"):rep(300) .. "b" } } };
		assert.equal(1, e:update("c@h", 1, true, nil, ("a"):rep(300)));
		assert.same({}, e:pop().rules);
	end);

	it("only tracks selected devices", function ()
		local e = presence.new{ devices = { "sensor-*@h", "other.example" } };
		assert.is_nil(e:update("alice@h", 1, true));
		assert.equal(1, e:update("sensor-9@h", 1, true));
		assert.equal(1, e:update("x@other.example", 1, true));
		assert.is_nil(e:get("alice@h"));
		assert.equal(2, e:stats().devices);
	end);

	it("reports which rules an immediate event fires", function ()
		local e = presence.new{ rules = {
			{ on = "offline" },
			{ on = "offline", match = "freezer-*@h" },
			{ on = "online", match = "freezer-*@h" },
			{ on = "offline", after = 5 },
		} };
		e:update("freezer-1@h", 0, true); drain(e);
		e:update("freezer-1@h", 1, false);
		assert.same({ 1, 2 }, drain(e)[1].rules);
		e:update("fan-1@h", 0, true);
		assert.same({}, drain(e)[1].rules);
		e:update("fan-1@h", 2, false);
		assert.same({ 1 }, drain(e)[1].rules);
	end);

	it("debounces: fires only when the condition still holds after the delay", function ()
		local e = presence.new{ now = 0, rules = {
			{ name = "off30", on = "offline", after = 30 },
			{ name = "off60", on = "offline", after = 60 },
			{ name = "on10", on = "online", after = 10 },
		} };
		e:update("d@h", 0, true); drain(e);
		assert.equal(0, e:tick(9.99));
		assert.equal(1, e:tick(10));
		local ev = drain(e)[1];
		assert.equal("online", ev.kind);
		assert.equal(10, ev.after);
		assert.same({ 3 }, ev.rules);
		-- Offline for 20 s, then back: neither offline rule fires.
		e:update("d@h", 100, false);
		e:update("d@h", 120, true);
		drain(e);
		assert.equal(0, e:tick(125));
		assert.equal(1, e:tick(130)); -- the online debounce, at 120 + 10
		drain(e);
		e:update("d@h", 200, false); drain(e);
		assert.equal(1, e:tick(245));
		ev = drain(e)[1];
		assert.equal("offline", ev.kind);
		assert.same({ 1 }, ev.rules);
		assert.equal(230, ev.time);
		assert.equal(1, e:tick(1000));
		ev = drain(e)[1];
		assert.same({ 2 }, ev.rules);
		assert.equal(260, ev.time);
		assert.equal(60, ev.duration);
		assert.equal(0, e:tick(2000));
		assert.equal(0, e:stats().timers);
	end);

	it("detects flapping: N online/offline transitions within T", function ()
		local e = presence.new{ now = 0, rules = {
			{ name = "flap", on = "flapping", transitions = 4, within = 10 },
		} };
		local t = 0;
		local function flip(on) t = t + 3; e:update("f@h", t, on); return drain(e); end
		flip(true); flip(false); flip(true);             -- 3 transitions in 6 s
		local evs = flip(false);                           -- 4th within 9 s
		assert.equal("offline flapping", kinds(evs));
		assert.equal(4, evs[2].transitions);
		assert.equal(10, evs[2].within);
		assert.same({ 1 }, evs[2].rules);
		assert.is_true(e:get("f@h").flapping);
		-- Still flapping: reported once, not on every transition.
		assert.equal("online", kinds(flip(true)));
		-- Calm for a while, then flapping again is reported again.
		t = t + 100;
		flip(false); flip(true); flip(false);
		assert.equal("online flapping", kinds(flip(true)));
		-- Slow transitions never flap.
		local e2 = presence.new{ rules = { { on = "flapping", transitions = 3, within = 10 } } };
		for i = 1, 20 do
			e2:update("s@h", i * 6, i % 2 == 1);
			for _, ev in ipairs(drain(e2)) do assert.not_equal("flapping", ev.kind); end
		end
	end);

	it("reports silence while online, once per silence, reset by activity", function ()
		local e = presence.new{ now = 0, rules = {
			{ name = "quiet", on = "silent", after = 20 },
			{ name = "dead", on = "silent", after = 50 },
		} };
		e:update("s@h", 0, true); drain(e);
		assert.equal(0, e:tick(14));
		assert.is_true(e:touch("s@h", 15));
		assert.equal(0, e:tick(34));
		assert.equal(1, e:tick(35));
		local ev = drain(e)[1];
		assert.equal("silent", ev.kind);
		assert.equal(20, ev.after);
		assert.equal(20, ev.duration);
		assert.same({ 1 }, ev.rules);
		assert.equal(0, e:tick(60));
		assert.equal(1, e:tick(65));
		assert.same({ 2 }, drain(e)[1].rules);
		assert.equal(0, e:tick(500));
		-- Activity starts a new silence.
		e:touch("s@h", 600);
		assert.equal(2, e:tick(700));
		-- Offline devices are not silent.
		e:update("s@h", 800, false); drain(e);
		assert.equal(0, e:tick(900));
		assert.is_nil(e:touch("nobody@h", 900));
	end);

	it("fires timers in due order across devices", function ()
		local e = presence.new{ now = 0, rules = {
			{ on = "offline", after = 7 }, { on = "offline", after = 3 },
			{ on = "silent", after = 5 },
		} };
		math.randomseed(42);
		local times = {};
		for i = 1, 200 do
			e:update("d" .. i .. "@h", 0, true);
			times[i] = { math.random(0, 1000) / 10, "d" .. i .. "@h" };
		end
		-- The clock only moves forward, so offline times are applied in order;
		-- their debounce and silence deadlines interleave across devices.
		table.sort(times, function (a, b) return a[1] < b[1]; end);
		local evs = {};
		for _, x in ipairs(times) do
			e:tick(x[1]);
			for _, ev in ipairs(drain(e)) do evs[#evs + 1] = ev; end
			e:update(x[2], x[1], false);
			drain(e); -- the immediate offline event
		end
		e:tick(1000);
		for _, ev in ipairs(drain(e)) do evs[#evs + 1] = ev; end
		local last = -1;
		local counts = {};
		for _, ev in ipairs(evs) do
			assert.is_true(ev.time >= last, "out of order");
			last = ev.time;
			counts[ev.kind] = (counts[ev.kind] or 0) + 1;
		end
		-- Every device: 2 debounced offline events; silence only for those
		-- that stayed online 5 s or more.
		assert.equal(400, counts.offline);
		assert.is_true((counts.silent or 0) > 0);
	end);

	it("keeps the timer order with random updates (against a simple model)", function ()
		math.randomseed(7);
		local rules = { { on = "offline", after = 2 }, { on = "online", after = 1.5 },
			{ on = "state", after = 0.5 }, { on = "silent", after = 3 } };
		local e = presence.new{ now = 0, rules = rules };
		-- Model: per device, the pending debounce and silence times.
		local model = {};
		local t = 0;
		local fired_model, fired_engine = {}, {};
		local function model_due(upto)
			local due = {};
			for jid, m in pairs(model) do
				if m.deb and m.deb <= upto then due[#due + 1] = { m.deb, jid, m.kind }; m.deb = nil; end
				if m.online and m.sil and m.sil <= upto then due[#due + 1] = { m.sil, jid, "silent" }; m.sil = nil; end
			end
			table.sort(due, function (a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]); end);
			for _, d in ipairs(due) do fired_model[#fired_model + 1] = d[2] .. " " .. d[3]; end
		end
		local afters = { online = 1.5, offline = 2, state = 0.5 };
		for _ = 1, 3000 do
			t = t + math.random(0, 50) / 100;
			model_due(t);
			e:tick(t);
			local jid = "d" .. math.random(1, 20) .. "@h";
			local m = model[jid] or { online = false };
			model[jid] = m;
			local r = math.random(1, 4);
			local kind;
			if r == 1 then
				e:update(jid, t, true, nil, tostring(math.random(1, 3)));
				kind = (not m.online) and "online" or (m.status ~= m.newstatus and "state") or nil;
			end
			if r == 1 then
				-- computed from the engine's answer below
			elseif r == 2 then
				e:update(jid, t, false);
			else
				e:touch(jid, t);
			end
			for _, ev in ipairs(drain(e)) do
				if ev.after > 0 then fired_engine[#fired_engine + 1] = ev.jid .. " " .. ev.kind; end
				if ev.after == 0 and (ev.kind == "online" or ev.kind == "offline" or ev.kind == "state") then
					m.online = ev.kind ~= "offline";
					m.kind = ev.kind;
					m.deb = t + afters[ev.kind];
				end
			end
			if m.online then m.sil = t + 3; else m.sil = nil; end
			kind = nil;
		end
		model_due(t + 100); e:tick(t + 100);
		for _, ev in ipairs(drain(e)) do fired_engine[#fired_engine + 1] = ev.jid .. " " .. ev.kind; end
		-- The engine fires in due-time order per tick; compare as multisets
		-- per tick boundary by sorting both (ties are within one tick).
		assert.equal(#fired_model, #fired_engine);
		table.sort(fired_model); table.sort(fired_engine);
		assert.same(fired_model, fired_engine);
	end);

	it("validates rules with a message naming the rule", function ()
		local function err(rules)
			local ok, msg = pcall(presence.new, { rules = rules });
			assert.is_false(ok);
			return msg;
		end
		assert.matches("rule 'x': unknown event 'gone'", err{ { name = "x", on = "gone" } });
		assert.matches("rule #1: missing 'on'", err{ {} });
		assert.matches("rule 'p': bad pattern 'a@b/c'", err{ { name = "p", on = "online", match = "a@b/c" } });
		assert.matches("bad pattern 'a@@b'", err{ { name = "p", on = "online", match = "a@@b" } });
		assert.matches("rule 'f': a flapping rule needs 'transitions'", err{ { name = "f", on = "flapping" } });
		assert.matches("rule 'f': a flapping rule needs 'within'", err{ { name = "f", on = "flapping", transitions = 3 } });
		assert.matches("rule 's': a silent rule needs 'after'", err{ { name = "s", on = "silent" } });
		assert.matches("'after' must be a number", err{ { name = "s", on = "offline", after = -1 } });
		assert.matches("'after' must be a number", err{ { name = "s", on = "offline", after = 0/0 } });
		-- Names, unknown fields and conditions are the engine's too.
		assert.equal("rule #1: 'name' must be a non-empty string", err{ { name = "", on = "online" } });
		assert.equal("rule 'd': duplicate name", err{ { name = "d", on = "online" }, { name = "d", on = "offline" } });
		assert.equal("rule 'f': unknown field 'afterr'", err{ { name = "f", on = "online", afterr = 3 } });
		assert.equal("rule 'f': unknown field 'webhook'", err{ { name = "f", on = "online", webhook = "http://x/" } });
		assert.equal("rule #1: 'match' must be a string pattern", err{ { on = "online", match = 5 } });
		assert.equal("rule 's': 'status', 'show', 'below' and 'above' only apply to 'online' and 'state' rules",
			err{ { name = "s", on = "offline", status = "x" } });
		assert.equal("rule 's': bad status pattern '(%d': unfinished capture", err{ { name = "s", on = "state", status = "(%d" } });
		assert.equal("rule 's': 'status' must be a Lua pattern", err{ { name = "s", on = "state", status = 5 } });
		assert.equal("rule 's': 'below' needs a 'status' pattern with a capture holding the number",
			err{ { name = "s", on = "state", below = 3 } });
		assert.equal("rule 's': 'above' must be a number", err{ { name = "s", on = "state", status = "(%d+)", above = "3" } });
		assert.equal("rule 's': 'show' must be available, away, chat, dnd or xa (or a list of them)",
			err{ { name = "s", on = "state", show = { "dnd", "bar" } } });
		assert.truthy(presence.new{ rules = { { name = "ok", on = "state", show = { "dnd", "xa" },
			status = "battery=(%d+)", below = 20, above = 2 } } });
	end);

	it("checks status patterns as completely as Lua's own parser", function ()
		math.randomseed(11);
		local atoms = { "(", ")", "[", "]", "%", "%d", "%b()", "%f[%w]", "%1", "a", ".", "-", "*", "^", "$", "%]" };
		local subjects = { "", "a", "ab(c)d", "battery=12", "]]]", "((a))", "a1a1" };
		local accepted = 0;
		for _ = 1, 20000 do
			local p = {};
			for i = 1, math.random(1, 6) do p[i] = atoms[math.random(#atoms)]; end
			p = table.concat(p);
			-- Whatever the engine accepts, Lua matches on every subject without an error.
			if pcall(presence.new, { rules = { { on = "state", status = p } } }) then
				accepted = accepted + 1;
				for _, s in ipairs(subjects) do
					assert(pcall(string.match, s, p), "accepted but Lua refuses: " .. p);
				end
			end
		end
		assert.is_true(accepted > 1000);
	end);

	it("compiles and matches JID globs", function ()
		local g = assert(presence.glob("Freezer-*@Devices.Example.COM"));
		assert.equal("freezer-*@devices.example.com", tostring(g));
		assert.is_true(g:match("freezer-12@devices.example.com"));
		assert.is_true(g:match("freezer-@devices.example.com"));
		assert.is_false(g:match("fan-1@devices.example.com"));
		assert.equal("*@h.example", tostring(presence.glob("h.example")));
		assert.is_true(presence.glob("a?c@h"):match("aéc@h"));
		assert.is_false(presence.glob("a?c@h"):match("ac@h"));
		assert.is_true(presence.glob("a\\*@h"):match("a*@h"));
		assert.is_false(presence.glob("a\\*@h"):match("ab@h"));
		assert.is_true(presence.glob("*a*b*c*@*"):match("xxaxxbxxcxx@h"));
		assert.is_false(presence.glob("*a*b*c*@*"):match("xxaxxcxxbxx@h"));
		for _, bad in ipairs{ "", "a@", "a b@h", "x\\", "a@b@c", "a@h/r", ("x"):rep(3000), "*\x88", "a\xc3@h" } do
			assert.is_nil((presence.glob(bad)), bad);
		end
		assert.equal("pattern is not valid UTF-8", select(2, presence.glob("a\xa9@h")));
		assert.is_true(presence.glob("\xc3\xa9*@h"):match("\xc3\xa9t\xc3\xa9@h"));
		-- Against Lua patterns built from the same globs, on random inputs.
		math.randomseed(3);
		local alphabet = { "a", "b", "-", "*", "?", "@" };
		for _ = 1, 2000 do
			local p = {};
			for i = 1, math.random(1, 8) do p[i] = alphabet[math.random(#alphabet)]; end
			p = table.concat(p);
			local g2 = presence.glob(p);
			if g2 then
				local lp = "^" .. tostring(g2):gsub("[%-]", "%%-"):gsub("%*", ".*"):gsub("%?", ".") .. "$";
				for _ = 1, 10 do
					local s = {};
					for i = 1, math.random(0, 8) do s[i] = ({ "a", "b", "-", "@" })[math.random(4)]; end
					s = table.concat(s);
					assert.equal(s:match(lp) ~= nil, g2:match(s), p .. " vs " .. s);
				end
			end
		end
	end);

	it("tracks 100k devices in at most 128 bytes each", function ()
		local e = presence.new{ now = 0, rules = {
			{ on = "offline", after = 60 }, { on = "silent", after = 120 },
			{ on = "flapping", transitions = 5, within = 60 },
			{ on = "state", match = "sensor-1*@devices.example.com" },
		} };
		local n = 100000;
		for i = 1, n do
			e:update(("sensor-%06d@devices.example.com"):format(i), i / 1000, true, nil, "battery=80", 0);
		end
		assert.equal(n, e:pending());
		while e:pop() do end
		for i = 1, n, 2 do
			e:update(("sensor-%06d@devices.example.com"):format(i), 200, false);
		end
		while e:pop() do end
		local st = e:stats();
		assert.equal(n, st.devices);
		assert.equal(n / 2, st.online);
		assert.equal(n / 2, st.offline);
		local per = st.memory / n;
		print(("\n    100k devices: %d bytes in the engine, %.1f bytes per device (slot %d)"):format(st.memory, per, st.slot_size));
		assert.is_true(per <= 128, "bytes per device: " .. per);
		-- Half went offline 200 s ago (debounce 60), half have been silent.
		assert.equal(n, e:tick(300));
		assert.equal("offline", e:get("sensor-000001@devices.example.com").state);
	end);

	it("rejects bad arguments with clear errors", function ()
		local e = presence.new{};
		assert.has_error(function () e:update("", 1, true); end);
		assert.has_error(function () e:update("a@h", 0/0, true); end);
		assert.has_error(function () e:update("a@h", "x", true); end);
		assert.has_error(function () e.update({}, "a@h", 1, true); end);
		assert.has_error(function () presence.new(); end);
		-- A clock going backwards is taken as the latest time seen.
		e:update("a@h", 100, true);
		e:update("a@h", 50, false);
		assert.equal(100, e:pop().time);
		assert.equal(0, e:pop().duration);
	end);
end);
