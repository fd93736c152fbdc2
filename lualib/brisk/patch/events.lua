-- brisk.patch.events — brisk.events' C fire_event in Prosody's util.events
-- objects.
--
-- An events object keeps its state in the upvalues of the closures stock's
-- new() made; Brisk's fire_event reads that state where it is, and every
-- other function of the object stays stock's (see modules/events/events.c).
-- So Brisk can take over an object that already has handlers and give it
-- back at any time, and stock's closures captured anywhere stay exact.
--
-- install(core): util.events.new makes objects with Brisk's fire_event from
-- now on; claims(t)/adopt(t) give a live stock object (prosody.events, each
-- host's, net.http.server's...) Brisk's fire_event; `map` pairs each
-- replaced function (stock's new, each adopted object's stock fire_event)
-- with Brisk's, for rebinding the copies other code took; undo() restores
-- new and every object's fire_event (where it is still Brisk's).
local prosody_lib = require "brisk.prosody".lib;

local M = {};

-- The C core (see brisk.patch).
M.core = "brisk.events";

local stock;

-- Stock's new, where its fire_event is defined, and its error message for a
-- handler that cannot be called (learnt by provoking it: the position in
-- events.lua is part of the message).
local function stock_parts()
	if not stock then
		local lib = prosody_lib "util.events";
		local probe = lib.new();
		local info = debug.getinfo(probe.fire_event, "S");
		probe.add_handler(1, false);
		local _, err = pcall(probe.fire_event, 1);
		local prefix, suffix = tostring(err):match("^(.*attempt to call a )boolean( value.*)$");
		assert(prefix, "util.events: unexpected error for a bad handler: " .. tostring(err));
		stock = {
			new = lib.new;
			source = info.source;
			linedefined = info.linedefined;
			prefix = prefix;
			suffix = suffix;
		};
	end
	return stock;
end
M.stock = stock_parts;

local function upvalue(f, name)
	for i = 1, math.huge do
		local n, v = debug.getupvalue(f, i);
		if n == nil then return nil; end
		if n == name then return i, v; end
	end
end

-- What brisk.events.fire_event needs for the stock object t, or nil when t
-- is no stock events object (or one whose fire_event someone replaced).
function M.spec(t)
	local s = stock_parts();
	local fire = rawget(t, "fire_event");
	if type(fire) ~= "function" then return nil; end
	local info = debug.getinfo(fire, "S");
	if info.source ~= s.source or info.linedefined ~= s.linedefined then return nil; end
	local gw = upvalue(fire, "global_wrappers");
	local _, wrappers = upvalue(fire, "wrappers");
	local _, inner = upvalue(fire, "_fire_event");
	if not gw or type(wrappers) ~= "table" or type(inner) ~= "function" then return nil; end
	local _, handlers = upvalue(inner, "handlers");
	local hook = upvalue(inner, "active_debug_hook");
	if not hook or type(handlers) ~= "table" then return nil; end
	return {
		stock = fire;
		gw = gw;
		inner = inner;
		hook = hook;
		handlers = handlers;
		wrappers = wrappers;
		call_error_prefix = s.prefix;
		call_error_suffix = s.suffix;
	};
end

-- new(core): a function like util.events.new whose objects have Brisk's
-- fire_event.
function M.new(core)
	local s = stock_parts();
	return function ()
		local e = s.new();
		e.fire_event = core.fire_event(M.spec(e));
		return e;
	end;
end

function M.install(core)
	local lib = prosody_lib "util.events";
	local s = stock_parts();
	local objects = setmetatable({}, { __mode = "k" }); -- object -> { stock =, brisk = }
	local adopted = {};
	local map = {};
	local function adopt(t)
		local spec = M.spec(t);
		if not spec then return false; end
		local fire = core.fire_event(spec);
		objects[t] = { stock = spec.stock, brisk = fire };
		map[spec.stock] = fire;
		t.fire_event = fire;
		return true;
	end
	local function new()
		local e = s.new();
		adopt(e);
		return e;
	end
	map[s.new] = new;
	lib.new = new;
	local handle = {
		name = "util.events";
		map = map;
		skip = { [s.new] = true, [new] = true, [adopt] = true };
		adopted = adopted;
	};
	function handle.claims(t)
		return M.spec(t) ~= nil;
	end
	function handle.adopt(t, who)
		if adopt(t) then
			adopted[#adopted + 1] = who;
			return true;
		end
		return false;
	end
	function handle.status()
		local n = 0;
		for t, rec in pairs(objects) do
			if rawget(t, "fire_event") == rec.brisk then n = n + 1; end
		end
		return n, 0;
	end
	function handle.inverse()
		local back = { [new] = s.new };
		for _, rec in pairs(objects) do back[rec.brisk] = rec.stock; end
		return back;
	end
	function handle.undo()
		if lib.new == new then lib.new = s.new; end
		for t, rec in pairs(objects) do
			if rawget(t, "fire_event") == rec.brisk then t.fire_event = rec.stock; end
		end
	end
	return handle;
end

return M;
