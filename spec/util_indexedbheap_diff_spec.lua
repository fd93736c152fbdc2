-- brisk.heap against stock util.indexedbheap, side by side in one Lua
-- state: random sequences of operations run on a stock heap, a Brisk heap
-- made by create() and a stock heap adopted (converted in place) at a
-- random point, and every call must give the three the same values (and
-- value count) or the same error, message included. The sequences use few
-- distinct priorities (equal priorities everywhere), integers and floats
-- (1 and 1.0), NaN, infinities and -0.0, automatic and explicit ids
-- (server_epoll's re-insertion of a popped timer under its id, ids already
-- in the heap, false, NaN), removes of unknown ids, remove_index at every
-- kind of position, reprioritize between pops, and now and then what Brisk
-- hands to stock (a string or table priority, an integer beyond 2^53, a read
-- of h.priorities, a write of h.current_id), after which the heap goes on
-- as a stock heap. At the end every heap is compared field by field.
--
-- BRISK_FUZZ_ITER / 10 sequences (default 300); BRISK_FUZZ_SEED.
local glue = require "brisk.patch.indexedbheap";
local stock_lib = { create = glue.stock().create };
local B = glue.new(require "brisk.heap");

local ITER = math.max(1, (tonumber(os.getenv("BRISK_FUZZ_ITER")) or 3000) // 10);
local SEED = tonumber(os.getenv("BRISK_FUZZ_SEED")) or 15;

local function pack(...) return { n = select("#", ...), ... }; end

local function same(a, b)
	if a == b then return true; end
	if a ~= a and b ~= b then return true; end -- NaN
	return false;
end

local function show(r)
	local s = {};
	for i = 1, r.n do s[i] = tostring(r[i]) .. (math.type(r[i]) == "float" and "f" or ""); end
	return "(" .. table.concat(s, ", ") .. ")";
end

local function agree(results)
	local a = results[1];
	for i = 2, #results do
		local b = results[i];
		if a.n ~= b.n then return false; end
		for k = 1, a.n do
			if not same(a[k], b[k]) or math.type(a[k]) ~= math.type(b[k]) then return false; end
		end
	end
	return true;
end

-- A heap's whole state through stock's fields (turns a Brisk heap into
-- stock's representation, which is what the fields are for).
local function fields(h)
	local out = { current_id = h.current_id, priorities = {}, ids = {}, index = {}, items = {} };
	for i, p in ipairs(h.priorities) do out.priorities[i] = p; end
	for i, id in ipairs(h.ids) do out.ids[i] = id; end
	for k, v in pairs(h.index) do out.index[k] = v; end
	for k, v in pairs(h.items) do out.items[k] = v; end
	out.n = #h.priorities;
	return out;
end

local function same_fields(a, b)
	if a.n ~= b.n or not same(a.current_id, b.current_id) or math.type(a.current_id) ~= math.type(b.current_id) then
		return false;
	end
	for i = 1, a.n do
		if not same(a.priorities[i], b.priorities[i]) or math.type(a.priorities[i]) ~= math.type(b.priorities[i])
			or not same(a.ids[i], b.ids[i]) then
			return false;
		end
	end
	for _, k in ipairs({ "index", "items" }) do
		for key, v in pairs(a[k]) do if not same(b[k][key], v) then return false; end end
		for key, v in pairs(b[k]) do if not same(a[k][key], v) then return false; end end
	end
	return true;
end

local PRIOS = { 1, 2, 3, 1.0, 2.0, 2.5, -1, 0, -0.0, 1 / 0, -1 / 0 };

local function run_sequence(steps, opts)
	local s, b, a = stock_lib.create(), B.create(), stock_lib.create();
	local heaps = { s, b, a };
	local adopt_at = math.random(1, math.max(1, steps // 2));
	local ids = {};
	local log = {};
	local function op(name, ...)
		local results = {};
		for i, h in ipairs(heaps) do results[i] = pack(pcall(h[name], h, ...)); end
		local args = pack(...);
		local shown = {};
		for i = 1, args.n do shown[i] = tostring(args[i]); end
		log[#log + 1] = ("%s(%s) -> %s"):format(name, table.concat(shown, ", "), show(results[1]));
		if not agree(results) then
			error(("heaps disagree on %s(%s): stock %s, brisk %s, adopted %s\nsequence:\n%s"):format(name,
				table.concat(shown, ", "), show(results[1]), show(results[2]), show(results[3]),
				table.concat(log, "\n", math.max(1, #log - 30))), 0);
		end
		return table.unpack(results[1], 1, results[1].n);
	end
	local function prio()
		local r = math.random(100);
		if r <= 2 and opts.unusual then return ({ "a", "b", {}, 2 ^ 53 + 1 | 0, (1 << 53) + 1 })[math.random(5)]; end
		if r <= 4 then return 0 / 0; end
		if r <= 70 then return PRIOS[math.random(#PRIOS)]; end
		return math.random(1, 6) + (math.random(2) == 1 and 0.5 or 0);
	end
	local function some_id()
		if #ids > 0 and math.random(5) > 1 then return ids[math.random(#ids)]; end
		if not opts.unusual then return ({ nil, 7, "x", 99.5, 1.25 })[math.random(5)]; end
		return ({ nil, 7, "x", 1.5, 2.5, 99.5, false, true })[math.random(8)];
	end
	for step = 1, steps do
		if step == adopt_at then
			assert(B.adopt(a) or not B.is_brisk(a), "adopt refused a plain heap");
		end
		local r = math.random(100);
		if r <= 30 then
			local id;
			local k = math.random(10);
			if k == 1 and opts.unusual then id = some_id();
			elseif k == 2 and opts.unusual then id = ({ false, 0 / 0 })[math.random(2)]; end
			local ok, got = op("insert", "item" .. step, prio(), id);
			if ok and got ~= nil then ids[#ids + 1] = got; end
		elseif r <= 50 then
			local ok, p, item, id = op("pop");
			-- server_epoll re-inserts a repeating timer under its id
			if ok and id ~= nil and math.random(3) == 1 then op("insert", item, prio(), id); end
		elseif r <= 58 then
			op("peek");
		elseif r <= 75 then
			op("reprioritize", some_id(), prio());
		elseif r <= 85 then
			op("remove", some_id());
		elseif r <= 92 then
			local ks = opts.unusual and { 0, 1, 2, 3, 5, 8, 1.0, 2.0, 1.5, "1", -1, 100 } or { 0, 1, 2, 3, 5, 8, 1.5, "1", -1, 100 };
			op("remove_index", ks[math.random(#ks)]);
		elseif r <= 94 and opts.unusual then
			-- stock's fields, through all three
			local which = ({ "priorities", "ids", "index", "items", "current_id" })[math.random(5)];
			local vals = {};
			for i, h in ipairs(heaps) do vals[i] = h[which]; end
			if which == "current_id" then
				assert(same(vals[1], vals[2]) and same(vals[1], vals[3]), "current_id differs");
			else
				for i = 2, 3 do
					for k, v in pairs(vals[1]) do assert(same(vals[i][k], v), which .. " differs"); end
				end
			end
		elseif r <= 95 and opts.unusual then
			local v = ({ 10.5, 3, 1.5 })[math.random(3)];
			for _, h in ipairs(heaps) do h.current_id = v; end
		else
			op("peek");
		end
	end
	-- drain: the order of everything left, equal priorities included
	for _ = 1, 200 do
		local ok, p = op("pop");
		if ok and p == nil then break; end
	end
	local brisk_to_the_end = B.is_brisk(b) and B.is_brisk(a);
	local fs = fields(s);
	assert(same_fields(fs, fields(b)), "created heap's fields differ from stock's");
	assert(same_fields(fs, fields(a)), "adopted heap's fields differ from stock's");
	return brisk_to_the_end;
end

describe("brisk.heap vs stock util.indexedbheap", function ()
	it("agrees on random operation sequences", function ()
		math.randomseed(SEED);
		local brisk = 0;
		for _ = 1, ITER do
			if run_sequence(math.random(1, 120), { unusual = false }) then brisk = brisk + 1; end
		end
		-- most sequences must really have compared C heaps with stock's
		assert.truthy(brisk > ITER * 0.8, ("only %d of %d sequences kept both Brisk heaps"):format(brisk, ITER));
	end);

	it("agrees when sequences touch what Brisk leaves to stock", function ()
		math.randomseed(SEED + 1);
		for _ = 1, ITER do run_sequence(math.random(1, 120), { unusual = true }); end
	end);

	it("stays a Brisk heap under what server_epoll does", function ()
		local h = B.create();
		local s = stock_lib.create();
		local now = 1000;
		local t = {};
		for i = 1, 200 do
			t[i] = h:insert("timer" .. i, now + i % 7);
			assert.equal(t[i], s:insert("timer" .. i, now + i % 7));
		end
		for i = 1, 2000 do
			now = now + 0.25;
			local id = t[i % 200 + 1];
			h:reprioritize(id, now + 60);
			s:reprioritize(id, now + 60);
			while h:peek() and h:peek() <= now do
				local p1, i1, id1 = h:pop();
				local p2, i2, id2 = s:pop();
				assert.same({ p2, i2, id2 }, { p1, i1, id1 });
				h:insert(i1, now + 30, id1);
				s:insert(i2, now + 30, id2);
			end
			assert.equal(s:peek(), h:peek());
		end
		assert.is_true(B.is_brisk(h));
		assert.same(fields(s), fields(h));
	end);

	it("gives stock's errors for what stock rejects", function ()
		for _, args in ipairs({ { "x", {} }, { "x", "a" }, { "x", nil }, { "x", 1, 0 / 0 } }) do
			local s, b = stock_lib.create(), B.create();
			s:insert("first", 1); b:insert("first", 1);
			local e1 = select(2, pcall(s.insert, s, table.unpack(args, 1, 3)));
			local e2 = select(2, pcall(b.insert, b, table.unpack(args, 1, 3)));
			assert.equal(e1, e2);
		end
		-- stock's methods on a Brisk heap, and Brisk's on a stock heap
		local s, b = stock_lib.create(), B.create();
		local stock_insert = s.insert;
		assert.equal(1.5, stock_insert(b, "x", 3));
		assert.equal(1.5, b.insert(s, "x", 3));
		assert.same({ 3, "x", 1.5 }, { b.pop(s) });
		assert.same({ 3, "x", 1.5 }, { s.pop(b) });
		assert.same(select(2, pcall(s.pop, nil)), select(2, pcall(B.create().pop, nil)));
	end);
end);
