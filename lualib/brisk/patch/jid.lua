-- brisk.patch.jid — brisk.jid (C) in place of Prosody's util.jid.
--
-- new(core): the C functions, built from this Prosody's util.jid (its
-- functions, which the C code falls back to for arguments it leaves to
-- stock) and util.encodings' stringprep profiles (which prep and
-- prepped_split call for anything that is not plain ASCII).
--
-- install(core): sets util.jid's fields to the C functions and returns a
-- handle for brisk.patch: `map` pairs each stock function with its C
-- replacement (for rebinding the copies other code took), `skip` lists what
-- a rebinding walk must leave alone (stock's own closures), undo() restores
-- the fields. The functions are pure, so a copy left unbound anywhere is
-- merely stock's slower equivalent.
local prosody_lib = require "brisk.prosody".lib;

local M = {};

-- The C core (see brisk.patch).
M.core = "brisk.jid";

M.names = { "split", "bare", "prepped_split", "join", "prep", "compare", "node", "host", "resource", "escape", "unescape" };

-- The stock functions, taken from util.jid the first time (later, the
-- library may hold Brisk's).
local stock;

local function stock_functions()
	if not stock then
		local lib = prosody_lib "util.jid";
		stock = {};
		for _, name in ipairs(M.names) do
			assert(type(lib[name]) == "function", "util.jid has no function " .. name);
			stock[name] = lib[name];
		end
	end
	return stock;
end
M.stock = stock_functions;

function M.new(core)
	local sp = prosody_lib "util.encodings".stringprep;
	return core.new({
		nodeprep = sp.nodeprep;
		nameprep = sp.nameprep;
		resourceprep = sp.resourceprep;
		stock = stock_functions();
	});
end

function M.install(core)
	local lib = prosody_lib "util.jid";
	local orig = stock_functions();
	local brisk = M.new(core);
	local map, skip = {}, {};
	for _, name in ipairs(M.names) do
		map[orig[name]] = brisk[name];
		skip[orig[name]] = true;
		lib[name] = brisk[name];
	end
	return {
		name = "util.jid";
		functions = brisk;
		map = map;
		skip = skip;
		undo = function ()
			for _, name in ipairs(M.names) do
				if lib[name] == brisk[name] then lib[name] = orig[name]; end
			end
		end;
	};
end

return M;
