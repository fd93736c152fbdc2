-- brisk.events against stock util.events, side by side in one Lua state:
-- random scripts of operations run on three objects, a stock one, one made
-- by Brisk's new() and a stock one whose fire_event Brisk takes over at a
-- random point (as mod_brisk_util does to live objects), and every call
-- must give the same values (and value count) or the same error, and leave
-- the same trace of handler, wrapper and hook calls.
--
-- The three objects share the same handler functions (the order of
-- handlers with equal priorities comes from pairs() over them, so it is
-- the same only for the same functions), and the collector is stopped
-- while a script runs: when a handler is removed and added again, where its
-- key lands in the event's table, and so its place among equal priorities,
-- depends on whether the collector has cleared the removed key meanwhile,
-- for two stock objects as much as for Brisk's (found by
-- fuzz/events_diff_fuzz.c; see docs/util.md). Handlers log, return nil or a
-- value, raise (strings and tables), add or remove handlers of their own
-- object while it fires, fire nested events, yield (fires run in
-- coroutines); some "handlers" are not callable (false, tables with and
-- without __call or __name). Scripts add and remove handlers one by one and
-- in tables, per-event and global wrappers and debug hooks, and fire events
-- of every kind of name.
--
-- BRISK_FUZZ_ITER / 10 scripts (default 300); BRISK_FUZZ_SEED.
local glue = require "brisk.patch.events";
local core = require "brisk.events";
local stock_new = glue.stock().new;
local brisk_new = glue.new(core);

local ITER = math.max(1, (tonumber(os.getenv("BRISK_FUZZ_ITER")) or 3000) // 10);
local SEED = tonumber(os.getenv("BRISK_FUZZ_SEED")) or 15;

local function pack(...) return { n = select("#", ...), ... }; end

local function show(v)
	if type(v) == "table" then return v.tag and ("{" .. v.tag .. "}") or "table"; end
	if type(v) == "function" then return "function"; end
	return tostring(v);
end

local function show_pack(r)
	local s = {};
	for i = 1, r.n do s[i] = show(r[i]); end
	return "(" .. table.concat(s, ", ") .. ")";
end

-- The world a shared handler acts on: its object and its trace.
local current;

local function log(s) current.trace[#current.trace + 1] = s; end

local EVENTS = { "a", "b", "c", 1, 2.5, true, { tag = "tbl-event" } };

-- Shared handlers, wrappers and hooks, with fixed behaviours.
local function make_pool(rng)
	local pool = {};
	for k = 1, 14 do
		local kind = rng(12);
		local function h(data)
			log("h" .. k .. ":" .. show(data));
			if kind == 1 then return "ret" .. k; end
			if kind == 2 then return false; end
			if kind == 3 then error("boom" .. k); end
			if kind == 4 then error({ tag = "err" .. k }); end
			if kind == 5 then current.obj.add_handler(EVENTS[k % 3 + 1], pool[(k % 14) + 1], k % 3); end
			if kind == 6 then current.obj.remove_handler(EVENTS[k % 3 + 1], pool[((k + 3) % 14) + 1]); end
			if kind == 7 and current.depth < 3 then
				current.depth = current.depth + 1;
				local r = pack(current.obj.fire_event(EVENTS[(k % 2) + 2], "nested" .. k));
				current.depth = current.depth - 1;
				log("nested-ret:" .. show_pack(r));
			end
			if kind == 8 then
				local got = coroutine.yield("y" .. k);
				log("resumed:" .. show(got));
			end
			if kind == 9 then return 0; end
			if kind == 10 then return data; end
		end
		pool[k] = h;
	end
	pool[15] = false;
	pool[16] = setmetatable({}, { __call = function (self, data) log("callable:" .. show(data)); end });
	pool[17] = setmetatable({}, { __name = "Thing" });
	pool[18] = { tag = "plain" };
	local wrappers = {};
	for k = 1, 4 do
		wrappers[k] = function (handlers, event_name, event_data)
			log("w" .. k .. ":" .. show(event_name) .. ":" .. show(event_data));
			if k == 4 then return "short" .. k; end
			local r = pack(handlers(event_name, k == 2 and "wrapped" or event_data));
			log("w" .. k .. "-ret:" .. show_pack(r));
			return table.unpack(r, 1, r.n);
		end;
	end
	local hooks = {
		function (handler, event_name, event_data)
			log("hook:" .. show(event_name));
			return handler(event_data);
		end,
		function (handler, event_name, event_data)
			log("hook2:" .. show(event_name) .. ":" .. show(event_data));
			local r = handler(event_data);
			if r == nil then return nil; end
			return "hooked";
		end,
	};
	return pool, wrappers, hooks;
end

-- Run f(...) in a coroutine, resuming it through its yields; the trace notes each.
local function run(f, ...)
	local co = coroutine.create(f);
	local r = pack(coroutine.resume(co, ...));
	while coroutine.status(co) == "suspended" do
		log("yield:" .. show(r[2]));
		r = pack(coroutine.resume(co, "resume-value"));
	end
	return r;
end

local function script(rng, steps)
	local pool, wrappers, hooks = make_pool(rng);
	local worlds = {
		{ obj = stock_new(), trace = {}, depth = 0, name = "stock" },
		{ obj = brisk_new(), trace = {}, depth = 0, name = "brisk new()" },
		{ obj = stock_new(), trace = {}, depth = 0, name = "adopted" },
	};
	local adopt_at = rng(steps);
	local lines = {};
	local function each(what, fn)
		local results = {};
		for i, w in ipairs(worlds) do
			current = w;
			results[i] = fn(w.obj);
		end
		lines[#lines + 1] = what .. " -> " .. show_pack(results[1]);
		local t1 = table.concat(worlds[1].trace, " ");
		for i = 2, #worlds do
			local same = results[i].n == results[1].n;
			for k = 1, results[1].n do
				local a, b = results[1][k], results[i][k];
				-- tables (data, error values) are compared by their tag
				if a ~= b and not (type(a) == "table" and type(b) == "table" and a.tag and a.tag == b.tag) then
					same = false;
				end
			end
			if not same or table.concat(worlds[i].trace, " ") ~= t1 then
				error(("%s differs from stock on %s: %s vs %s\ntrace stock: %s\ntrace %s: %s\nscript:\n%s"):format(
					worlds[i].name, what, show_pack(results[1]), show_pack(results[i]),
					t1:sub(-1500), worlds[i].name, table.concat(worlds[i].trace, " "):sub(-1500),
					table.concat(lines, "\n", math.max(1, #lines - 25))), 0);
			end
		end
	end
	for step = 1, steps do
		if step == adopt_at then
			local obj = worlds[3].obj;
			obj.fire_event = core.fire_event(glue.spec(obj));
		end
		local r = rng(100);
		if r <= 30 then
			local ev, h = EVENTS[rng(#EVENTS)], pool[rng(#pool)];
			local prio = ({ nil, 0, 1, -1, 5, 0.5, 1, 1, 0 })[rng(9)];
			each("add_handler", function (o) return pack(pcall(o.add_handler, ev, h, prio)); end);
		elseif r <= 40 then
			local ev, h = EVENTS[rng(#EVENTS)], pool[rng(#pool)];
			each("remove_handler", function (o) return pack(pcall(o.remove_handler, ev, h)); end);
		elseif r <= 44 then
			local t = { a = pool[rng(14)], b = pool[rng(14)] };
			local f = rng(2) == 1 and "add_handlers" or "remove_handlers";
			each(f, function (o) return pack(pcall(o[f], t)); end);
		elseif r <= 50 then
			local ev = rng(3) == 1 and false or EVENTS[rng(3)];
			local w = wrappers[rng(#wrappers)];
			local f = rng(3) == 1 and "remove_wrapper" or "add_wrapper";
			each(f, function (o) return pack(pcall(o[f], ev, w)); end);
		elseif r <= 53 then
			local hk = rng(3) == 1 and nil or hooks[rng(#hooks)];
			each("set_debug_hook", function (o)
				local old = o.set_debug_hook(hk);
				for k, v in ipairs(hooks) do if v == old then return pack("hook" .. k); end end
				return pack(old);
			end);
		elseif r <= 57 then
			local ev = EVENTS[rng(#EVENTS)];
			each("get_handlers", function (o)
				local hs = o.get_handlers(ev);
				if not hs then return pack(nil); end
				local ids = {};
				for i = 1, #hs do
					for k = 1, #pool do if pool[k] == hs[i] then ids[i] = k; end end
				end
				return pack(table.concat(ids, ","));
			end);
		else
			local ev = ({ EVENTS[rng(#EVENTS)], nil, 0 / 0 })[rng(10) <= 8 and 1 or rng(2) + 1];
			local data = ({ "d" .. step, nil, { tag = "data" .. step } })[rng(3)];
			each("fire_event", function (o)
				local res = run(o.fire_event, ev, data);
				return res;
			end);
		end
	end
	-- same handler arrays everywhere at the end
	for _, ev in ipairs(EVENTS) do
		each("final get_handlers", function (o)
			local hs = o.get_handlers(ev) or {};
			local ids = {};
			for i = 1, #hs do for k = 1, #pool do if pool[k] == hs[i] then ids[i] = k; end end end
			return pack(table.concat(ids, ","));
		end);
	end
end

describe("brisk.events vs stock util.events", function ()
	it("agrees on random scripts", function ()
		math.randomseed(SEED);
		for _ = 1, ITER do
			collectgarbage("stop");
			local ok, err = pcall(script, math.random, math.random(1, 60));
			collectgarbage("restart");
			if not ok then error(err, 0); end
		end
	end);

	-- Why the scripts above stop the collector: stock's own order of
	-- equal-priority handlers is not a function of the calls made.
	it("(stock alone orders equal priorities by when the collector ran)", function ()
		local differ = 0;
		for trial = 1, 100 do
			local hs = {};
			for i = 1, 12 do hs[i] = function () end; end
			local function order(e)
				local t = {};
				for i, h in ipairs(e.get_handlers("x")) do
					for k = 1, 12 do if hs[k] == h then t[i] = k; end end
				end
				return table.concat(t, ",");
			end
			local r = trial % 12 + 1;
			local a = stock_new();
			for i = 1, 12 do a.add_handler("x", hs[i]); end
			a.remove_handler("x", hs[r]);
			collectgarbage("collect"); -- clears the removed key
			a.add_handler("x", hs[r]);
			local c = stock_new();
			for i = 1, 12 do c.add_handler("x", hs[i]); end
			c.remove_handler("x", hs[r]);
			c.add_handler("x", hs[r]);
			if order(a) ~= order(c) then differ = differ + 1; end
		end
		assert.truthy(differ > 0, "stock gave the same order every time");
	end);

	it("uses its C fire_event, which stock's closures keep in step with", function ()
		local e = brisk_new();
		assert.equal("C", debug.getinfo(e.fire_event, "S").what);
		local calls = {};
		e.add_handler("x", function (d) calls[#calls + 1] = d; end);
		-- a wrapper added through stock's closure is seen by Brisk's fire_event
		e.add_wrapper("x", function (h, n, d) calls[#calls + 1] = "w"; return h(n, d); end);
		e.fire_event("x", 1);
		assert.same({ "w", 1 }, calls);
	end);

	it("raises stock's error for a handler that cannot be called", function ()
		for _, bad in ipairs({ false, {}, setmetatable({}, { __name = "Thing" }), 42 }) do
			local s, b = stock_new(), brisk_new();
			s.add_handler("x", bad);
			b.add_handler("x", bad);
			local e1 = select(2, pcall(s.fire_event, "x"));
			local e2 = select(2, pcall(b.fire_event, "x"));
			assert.equal(e1, e2);
		end
	end);

	it("lets handlers yield and resume", function ()
		local b = brisk_new();
		local seen = {};
		b.add_handler("x", function (d) seen[#seen + 1] = coroutine.yield(d); end, 2);
		b.add_handler("x", function () seen[#seen + 1] = "second"; return "done"; end, 1);
		local co = coroutine.wrap(b.fire_event);
		assert.equal("data", co("x", "data"));
		assert.equal("done", co("resumed"));
		assert.same({ "resumed", "second" }, seen);
	end);
end);
