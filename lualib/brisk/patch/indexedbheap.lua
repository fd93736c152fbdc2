-- brisk.patch.indexedbheap — brisk.heap (C) in place of Prosody's
-- util.indexedbheap.
--
-- new(core): brisk.heap's factory for this Prosody: { create, adopt,
-- release, is_brisk }, falling back to stock's own methods (see
-- modules/heap/heap.c).
--
-- install(core): util.indexedbheap.create makes Brisk heaps from now on;
-- claims(t)/adopt(t) convert a stock heap found alive (server_epoll's
-- timers, util.timer's heap: both created at startup, before any module)
-- into a Brisk heap in place, so every reference to it, wherever it was
-- captured, reaches the C heap without rebinding anything; undo() restores
-- create and turns every Brisk heap this install made or adopted back into
-- a stock heap, in place, entries, ids and items kept.
local prosody_lib = require "brisk.prosody".lib;

local M = {};

-- The C core (see brisk.patch).
M.core = "brisk.heap";

-- Stock's create, metatable and method table, taken the first time.
local stock;

local function stock_parts()
	if not stock then
		local lib = prosody_lib "util.indexedbheap";
		local mt = getmetatable(lib.create());
		assert(type(mt) == "table" and type(mt.__index) == "table", "util.indexedbheap: unexpected heap shape");
		stock = { create = lib.create, mt = mt, methods = mt.__index };
	end
	return stock;
end
M.stock = stock_parts;

function M.new(core)
	local s = stock_parts();
	return core.new({ methods = s.methods, mt = s.mt });
end

function M.install(core)
	local lib = prosody_lib "util.indexedbheap";
	local s = stock_parts();
	local b = M.new(core);
	local mine = setmetatable({}, { __mode = "k" }); -- every Brisk heap of this install
	local adopted = {};
	local function create()
		local h = b.create();
		mine[h] = true;
		return h;
	end
	lib.create = create;
	local handle = {
		name = "util.indexedbheap";
		factory = b;
		map = { [s.create] = create };
		skip = { [s.create] = true, [create] = true };
		adopted = adopted;
	};
	function handle.claims(t)
		return debug.getmetatable(t) == s.mt;
	end
	function handle.adopt(t, who)
		if b.adopt(t) then
			mine[t] = true;
			adopted[#adopted + 1] = who;
			return true;
		end
		adopted[#adopted + 1] = who .. " (left stock: not in a state Brisk holds)";
		return false;
	end
	-- How many of this install's heaps are Brisk heaps, and how many went
	-- back to stock's representation (see heap.c: stock fields touched).
	function handle.status()
		local live, stock_again = 0, 0;
		for h in pairs(mine) do
			if b.is_brisk(h) then live = live + 1; else stock_again = stock_again + 1; end
		end
		return live, stock_again;
	end
	function handle.inverse()
		return { [create] = s.create };
	end
	function handle.undo()
		if lib.create == create then lib.create = s.create; end
		for h in pairs(mine) do b.release(h); end
	end
	return handle;
end

return M;
