-- bench/util_events.lua — stock util.events vs brisk.events' fire_event,
-- as Prosody fires events per stanza.
--
-- core_post_stanza fires two events on the host's events object per
-- stanza a client sends: "pre-<name>/<type>" and "<name>/<type>", each
-- through a priority-ordered handler list (mod_carbons, mod_message, ...),
-- the last handler returning true. Measured with handlers that do what such
-- handlers do first (look at the stanza and return): each fire alone, an
-- event without handlers, and the two fires of a message. Both objects have
-- the same handlers; results are checked identical before timing.
--
-- Usage: eval "$(make -s env)"; lua5.4 bench/util_events.lua [--quick]
-- (make env PROSODY=13 for Prosody 13). With env BENCH_TSV=file, rows
-- "util_events\tlabel\tstock\tbrisk\tunit" are appended.
local timing = require "bench.lib.timing";
local version = timing.prosody();
timing.setup(arg and arg[1] == "--quick");

local glue = require "brisk.patch.events";
local stock_new = glue.stock().new;
local brisk_new = glue.new(require "brisk.events");

local N = 1000;

-- Handlers like Prosody's: read the stanza, decide, mostly pass.
local function carbons(event)
	local stanza = event.stanza;
	if stanza.attr.type ~= "chat" then return; end
	if event.origin.carbons_disabled then return; end
end
local function archive(event)
	local stanza = event.stanza;
	if stanza.attr.type == "error" then return; end
	event.archived = nil;
end
local function stats(event)
	event.count = (event.count or 0) + 1;
end
local function deliver(event)
	local stanza = event.stanza;
	if stanza.attr.to then return true; end
end

local function setup(new)
	local e = new();
	e.add_handler("pre-message/full", carbons, 1);
	e.add_handler("pre-message/full", stats, 10);
	e.add_handler("message/full", carbons, 1);
	e.add_handler("message/full", archive, 0.5);
	e.add_handler("message/full", stats, 10);
	e.add_handler("message/full", deliver, -1);
	e.add_handler("presence/bare", deliver, 0);
	return e;
end

local stanza = { name = "message", attr = { to = "juliet@capulet.lit/balcony", type = "chat" } };
local origin = {};
local events = {};
for i = 1, N do events[i] = { origin = origin, stanza = stanza }; end

local es, eb = setup(stock_new), setup(brisk_new);
assert(debug.getinfo(eb.fire_event, "S").what == "C");
for _, name in ipairs({ "pre-message/full", "message/full", "presence/bare", "iq/host" }) do
	assert(es.fire_event(name, events[1]) == eb.fire_event(name, events[1]), name);
end

local rows = {};
local function measure(label, short, make, unit)
	local s, b = timing.pair(make(es), make(eb), N);
	rows[#rows + 1] = { label = label, short = short, stock = s, brisk = b, unit = unit or "fires/s" };
	return s, b;
end

local function fire(name)
	return function (e)
		local f = e.fire_event;
		return function () for i = 1, N do f(name, events[i]); end end;
	end;
end

measure("fire, 4 handlers, the last returns true (message/full)", "fire, 4 handlers", fire("message/full"));
measure("fire, 2 handlers returning nil (pre-message/full)", "fire, 2 handlers", fire("pre-message/full"));
measure("fire, 1 handler returning true", "fire, 1 handler", fire("presence/bare"));
measure("fire, no handlers", "fire, none", fire("iq/host"));
-- The ceiling (benchmark-only C, build/bench/): handler arrays in a plain
-- table, a C loop that only calls them. If even this is not faster than
-- stock, no exact fire_event in C can be.
local open = package.loadlib("build/bench/brisk_bench_events_ceiling.so", "luaopen_brisk_bench_events_ceiling");
local ceiling_row;
if open then
	local arrays = {};
	for _, name in ipairs({ "message/full", "pre-message/full" }) do arrays[name] = es.get_handlers(name); end
	local cfire = open()(arrays);
	assert(cfire("message/full", events[1]) == true);
	local run = fire("message/full");
	local cs, cb = timing.pair(run(es), run({ fire_event = cfire }), N);
	ceiling_row = { label = "ceiling: a bare C loop calling the same 4 handlers (benchmark-only code)",
		short = "fire, 4 handlers, C ceiling", stock = cs, brisk = cb, unit = "fires/s" };
end
local s, b = measure("per message stanza: pre-message/full, then message/full", "per stanza", function (e)
	local f = e.fire_event;
	return function ()
		for i = 1, N do
			local ev = events[i];
			if not f("pre-message/full", ev) then f("message/full", ev); end
		end
	end;
end, "stanzas/s");
if ceiling_row then rows[#rows + 1] = ceiling_row; end

print("### util.events (brisk.events fire_event)");
print();
print(("Prosody %s's util.events vs an object with brisk.events' fire_event, same handlers, same run, runs alternating; median of %d runs of %.2f s%s.")
	:format(version, timing.RUNS, timing.RUN_SECONDS, timing.quick and " (--quick)" or ""));
print();
timing.report("util_events", rows);
print(("Per stanza: %.1fx stock; %s the 3x bar for replacing util.events' fire_event (brisk_util_events is off by default)."):format(
	b / s, b / s >= 3 and "above" or "BELOW"));
print();
