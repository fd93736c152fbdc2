-- brisk.patch.walk — finding what Prosody captured before Brisk loaded.
--
-- Prosody's libraries and modules copy library functions into locals when
-- they load (`local jid_split = require "util.jid".split`), and keep objects
-- (the timer heap, events objects) in locals too. Such a local lives in one
-- upvalue cell shared by every closure that uses it, so one
-- debug.setupvalue through any of those closures changes what all of them
-- see. This walks everything reachable in the Lua state, breadth first from
-- the registry (package.loaded and so every library, _G and so `prosody`,
-- the hosts and their events, every loaded module through
-- core.modulemanager's closures), following table keys and values,
-- metatables and the upvalues of Lua functions, and lets the caller look at
-- each table and rewrite upvalues.
--
-- Not walked: C functions (their upvalues are C code's business), threads
-- (a suspended coroutine's locals), userdata, the big per-connection tables
-- (prosody.full_sessions, bare_sessions, incoming_s2s, each host's sessions
-- and s2sout; a session's closures share their module's cells, which are
-- reached through the module), Brisk's own libraries (they hold the stock
-- functions on purpose) and whatever the caller adds to `skip`. A budget
-- bounds the walk on a very large server; breadth first, libraries and
-- modules are reached first.
local M = {};

M.default_budget = 1000000;

local getupvalue, setupvalue = debug.getupvalue, debug.setupvalue;
local getmetatable, getinfo = debug.getmetatable, debug.getinfo;
local type, next, pairs, rawget = type, next, pairs, rawget;

-- Values a walk never enters: sessions, Brisk's own libraries and the
-- caller's extra `skip` (a set, or a list of sets).
local function base_seen(skip)
	local seen = {};
	for name, lib in pairs(package.loaded) do
		if type(name) == "string" and name:match("^brisk%.") then seen[lib] = true; end
	end
	local prosody = rawget(_G, "prosody");
	if type(prosody) == "table" then
		for _, k in ipairs({ "full_sessions", "bare_sessions", "incoming_s2s" }) do
			if type(prosody[k]) == "table" then seen[prosody[k]] = true; end
		end
		for _, host in pairs(type(prosody.hosts) == "table" and prosody.hosts or {}) do
			if type(host) == "table" then
				for _, k in ipairs({ "sessions", "s2sout" }) do
					if type(rawget(host, k)) == "table" then seen[rawget(host, k)] = true; end
				end
			end
		end
	end
	for _, set in ipairs(skip or {}) do
		for v in pairs(set) do seen[v] = true; end
	end
	return seen;
end

-- Where a walk starts, each with a name for logs: every loaded module
-- first (so that what a module captured is found, and named, through the
-- module itself rather than through a library that keeps one of its
-- closures, as net.server keeps listeners), then every library, _G and the
-- registry.
local function roots()
	local list = {};
	local ok, modulemanager = pcall(require "brisk.prosody".lib, "core.modulemanager");
	local prosody = rawget(_G, "prosody");
	if ok and type(modulemanager) == "table" and type(prosody) == "table" then
		local hosts = { "*" };
		for host in pairs(prosody.hosts or {}) do hosts[#hosts + 1] = host; end
		table.sort(hosts);
		for _, host in ipairs(hosts) do
			local mods = {};
			for name, env in pairs(modulemanager.get_modules(host) or {}) do mods[#mods + 1] = { name, env }; end
			table.sort(mods, function (a, b) return a[1] < b[1]; end);
			for _, m in ipairs(mods) do
				local name, env = m[1], m[2];
				local who = host == "*" and ("mod_" .. name) or ("mod_" .. name .. "@" .. host);
				list[#list + 1] = { env, who };
				if type(env) == "table" and type(rawget(env, "module")) == "table" then
					list[#list + 1] = { rawget(env, "module"), who };
				end
			end
		end
	end
	local libs = {};
	for name, lib in pairs(package.loaded) do
		if type(name) == "string" then libs[#libs + 1] = { lib, name }; end
	end
	table.sort(libs, function (a, b) return a[2] < b[2]; end);
	for _, l in ipairs(libs) do list[#list + 1] = l; end
	list[#list + 1] = { _G, "_G" };
	list[#list + 1] = { debug.getregistry(), "registry" };
	return list;
end

-- walk{ table = fn(t, who), upvalue = fn(f, i, value, who), skip = { set... }, budget = n }:
-- calls `table` for each table and `upvalue` for each upvalue of each Lua
-- function reached (an upvalue callback that returns true stops the walk
-- there: the value is not entered). Returns the number of objects visited
-- and whether the budget ran out.
function M.walk(opts)
	local seen = base_seen(opts.skip);
	local on_table, on_upvalue = opts.table, opts.upvalue;
	local budget = opts.budget or M.default_budget;
	local queue, owner, head, tail = {}, {}, 1, 0;
	local function push(v, who)
		local t = type(v);
		if (t == "table" or t == "function") and not seen[v] then
			seen[v] = true;
			tail = tail + 1;
			queue[tail], owner[tail] = v, who;
		end
	end
	for _, r in ipairs(roots()) do push(r[1], r[2]); end
	local visited = 0;
	while head <= tail do
		if visited >= budget then return visited, true; end
		local v, who = queue[head], owner[head];
		queue[head], owner[head] = nil, nil;
		head = head + 1;
		visited = visited + 1;
		if type(v) == "function" then
			if getinfo(v, "S").what ~= "C" then
				local i = 1;
				while true do
					local name, val = getupvalue(v, i);
					if name == nil then break; end
					if not (on_upvalue and on_upvalue(v, i, val, who)) then push(val, who); end
					i = i + 1;
				end
			end
		else
			if on_table then on_table(v, who); end
			local mt = getmetatable(v);
			if mt then push(mt, who); end
			for k, val in next, v do
				push(k, who);
				push(val, who);
			end
		end
	end
	return visited, false;
end

-- rebind(map, opts): every upvalue of a Lua function holding a key of map
-- is set to map's value for it. Returns how many were set and the sorted
-- list of where they were (library or module names).
function M.rebind(map, opts)
	if next(map) == nil then return 0, {}, 0, false; end
	local count, where = 0, {};
	local visited, cut = M.walk({
		skip = opts and opts.skip;
		budget = opts and opts.budget;
		upvalue = function (f, i, val, who)
			local to = map[val];
			if to ~= nil then
				setupvalue(f, i, to);
				count = count + 1;
				where[who] = true;
				return true;
			end
		end;
	});
	local names = {};
	for who in pairs(where) do names[#names + 1] = who; end
	table.sort(names);
	return count, names, visited, cut;
end

-- find(pred, opts): the tables for which pred(t) is true, each once.
function M.find(pred, opts)
	local found = {};
	local visited, cut = M.walk({
		skip = opts and opts.skip;
		budget = opts and opts.budget;
		table = function (t, who)
			if pred(t) then found[#found + 1] = { t, who }; end
		end;
	});
	return found, visited, cut;
end

return M;
