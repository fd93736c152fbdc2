-- brisk.patch.stanza — brisk.xml's serializer in place of util.stanza's.
--
-- functions(core): Brisk's __tostring and top_tag for this util.stanza
-- (brisk.xml.serializer, falling back on stock's own for what it does not
-- serialize plainly) and its xml_escape, as { __tostring =, top_tag =,
-- xml_escape = }.
--
-- install(core): stanza_mt.__tostring, stanza_mt.top_tag and
-- util.stanza.xml_escape become Brisk's. Every stanza has stanza_mt as its
-- metatable, so nothing captured needs rebinding for those two methods;
-- xml_escape copies other code took are left to stock (it is a small part
-- of what they do). undo() restores each field where Brisk's is still in
-- place, so a later patch by someone else is left alone.
local prosody_lib = require "brisk.prosody".lib;

local M = {};

-- The C core (see brisk.patch).
M.core = "brisk.xml";

-- Stock's functions, taken the first time (later, the fields may hold
-- Brisk's).
local stock;

function M.stock()
	if not stock then
		local st = prosody_lib "util.stanza";
		local mt = st.stanza_mt;
		assert(type(mt) == "table", "util.stanza has no stanza_mt");
		stock = { __tostring = mt.__tostring, top_tag = mt.top_tag, xml_escape = st.xml_escape };
		for name, f in pairs(stock) do
			assert(type(f) == "function", "util.stanza has no function " .. name);
		end
	end
	return stock;
end

-- One set per C core, so that installing twice sees the same functions.
local built = setmetatable({}, { __mode = "k" });

function M.functions(core)
	if built[core] then return built[core]; end
	local mt, s = prosody_lib "util.stanza".stanza_mt, M.stock();
	local tostring_, top_tag = core.serializer(mt, s.__tostring, s.top_tag);
	built[core] = { __tostring = tostring_, top_tag = top_tag, xml_escape = core.xml_escape };
	return built[core];
end

function M.install(core)
	local st = prosody_lib "util.stanza";
	local where = { __tostring = st.stanza_mt, top_tag = st.stanza_mt, xml_escape = st };
	local orig, brisk = M.stock(), M.functions(core);
	local mine = {};
	for name, t in pairs(where) do
		if t[name] ~= brisk[name] then
			t[name] = brisk[name];
			mine[name] = true;
		end
	end
	return {
		name = next(mine) and "util.stanza serialization" or nil;
		map = {};
		skip = {};
		undo = function ()
			for name in pairs(mine) do
				if where[name][name] == brisk[name] then where[name][name] = orig[name]; end
			end
		end;
	};
end

return M;
