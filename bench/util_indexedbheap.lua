-- bench/util_indexedbheap.lua — stock util.indexedbheap vs brisk.heap, as
-- server_epoll uses its timer heap.
--
-- server_epoll keeps every connection's read timeout (and write timeout
-- while it has data to send) in one heap. Per stanza read, the read
-- timeout is pushed back: reprioritize(id, now + timeout), a walk down the
-- tree. Per stanza sent, a write timeout is added and, once the buffer is
-- drained, removed: insert + remove. When timers expire, runtimers pops them
-- and re-inserts repeating ones under their id. Measured on a heap holding
-- the timers of 3000 connections (priorities like server_epoll's: now plus
-- a long timeout, spread out), each operation alone and the per-stanza
-- sequence (one reprioritize, one insert, one remove). Both heaps go
-- through the same operations, checked identical before timing.
--
-- Usage: eval "$(make -s env)"; lua5.4 bench/util_indexedbheap.lua [--quick]
-- (make env PROSODY=13 for Prosody 13). With env BENCH_TSV=file, rows
-- "util_indexedbheap\tlabel\tstock\tbrisk\tunit" are appended.
local timing = require "bench.lib.timing";
local version = timing.prosody();
timing.setup(arg and arg[1] == "--quick");

local glue = require "brisk.patch.indexedbheap";
local stock_create = glue.stock().create;
local B = glue.new(require "brisk.heap");

local CONNS = 3000;
local N = 1000; -- operations per pass
local READ_TIMEOUT = 840;

-- A heap like server_epoll's after a while: one read timeout per connection.
local function filled(create)
	local h = create();
	local ids = {};
	math.randomseed(15);
	for i = 1, CONNS do ids[i] = h:insert("read" .. i, 1000 + READ_TIMEOUT * math.random()); end
	return h, ids;
end

-- Random connections, the same for both sides.
math.randomseed(16);
local order = {};
for i = 1, N do order[i] = math.random(CONNS); end

-- The sequences must agree before they are timed.
do
	local hs, ids = filled(stock_create);
	local hb = filled(B.create);
	local now = 1000;
	for i = 1, N do
		now = now + 0.001;
		hs:reprioritize(ids[order[i]], now + READ_TIMEOUT);
		hb:reprioritize(ids[order[i]], now + READ_TIMEOUT);
		local a, b = hs:insert("write", now + 300), hb:insert("write", now + 300);
		assert(a == b);
		assert(select(3, hs:remove(a)) == select(3, hb:remove(b)));
		assert(hs:peek() == hb:peek());
	end
	for _ = 1, CONNS do
		local p1, i1, id1 = hs:pop();
		local p2, i2, id2 = hb:pop();
		assert(p1 == p2 and i1 == i2 and id1 == id2, "heaps differ");
	end
	assert(B.is_brisk(hb));
end

local rows = {};
local function measure(label, short, make, unit)
	local ps, pb = make(stock_create), make(B.create);
	local s, b = timing.pair(ps, pb, N);
	rows[#rows + 1] = { label = label, short = short, stock = s, brisk = b, unit = unit or "calls/s" };
	return s, b;
end

-- Each side keeps its own clock, so that timeouts keep moving forward.
local function reschedule(create)
	local h, ids = filled(create);
	local now = 2000;
	return function ()
		for i = 1, N do
			now = now + 0.001;
			h:reprioritize(ids[order[i]], now + READ_TIMEOUT);
		end
	end;
end

local function write_timeout(create)
	local h = filled(create);
	local now = 2000;
	return function ()
		for _ = 1, N do
			now = now + 0.001;
			h:remove(h:insert("write", now + 300));
		end
	end;
end

local function expire(create)
	local h = filled(create);
	return function ()
		for _ = 1, N do
			local p, item, id = h:pop();
			h:insert(item, p + READ_TIMEOUT, id);
		end
	end;
end

local function per_stanza(create)
	local h, ids = filled(create);
	local now = 2000;
	return function ()
		for i = 1, N do
			now = now + 0.001;
			h:reprioritize(ids[order[i]], now + READ_TIMEOUT);
			h:remove(h:insert("write", now + 300));
		end
	end;
end

measure("reprioritize (read timeout pushed back)", "reprioritize", reschedule);
measure("insert + remove (write timeout)", "insert+remove", write_timeout, "pairs/s");
measure("pop + insert under its id (expiry, repeating timer)", "pop+insert", expire, "pairs/s");
local s, b = measure("per stanza: reprioritize, insert, remove", "per stanza", per_stanza, "stanzas/s");

print("### util.indexedbheap (brisk.heap)");
print();
print(("Prosody %s's util.indexedbheap vs brisk.heap, a heap of %d connections' timeouts, same operations, same run, runs alternating; median of %d runs of %.2f s%s.")
	:format(version, CONNS, timing.RUNS, timing.RUN_SECONDS, timing.quick and " (--quick)" or ""));
print();
timing.report("util_indexedbheap", rows);
print(("Per stanza: %.1fx stock; %s the 3x bar for replacing util.indexedbheap."):format(b / s, b / s >= 3 and "above" or "BELOW"));
print();
