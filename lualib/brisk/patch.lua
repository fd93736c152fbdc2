-- brisk.patch — where Brisk patches Prosody. Every replacement of a Prosody
-- function or object by a Brisk C core is made (and undone) here and in the
-- files of brisk/patch/, one per Prosody library:
--
--   brisk/patch/xmppstream.lua    util.xmppstream.new      (brisk.xml's parser)
--   brisk/patch/stanza.lua        util.stanza's serializer (brisk.xml's)
--   brisk/patch/jid.lua           util.jid                 (brisk.jid)
--   brisk/patch/indexedbheap.lua  util.indexedbheap        (brisk.heap)
--   brisk/patch/events.lua        util.events' fire_event  (brisk.events)
--   brisk/patch/walk.lua          finding what Prosody captured before Brisk loaded
--
-- The C cores only export factories and pure functions; which Prosody
-- function each stands in for, and putting it in place, is decided here.
--
-- A library's file gives `core`, the name of its C core, and
-- install(core), which patches the library's module table and returns a
-- handle: { name = what it replaced (nil when an earlier install had
-- already), map = { [stock function] = Brisk's }, skip = { values a
-- walk must leave alone }, undo = function, and optionally claims(t)/adopt(t)
-- for live objects to convert, inverse() for the way back, status() }.
--
-- install(names, opts) installs the libraries named (e.g. { "jid",
-- "indexedbheap" }) and, unless opts.rebind is false, then
--   1. walks the Lua state once (brisk.patch.walk) for live objects made
--      before (server_epoll's and util.timer's heaps, prosody.events, every
--      host's events object...) and has their library adopt them;
--   2. walks it again and rebinds every upvalue holding a replaced function
--      (functions copied into locals by core and modules when they loaded)
--      to Brisk's.
-- opts: module_path (for brisk.loader, which finds the C cores in a
-- luarocks tree), skip = { values a walk leaves alone }, budget = objects
-- per walk (default brisk.patch.walk.default_budget).
-- Returns undo() and a report: { replaced = { names }, rebound = n,
-- where = { where rebound }, adopted = { library = { where } }, walked = n,
-- cut = the walk ran out of budget }, and the handles. undo() rebinds back,
-- then undoes each library, in reverse order; it returns the same kind of
-- report.
local walk = require "brisk.patch.walk";

local M = {};

-- The library's file: brisk/patch/<name>.lua.
function M.glue(name)
	return require("brisk.patch." .. name);
end

-- The C core a library's replacement lives in.
function M.core(name, module_path)
	return require "brisk.loader".require(M.glue(name).core, module_path);
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

function M.install(names, opts)
	assert(type(names) == "table", "brisk.patch.install: a list of library names expected");
	opts = opts or {};
	local handles = {};
	for _, name in ipairs(names) do
		handles[#handles + 1] = M.glue(name).install(M.core(name, opts.module_path));
	end
	local skip = { opts.skip };
	for _, h in ipairs(handles) do skip[#skip + 1] = h.skip; end
	local report = { replaced = {}, rebound = 0, where = {}, adopted = {}, walked = 0, cut = false };
	-- (a library already patched by an earlier install is not replaced again)
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
