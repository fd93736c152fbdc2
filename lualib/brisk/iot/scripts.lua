-- brisk.iot.scripts — hook scripts for mod_brisk_iot.
--
-- A hook script is a Lua file named by iot_hook_scripts (globs allowed in
-- the file name). It runs in its own environment holding only safe
-- standard functions and a small API:
--   on(event, [pattern,] fn)   call fn(ev) for "online", "offline", "state",
--                              "flapping", "silent" or "*" events of the
--                              devices matching the JID glob pattern
--   log(level, fmt, ...)       Prosody's log, tagged with the script name
--   send_message(to, text)     a chat message from the host
--   device(jid)                the engine's view of one device, or nil
--   config                     a copy of iot_script_config
--   store                      a table kept between events (not reloads)
--   now()                      the current time, seconds
--   json                       encode/decode (util.json)
-- A script that errors or runs too long (an instruction budget) is logged
-- and counted; the other scripts and the server carry on.

local presence = require "brisk.presence";

local M = {};

-- One budget per call, in VM instructions counted by a debug hook.
M.INSTRUCTION_BUDGET = 10000000;

local SAFE = {
	"assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
	"tostring", "type", "xpcall", "rawequal", "rawget", "rawlen", "rawset",
	"setmetatable", "getmetatable", "_VERSION",
};
local SAFE_LIBS = {
	string = { "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match", "rep",
		"reverse", "sub", "upper", "pack", "unpack", "packsize" },
	table = { "concat", "insert", "move", "pack", "remove", "sort", "unpack" },
	math = { "abs", "ceil", "cos", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger", "min",
		"mininteger", "modf", "pi", "sin", "sqrt", "tan", "tointeger", "type", "ult", "random" },
	utf8 = { "char", "charpattern", "codepoint", "codes", "len", "offset" },
	os = { "clock", "date", "difftime", "time" },
};

local KINDS = { online = true, offline = true, state = true, flapping = true, silent = true, ["*"] = true };

local function copy_lib(name)
	local t = {};
	for _, f in ipairs(SAFE_LIBS[name]) do t[f] = _G[name][f]; end
	return t;
end

local function deep_copy(v, seen)
	if type(v) ~= "table" then return v; end
	seen = seen or {};
	if seen[v] then return seen[v]; end
	local t = {};
	seen[v] = t;
	for k, x in pairs(v) do t[deep_copy(k, seen)] = deep_copy(x, seen); end
	return t;
end

-- Run f(...) with an instruction budget; returns pcall's results.
local function guarded(f, ...)
	local old_hook, old_mask, old_count = debug.gethook();
	debug.sethook(function () error("hook script exceeded its instruction budget", 2); end, "", M.INSTRUCTION_BUDGET);
	local res = table.pack(pcall(f, ...));
	debug.sethook(old_hook, old_mask or "", old_count or 0);
	return table.unpack(res, 1, res.n);
end
M.guarded = guarded;

-- Expand "dir/*.lua"-style paths: globs in the last component only.
function M.expand(patterns, list_dir)
	local files, seen = {}, {};
	for _, p in ipairs(patterns) do
		local dir, base = p:match("^(.*)/([^/]*)$");
		if not dir then dir, base = ".", p; end
		if not base:find("[*?]") then
			if not seen[p] then seen[p] = true; files[#files + 1] = p; end
		else
			local g = presence.glob(base:gsub("@", "\\@") .. "@x");
			local names = list_dir(dir ~= "" and dir or "/") or {};
			table.sort(names);
			for _, name in ipairs(names) do
				if name:sub(1, 1) ~= "." and g and g:match(name:lower() .. "@x") then
					local path = (dir == "" and "" or dir) .. "/" .. name;
					if not seen[path] then seen[path] = true; files[#files + 1] = path; end
				end
			end
		end
	end
	return files;
end

-- api: { log(level, fmt, ...), send_message(to, text), device(jid), config,
-- now(), json, read_file(path) }. Returns a script set, and a list of
-- load errors ("path: message").
function M.load(paths, api)
	local set = { handlers = {}, scripts = {}, errors = 0 };
	local errors = {};
	for _, path in ipairs(paths) do
		local name = path:match("([^/]*)$");
		local env = {};
		for _, k in ipairs(SAFE) do env[k] = _G[k]; end
		for lib in pairs(SAFE_LIBS) do env[lib] = copy_lib(lib); end
		env.store = {};
		env.config = deep_copy(api.config or {});
		env.json = api.json;
		env.now = api.now;
		env.device = api.device;
		env.send_message = api.send_message;
		env.log = function (level, fmt, ...)
			api.log(level, "[%s] " .. tostring(fmt), name, ...);
		end
		env.print = function (...)
			local t = table.pack(...);
			for i = 1, t.n do t[i] = tostring(t[i]); end
			api.log("info", "[%s] %s", name, table.concat(t, "\t"));
		end
		env.on = function (kind, pattern, fn)
			if fn == nil and type(pattern) == "function" then pattern, fn = nil, pattern; end
			if not KINDS[kind] then error(("on(): unknown event '%s'"):format(tostring(kind)), 2); end
			if type(fn) ~= "function" then error("on(): the handler must be a function", 2); end
			local g;
			if pattern ~= nil then
				local err;
				g, err = presence.glob(tostring(pattern));
				if not g then error(("on(): bad pattern '%s': %s"):format(tostring(pattern), err), 2); end
			end
			local list = set.handlers[kind] or {};
			set.handlers[kind] = list;
			list[#list + 1] = { glob = g, fn = fn, script = name };
		end
		env._G = env;
		local src, rerr = api.read_file(path);
		local chunk, err;
		if src then
			chunk, err = load(src, "@" .. path, "t", env);
		else
			err = rerr or "cannot read";
		end
		if chunk then
			local ok, perr = guarded(chunk);
			if not ok then err = tostring(perr); chunk = nil; end
		end
		if chunk then
			set.scripts[#set.scripts + 1] = name;
		else
			errors[#errors + 1] = path .. ": " .. tostring(err);
		end
	end
	return set, errors;
end

-- Call every handler for ev; errors are contained and reported to on_error.
function M.dispatch(set, ev, on_error)
	local calls = 0;
	for _, kind in ipairs{ ev.kind, "*" } do
		for _, h in ipairs(set.handlers[kind] or {}) do
			if not h.glob or h.glob:match(ev.jid) then
				calls = calls + 1;
				-- Each handler gets its own copy, so one script cannot
				-- change what the next one (or a webhook) sees.
				local copy = {};
				for k, v in pairs(ev) do
					if type(v) == "table" then v = deep_copy(v); end
					copy[k] = v;
				end
				local ok, err = guarded(h.fn, copy);
				if not ok then
					set.errors = set.errors + 1;
					if on_error then on_error(h.script, err); end
				end
			end
		end
	end
	return calls;
end

return M;
