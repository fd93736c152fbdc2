-- brisk.patch.install and its undo, in process: what mod_brisk_util does to
-- a running Prosody, shown on stand-ins for what Prosody has when Brisk
-- loads: a library that copied util.jid's functions into locals, a server
-- library whose timer heap (with timers in it) lives in an upvalue, an
-- events object with handlers whose fire_event other code copied, a
-- factory that copied util.events.new. Installed, each must reach Brisk's
-- C code (and behave as before); undone, each must be stock again, with
-- its state (timers, handlers) intact.
local patch = require "brisk.patch";
local jid_lib = require "brisk.prosody".lib("util.jid");
local heap_lib = require "brisk.prosody".lib("util.indexedbheap");
local events_lib = require "brisk.prosody".lib("util.events");

local stock_jid = require "brisk.patch.jid".stock();
local stock_heap = require "brisk.patch.indexedbheap".stock();
local stock_events = require "brisk.patch.events".stock();

local function is_c(f) return debug.getinfo(f, "S").what == "C"; end

local function upvalue(f, name)
	for i = 1, math.huge do
		local n, v = debug.getupvalue(f, i);
		if n == nil then return nil; end
		if n == name then return v; end
	end
end

-- Stand-ins, built like Prosody's own code builds them.
local function make_world()
	local w = {};
	-- core.stanza_router-like: locals copied from util.jid at load
	local jid_split, jid_prep, jid_bare = jid_lib.split, jid_lib.prep, jid_lib.bare;
	w.router = function (to) return jid_split(to), jid_prep(to), jid_bare(to); end;
	-- net.server_epoll-like: a heap in a local, timers inserted before Brisk
	local timers = heap_lib.create();
	w.ids = {};
	for i = 1, 50 do w.ids[i] = timers:insert("timer" .. i, 100 + i % 7); end
	w.reschedule = function (id, t) timers:reprioritize(id, t); end;
	w.next_timer = function () return timers:pop(); end;
	w.timers = function () return timers; end;
	-- prosody.events-like, with handlers, and a copy of its fire_event
	local events = events_lib.new();
	w.calls = {};
	events.add_handler("stanza", function (d) w.calls[#w.calls + 1] = "low:" .. d; end, -1);
	events.add_handler("stanza", function (d) w.calls[#w.calls + 1] = "high:" .. d; end, 10);
	local fire_event = events.fire_event;
	w.events = events;
	w.fire = function (d) return fire_event("stanza", d); end;
	-- core.hostmanager-like: a copy of util.events.new
	local events_new = events_lib.new;
	w.new_events = function () return events_new(); end;
	return w;
end

-- Reachable from the registry, as Prosody's libraries are.
local function publish(w)
	package.loaded["spec.brisk_util_world"] = w;
end

describe("brisk.patch.install", function ()
	local w;
	before_each(function ()
		w = make_world();
		publish(w);
	end);
	after_each(function ()
		package.loaded["spec.brisk_util_world"] = nil;
	end);

	it("reaches copies and live objects made before it, and undo gives them back", function ()
		local undo, report = patch.install({ "jid", "indexedbheap", "events" });
		assert.same({ "util.jid", "util.indexedbheap", "util.events" }, report.replaced);
		assert.is_false(report.cut);

		-- the library's fields and the copies in locals
		for _, name in ipairs({ "split", "bare", "prep", "prepped_split", "escape" }) do
			assert.is_true(is_c(jid_lib[name]), name);
		end
		assert.is_true(is_c(upvalue(w.router, "jid_split")));
		assert.is_true(is_c(upvalue(w.router, "jid_prep")));
		assert.same({ "a", "b", "c" }, { jid_lib.split("a@b/c") });
		assert.same({ "A", "a@b", "A@B" }, { w.router("A@B") });

		-- the heap, converted in place: the same table, C methods, same timers
		local timers = w.timers();
		assert.is_true(is_c(timers.pop));
		local ref = stock_heap.create();
		for i = 1, 50 do ref:insert("timer" .. i, 100 + i % 7); end
		w.reschedule(w.ids[3], 1);
		ref:reprioritize(w.ids[3], 1);
		for _ = 1, 10 do assert.same({ ref:pop() }, { w.next_timer() }); end

		-- the events object: Brisk's fire_event, the copy rebound, same order
		assert.is_true(is_c(w.events.fire_event));
		assert.is_true(is_c(upvalue(w.fire, "fire_event")));
		w.fire("x");
		assert.same({ "high:x", "low:x" }, w.calls);
		-- the copy of new makes objects with Brisk's fire_event
		assert.are_not.equal(stock_events.new, upvalue(w.new_events, "events_new"));
		assert.is_true(is_c(w.new_events().fire_event));
		assert.is_true(is_c(events_lib.new().fire_event));
		local later_heap = heap_lib.create();
		later_heap:insert("later", 1);

		local back = undo();
		assert.truthy(back.rebound >= 4);
		for _, name in ipairs(require "brisk.patch.jid".names) do
			assert.equal(stock_jid[name], jid_lib[name], name);
		end
		assert.equal(stock_jid.split, upvalue(w.router, "jid_split"));
		assert.equal(stock_jid.prep, upvalue(w.router, "jid_prep"));
		assert.equal(stock_heap.create, heap_lib.create);
		assert.equal(stock_events.new, events_lib.new);
		assert.equal(stock_events.new, upvalue(w.new_events, "events_new"));
		-- the heap is stock's again, its remaining timers intact
		assert.equal(stock_heap.mt, getmetatable(timers));
		assert.is_nil(rawget(timers, "pop"));
		for _ = 1, 40 do assert.same({ ref:pop() }, { w.next_timer() }); end
		assert.is_nil(timers:peek());
		assert.equal(stock_heap.mt, getmetatable(later_heap));
		assert.same({ 1, "later", 1.5 }, { later_heap:pop() });
		-- the events object's stock fire_event, in the object and the copy
		assert.is_false(is_c(w.events.fire_event));
		assert.is_false(is_c(upvalue(w.fire, "fire_event")));
		w.fire("y");
		assert.same({ "high:x", "low:x", "high:y", "low:y" }, w.calls);
	end);

	it("replaces only what its switches say", function ()
		local undo, report = patch.install({ "indexedbheap" });
		assert.same({ "util.indexedbheap" }, report.replaced);
		assert.equal(stock_jid.split, jid_lib.split);
		assert.equal(stock_jid.split, upvalue(w.router, "jid_split"));
		assert.is_false(is_c(w.events.fire_event));
		assert.is_true(is_c(w.timers().insert));
		undo();
		assert.is_nil(rawget(w.timers(), "insert"));
	end);

	it("can be installed again after an undo, and undo twice is harmless", function ()
		for _ = 1, 2 do
			local undo = patch.install({ "jid", "indexedbheap", "events" });
			-- stock's fallbacks still are stock's (no rebinding loop through Brisk)
			assert.has_error(function () jid_lib.split(false) end);
			assert.equal(0, select("#", jid_lib.prep("@")));
			assert.is_true(is_c(w.timers().insert));
			w.fire("z");
			undo();
			undo();
		end
		assert.equal(stock_jid.split, jid_lib.split);
		assert.equal(stock_jid.bare, upvalue(w.router, "jid_bare"));
	end);

	it("leaves a heap it cannot hold exactly as it is", function ()
		local odd = stock_heap.create();
		odd:insert("a", "text priority");
		w.odd = odd;
		local undo, report = patch.install({ "indexedbheap" });
		assert.equal(stock_heap.mt, getmetatable(odd));
		local notes = table.concat(report.adopted["util.indexedbheap"], "\n");
		assert.truthy(notes:match("left stock"), notes);
		undo();
		assert.same({ "text priority", "a", 1.5 }, { odd:pop() });
	end);

	it("keeps events objects exact whichever closure is used", function ()
		local undo = patch.install({ "events" });
		-- a wrapper added through stock's add_wrapper, captured before
		local e = w.events;
		local add_wrapper = e.add_wrapper;
		add_wrapper("stanza", function (h, name, data) w.calls[#w.calls + 1] = "wrapped"; return h(name, data); end);
		w.fire("q");
		assert.same({ "wrapped", "high:q", "low:q" }, w.calls);
		undo();
		w.fire("r");
		assert.same({ "wrapped", "high:q", "low:q", "wrapped", "high:r", "low:r" }, w.calls);
	end);
end);
