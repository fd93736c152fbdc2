-- brisk.util — Brisk's C drop-ins for Prosody's per-stanza libraries:
-- util.jid (brisk.jid), util.indexedbheap (brisk.heap) and util.events'
-- fire_event (brisk.events). All the Prosody coupling is here and in
-- brisk/util/<library>.lua; the C cores only export factories.
--
-- install{ jid = true, indexedbheap = true, events = true, rebind = true,
--          module_path = <for brisk.loader>, skip = { <values a walk leaves alone> },
--          budget = <objects per walk, default brisk.walk.default_budget> }
-- patches the chosen libraries and, unless rebind is false, then
--   1. walks the Lua state once (brisk.walk) for live objects made before
--      (server_epoll's and util.timer's heaps, prosody.events, every
--      host's events object...) and adopts them;
--   2. walks it again and rebinds every upvalue holding a replaced function
--      (util.jid's functions copied into locals by core and modules,
--      hostmanager's copy of util.events.new, copies of adopted objects'
--      fire_event) to Brisk's.
-- Returns undo() and a report: { replaced = { names }, rebound = n,
-- where = { where rebound }, adopted = { library = { where } }, walked = n,
-- cut = the walk ran out of budget }. undo() rebinds back, then undoes each
-- library, in reverse order; it returns the same kind of report.
local walk = require "brisk.walk";

local M = {};

M.libraries = { "jid", "indexedbheap", "events" };
M.cores = { jid = "brisk.jid", indexedbheap = "brisk.heap", events = "brisk.events" };

local function core(name, module_path)
	return require "brisk.loader".require(M.cores[name], module_path);
end
M.core = core;

-- What brisk/util/<name>.lua gives for one library, after loading its core.
function M.glue(name)
	return require("brisk.util." .. name);
end

-- A name for a live object found by the walk: the well-known ones by
-- their place in `prosody`, others by the library or module they were
-- reached from.
local function describe(t, who)
	local prosody = rawget(_G, "prosody");
	if type(prosody) == "table" then
		if rawget(prosody, "events") == t then return "prosody.events"; end
		for name, host in pairs(type(prosody.hosts) == "table" and prosody.hosts or {}) do
			if type(host) == "table" and rawget(host, "events") == t then
				return ("hosts[%q].events"):format(tostring(name));
			end
		end
	end
	return who;
end

function M.install(opts)
	opts = opts or {};
	local handles = {};
	for _, name in ipairs(M.libraries) do
		if opts[name] then
			handles[#handles + 1] = M.glue(name).install(core(name, opts.module_path));
		end
	end
	local skip = { opts.skip };
	for _, h in ipairs(handles) do skip[#skip + 1] = h.skip; end
	local report = { replaced = {}, rebound = 0, where = {}, adopted = {}, walked = 0, cut = false };
	for _, h in ipairs(handles) do report.replaced[#report.replaced + 1] = h.name; end
	local rebind = opts.rebind ~= false;
	if rebind then
		local claimers = {};
		for _, h in ipairs(handles) do
			if h.claims then claimers[#claimers + 1] = h; end
		end
		if #claimers > 0 then
			local found, visited, cut = walk.find(function (t)
				for _, h in ipairs(claimers) do
					if h.claims(t) then return true; end
				end
				return false;
			end, { skip = skip, budget = opts.budget });
			report.walked, report.cut = visited, cut;
			for _, f in ipairs(found) do
				for _, h in ipairs(claimers) do
					if h.claims(f[1]) then
						h.adopt(f[1], describe(f[1], f[2]));
						break;
					end
				end
			end
			for _, h in ipairs(claimers) do report.adopted[h.name] = h.adopted; end
		end
		local map = {};
		for _, h in ipairs(handles) do
			for from, to in pairs(h.map) do map[from] = to; end
		end
		local n, where, visited, cut = walk.rebind(map, { skip = skip, budget = opts.budget });
		report.rebound, report.where = n, where;
		report.walked, report.cut = report.walked + visited, report.cut or cut;
	end
	local done = false;
	local function undo()
		if done then return { rebound = 0, where = {} }; end
		done = true;
		local back_report = { rebound = 0, where = {} };
		if rebind then
			local back = {};
			for _, h in ipairs(handles) do
				if h.inverse then
					for from, to in pairs(h.inverse()) do back[from] = to; end
				else
					for from, to in pairs(h.map) do back[to] = from; end
				end
			end
			back_report.rebound, back_report.where = walk.rebind(back, { skip = skip, budget = opts.budget });
		end
		for i = #handles, 1, -1 do handles[i].undo(); end
		return back_report;
	end
	return undo, report, handles;
end

return M;
