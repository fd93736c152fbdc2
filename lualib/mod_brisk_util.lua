-- mod_brisk_util: Brisk's C drop-ins for the Prosody libraries every stanza
-- goes through: util.jid (split, bare, prep... of every to/from),
-- util.indexedbheap (server_epoll's timers, rescheduled on every read) and
-- util.events' fire_event. A global module; list it anywhere in
-- modules_enabled.
--
-- Options (global section), one switch per library:
--   brisk_util_jid = true             util.jid in C
--   brisk_util_indexedbheap = true    util.indexedbheap in C, live heaps converted
--   brisk_util_events = false         fire_event in C (off: it does not pay, see docs/util.md)
--   brisk_util_walk_budget = 1000000  objects visited per walk of the Lua state (see brisk/patch/walk.lua)
--
-- Loading patches the libraries, converts the live objects made before it
-- (server_epoll's timer heap, prosody.events, each host's events) and
-- rebinds the copies of replaced functions that core and modules took when
-- they loaded (see brisk/patch.lua and brisk/patch/walk.lua); unloading
-- undoes it all, live objects included. docs/util.md has the details.
module:set_global();

local patch = require "brisk.patch";

local names = {};
for _, lib in ipairs({ { "jid", true }, { "indexedbheap", true }, { "events", false } }) do
	if module:get_option_boolean("brisk_util_" .. lib[1], lib[2]) then names[#names + 1] = lib[1]; end
end
local opts = {
	module_path = module.path;
	budget = module:get_option_number("brisk_util_walk_budget", require "brisk.patch.walk".default_budget);
};

-- mod_brisk_util's own closures hold nothing stock, but its environment
-- is no place to rebind either.
opts.skip = { [_ENV] = true, [module] = true };

local t0 = os.clock();
local undo, report, handles = patch.install(names, opts);
local took = os.clock() - t0;

local function list(t)
	return (t and #t > 0) and table.concat(t, ", ") or "none";
end

local adopted = {};
for name, where in pairs(report.adopted) do
	adopted[#adopted + 1] = ("%s: %s"):format(name, list(where));
end
table.sort(adopted);
module:log("info", "brisk.util %s installed: replaced %s; live objects converted: %s; rebound %d captured function(s) in: %s (%d objects walked, %.0f ms%s)",
	patch.core("jid", module.path)._VERSION, list(report.replaced), list(adopted), report.rebound,
	list(report.where), report.walked, took * 1000,
	report.cut and "; walk budget exhausted: some copies left stock (still correct, slower)" or "");

function module.unload()
	for _, h in ipairs(handles) do
		if h.status then
			local live, back = h.status();
			if back > 0 then
				module:log("info", "%s: %d Brisk object(s) had gone back to stock's representation (their stock fields were used)", h.name, back);
			end
			module:log("debug", "%s: %d live Brisk object(s) handed back", h.name, live);
		end
	end
	local r = undo();
	module:log("info", "brisk.util uninstalled: restored %s; rebound %d function(s) back in: %s",
		list(report.replaced), r.rebound, list(r.where));
end
