-- mod_brisk_xml: makes Prosody use brisk.xml's C code for XML: the stream
-- parser behind util.xmppstream.new (c2s, s2s, components, BOSH, WebSocket)
-- and util.stanza's serialization.
--
-- Options (global section):
--   brisk_xml_parse = true        replace util.xmppstream.new
--   brisk_xml_serialize = true    replace util.stanza serialization
--   brisk_xml_max_depth           nesting limit of a stanza (none by default, as stock)
--   brisk_xml_max_attributes      attributes per element (none by default, as stock)
--   brisk_xml_hibernate_after = 30  seconds a stream must have been idle at a
--                                 stanza boundary before its parser is freed
--                                 (rebuilt on its next bytes); 0 disables
module:set_global();

local brisk_xml = require "brisk.loader".require("brisk.xml", module.path);

local prosody_lib = require "brisk.prosody".lib;
local modulemanager = prosody_lib "core.modulemanager";
local xmppstream = prosody_lib "util.xmppstream";

local parse = module:get_option_boolean("brisk_xml_parse", true);
local serialize = module:get_option_boolean("brisk_xml_serialize", true);
local hibernate_after = module:get_option_number("brisk_xml_hibernate_after", 30);

brisk_xml.set_limits({
	max_depth = math.tointeger(module:get_option_number("brisk_xml_max_depth", math.maxinteger));
	max_attributes = math.tointeger(module:get_option_number("brisk_xml_max_attributes", math.maxinteger));
});

--[[
Modules such as mod_c2s, mod_s2s, mod_component and mod_bosh copy
`require "util.xmppstream".new` into a local when they load. Patching the
library table only reaches modules loaded after us, and Prosody loads modules
in no fixed order. Reloading the earlier ones would close and reopen their
listening ports, must be repeated for each host that shares them, and cannot
be undone cleanly while sessions exist. Instead we rebind the captured value
itself: a module's local lives in one upvalue cell shared by all of its
closures, so walking each loaded module's functions (its environment, its
items and its event handlers, following upvalues) and setting every upvalue
that holds stock `new` to Brisk's changes what all of that module's closures
call, at once, and unload does the reverse. Library tables (package.loaded)
and the session and host tables are not walked, and brisk.xml's own fallback
to stock is excluded. Existing sessions keep the parser they were created
with.
]]
local function rebind(from, to)
	local seen, count, budget = {}, 0, 500000;
	local names = {};
	-- Never walk libraries (and with them brisk.xml's own closures), nor the
	-- big shared tables of sessions and hosts.
	for _, lib in pairs(package.loaded) do
		if type(lib) == "table" or type(lib) == "function" then seen[lib] = true; end
	end
	seen[_G] = true;
	seen[brisk_xml.new] = true;
	if prosody then
		seen[prosody] = true;
		for _, t in ipairs({ prosody.hosts, prosody.full_sessions, prosody.bare_sessions, prosody.incoming_s2s }) do
			seen[t] = true;
		end
	end
	local getupvalue, setupvalue = debug.getupvalue, debug.setupvalue;
	-- Breadth first, so that each module's own closures (a few steps from
	-- its environment) are reached before anything far away, whatever the
	-- budget; `owner` remembers which module each queued value came from.
	local queue, owner, head, tail = {}, {}, 1, 0;
	local function push(v, who)
		if (type(v) == "function" or type(v) == "table") and not seen[v] then
			seen[v] = true;
			tail = tail + 1;
			queue[tail], owner[tail] = v, who;
		end
	end
	local hosts = { "*" };
	for host in pairs(prosody and prosody.hosts or {}) do hosts[#hosts + 1] = host; end
	for _, host in ipairs(hosts) do
		for name, env in pairs(modulemanager.get_modules(host) or {}) do
			if name ~= module.name then
				local who = host == "*" and name or (name .. "@" .. host);
				push(env, who);
				if type(env) == "table" and type(rawget(env, "module")) == "table" then
					push(rawget(env, "module"), who);
				end
			end
		end
	end
	while head <= tail and budget > 0 do
		local v, who = queue[head], owner[head];
		queue[head], owner[head] = nil, nil;
		head = head + 1;
		budget = budget - 1;
		if type(v) == "function" then
			local i = 1;
			while true do
				local name, val = getupvalue(v, i);
				if name == nil then break; end
				if val == from and from ~= nil then
					setupvalue(v, i, to);
					count = count + 1;
					names[#names + 1] = who;
				else
					push(val, who);
				end
				i = i + 1;
			end
		else
			for _, val in next, v do push(val, who); end
		end
	end
	return count, names;
end

local stock_new = xmppstream.new;
local undo, replaced = brisk_xml.install({ parse = parse, serialize = serialize });
local brisk_new = xmppstream.new;
local rebound = {};
if parse and brisk_new ~= stock_new then
	local _;
	_, rebound = rebind(stock_new, brisk_new);
end
module:log("info", "brisk.xml %s installed: replaced %s; %s", brisk_xml._VERSION,
	#replaced > 0 and table.concat(replaced, ", ") or "nothing",
	parse and ("rebound util.xmppstream.new in already loaded modules: "
		.. (#rebound > 0 and table.concat(rebound, ", ") or "none"))
	or "stream parsing left to stock (brisk_xml_parse = false)");

-- Idle streams' parsers: a sweep every half of brisk_xml_hibernate_after
-- frees those of streams idle at a stanza boundary for at least that long
-- (so after between 1 and 1.5 times it). It walks every Brisk stream once
-- (about 1 ms per 10 000 streams); streams wake on their own.
if parse and hibernate_after > 0 then
	local period = math.max(1, hibernate_after / 2);
	module:add_timer(period, function ()
		local n, hibernating, streams = brisk_xml.hibernate(hibernate_after);
		if n > 0 then
			module:log("debug", "hibernated %d idle stream parsers (%d of %d streams hibernating)",
				n, hibernating, streams);
		end
		return period;
	end);
end

function module.unload()
	if parse and brisk_new ~= stock_new then
		local n = rebind(brisk_new, stock_new);
		module:log("debug", "restored stock util.xmppstream.new in %d module(s)", n);
	end
	undo();
end
