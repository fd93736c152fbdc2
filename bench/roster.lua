-- bench/roster.lua — roster storage: stock mod_storage_internal and
-- mod_storage_sql (SQLite) against mod_storage_brisk, all three loaded by
-- Prosody's real modulemanager in this process, on rosters of 10, 100, 1,000
-- and 10,000 contacts (--quick: up to 1,000): load (keyval get), full save
-- (keyval set), single-contact update (map set_keys of [false] + one contact,
-- exactly what rostermanager does) and bytes on disk per contact.
--
--   eval "$(make -s env)"; lua5.4 bench/roster.lua [--quick]
--
-- Prints a Markdown section; with BENCH_TSV set, appends rows
-- area<TAB>label<TAB>stock<TAB>brisk<TAB>unit (higher is better) to that file.

local quick = false;
for _, a in ipairs(arg) do if a == "--quick" then quick = true; end end

local sizes = quick and { 10, 100, 1000 } or { 10, 100, 1000, 10000 };
local budget = quick and 0.15 or 0.4; -- seconds of timing per measurement

local dir = assert(io.popen("mktemp -d /tmp/brisk-bench-roster-XXXXXX")):read("l");
require "bench.lib.prelude"
local th = require "spec.helpers.storage_host";
local hosts = {};
for _, n in ipairs(sizes) do
	hosts["internal"..n..".test"] = { storage = "internal" };
	hosts["sql"..n..".test"] = { storage = "sql", sql = { driver = "SQLite3", database = dir.."/sql"..n..".sqlite" } };
	hosts["brisk"..n..".test"] = { storage = "brisk", brisk_storage_path = dir.."/brisk"..n..".sqlite" };
	-- the same with synchronous = "normal": no fsync per commit (see docs/storage.md)
	hosts["normal"..n..".test"] = { storage = "brisk", brisk_storage_path = dir.."/normal"..n..".sqlite",
		brisk_storage_synchronous = "normal" };
end
local sm = th.setup(dir, hosts);
local now = require "util.time".now;
local R = require "brisk.store";

local drivers = { "internal", "sql", "brisk", "normal" };

local function make_roster(n)
	local r = { [false] = { version = n } };
	for i = 1, n do
		r[("device-%05d@iot.example.com"):format(i)] = {
			subscription = "both", name = ("Device %d"):format(i),
			groups = { Sensors = true, ["Floor "..(i % 10)] = true },
		};
	end
	return r;
end

-- Calls per second of f: the best of three runs, each until its time budget
-- is spent (at least twice), to keep other processes' noise out. Loads are
-- CPU-bound and timed with this process's CPU clock; writes wait for the disk
-- and are timed with the wall clock.
local function rate(f, clock)
	clock = clock or now;
	f(1); -- warm up
	local best = 0;
	for _ = 1, 3 do
		local count, t0 = 0, clock();
		local elapsed;
		repeat
			count = count + 1;
			f(count + 1);
			elapsed = clock() - t0;
		until (elapsed >= budget / 3 and count >= 2) or count >= 100000;
		best = math.max(best, count / math.max(elapsed, 1e-9));
	end
	return best;
end

local function file_size(path)
	local f = io.open(path, "rb");
	if not f then return 0; end
	local size = f:seek("end");
	f:close();
	return size;
end

local function disk_bytes(driver, n)
	if driver == "internal" then
		return file_size(("%s/internal%d%%2etest/roster/user.dat"):format(dir, n));
	elseif driver == "sql" then
		local p = ("%s/sql%d.sqlite"):format(dir, n);
		return file_size(p) + file_size(p.."-wal") + file_size(p.."-journal");
	else
		local p = ("%s/%s%d.sqlite"):format(dir, driver, n);
		-- Another connection checkpoints, so the log's content is counted once, in the file.
		local db = assert(R.open(p));
		assert(db:checkpoint());
		db:close();
		return file_size(p) + file_size(p.."-wal");
	end
end

local results = {}; -- results[metric][n][driver]
local function record(metric, n, driver, value)
	results[metric] = results[metric] or {};
	results[metric][n] = results[metric][n] or {};
	results[metric][n][driver] = value;
end

for _, n in ipairs(sizes) do
	local roster = make_roster(n);
	for _, driver in ipairs(drivers) do
		local host = driver..n..".test";
		local kv = assert(sm.open(host, "roster", "keyval"));
		local map = assert(sm.open(host, "roster", "map"));
		assert(kv:set("user", roster));
		record("bytes", n, driver, disk_bytes(driver, n) / n);
		record("save", n, driver, rate(function () assert(kv:set("user", roster)); end));
		record("load", n, driver, rate(function ()
			local r = kv:get("user");
			assert(r and r[false]);
		end, os.clock));
		record("update", n, driver, rate(function (i)
			local jid = ("device-%05d@iot.example.com"):format(i % n + 1);
			local item = { subscription = "both", name = "Renamed "..i, groups = { Sensors = true } };
			assert(map:set_keys("user", { [false] = { version = n + i }, [jid] = item }));
		end));
		-- Every driver must hold the same roster afterwards.
		assert(kv:get("user")[false].version);
	end
end

-- Where a load's time goes at 1,000 contacts: the reason the 5x-internal
-- target is met or not, measured rather than asserted. internal's load is
-- datamanager compiling the file's Lua source and running it; running the
-- compiled chunk alone builds exactly the tables a load returns, from
-- constants whose strings Lua already interned while compiling, so it is a
-- floor for building those tables by any means. Brisk's per-row cost is
-- timed on a store of the same 1,000 keys holding only `true`.
local floor = {};
do
	local n = 1000;
	local roster = make_roster(n);
	local src = "return "..require "util.serialization".serialize(roster);
	floor.compile = 1 / rate(function () assert(load(src, "=roster", "t", {})); end, os.clock);
	local chunk = assert(load(src, "=roster", "t", {}));
	floor.exec = 1 / rate(function () assert(chunk()); end, os.clock);
	-- The same 1,000 rows with nothing in them but `true`: what SQLite, the
	-- per-row checksums and the row keys cost without building any item.
	local plain = { };
	for jid in pairs(roster) do if jid then plain[jid] = true; end end
	local kv = assert(sm.open("brisk"..n..".test", "bench_plain", "keyval"));
	assert(kv:set("user", plain));
	floor.rows = 1 / rate(function () assert(kv:get("user")); end, os.clock);
	floor.internal = 1 / results.load[n].internal;
	floor.brisk = 1 / results.load[n].brisk;
end

local function fmt(v)
	if v >= 100 then return ("%.0f"):format(v); end
	if v >= 10 then return ("%.1f"):format(v); end
	return ("%.2f"):format(v);
end

local metrics = {
	{ "load", "load (keyval get, CPU time)", "loads/s" },
	{ "save", "full save (keyval set)", "saves/s" },
	{ "update", "single-contact update (map set_keys)", "updates/s" },
	{ "bytes", "bytes on disk per contact", "bytes/contact (lower is better)" },
};

local out = {};
local function p(s) out[#out + 1] = s; end
p("### Roster storage: mod_storage_brisk vs internal and sql (SQLite)");
p("");
p(("Rosters of %s contacts; each contact has a name and two groups. Ratios: Brisk's advantage (>1 = Brisk better)."):format(table.concat(sizes, "/")));
p("Brisk runs with its default synchronous=full (an fsync per commit); the last column is the opt-in synchronous=normal.");
p("");
p("| measure | contacts | internal | sql | brisk | vs internal | vs sql | brisk, synchronous=normal | unit |");
p("|---|---:|---:|---:|---:|---:|---:|---:|---|");
local tsv = os.getenv("BENCH_TSV");
local tsv_file = tsv and assert(io.open(tsv, "a"));
for _, m in ipairs(metrics) do
	local key, label, unit = m[1], m[2], m[3];
	for _, n in ipairs(sizes) do
		local r = results[key][n];
		local vi, vs;
		if key == "bytes" then vi, vs = r.internal / r.brisk, r.sql / r.brisk;
		else vi, vs = r.brisk / r.internal, r.brisk / r.sql; end
		p(("| %s | %d | %s | %s | %s | %.1fx | %.1fx | %s | %s |"):format(label, n, fmt(r.internal), fmt(r.sql), fmt(r.brisk), vi, vs, fmt(r.normal), unit));
		if tsv_file then
			for _, stock in ipairs { "internal", "sql" } do
				local s, b, u = r[stock], r.brisk, unit;
				if key == "bytes" then s, b, u = 1e6 / s, 1e6 / b, "contacts/MB"; end
				tsv_file:write(("roster\t%s %d (vs %s)\t%.6g\t%.6g\t%s\n"):format(key, n, stock, s, b, u));
			end
		end
	end
end
if tsv_file then tsv_file:close(); end

-- The issue's targets, checked on this run's figures.
local load1k = results.load[1000];
local big = sizes[#sizes];
local bytes_at = results.bytes[big];
local upd_ratio = results.update[10].brisk / results.update[big].brisk;
local upd_ratio_normal = results.update[10].normal / results.update[big].normal;
p("");
p("Targets (issue 5):");
p(("- load at 1,000 contacts at least 5x both stock drivers: %.1fx internal, %.1fx sql — %s")
	:format(load1k.brisk / load1k.internal, load1k.brisk / load1k.sql,
		(load1k.brisk >= 5 * load1k.internal and load1k.brisk >= 5 * load1k.sql) and "met" or "NOT met"));
p(("  Why, per load at 1,000 contacts: internal takes %.0f µs, so 5x means at most %.0f µs. Of internal's time %.0f µs is"
	.." compiling the file and %.0f µs running it; running it alone builds the very tables a load returns, with every"
	.." string already interned, so no driver can build them for less. Brisk takes %.0f µs: %.0f µs of it is SQLite reading"
	.." 1,001 rows, verifying one BLAKE2b checksum per row and creating the 1,000 key strings (measured on the same keys"
	.." holding only `true`); one row per contact is what keeps a single-contact update at a constant cost. The other %.0f µs"
	.." decode the items into tables. Rows plus the tables' floor take %.0f µs, %s than 5x allows.")
	:format(floor.internal * 1e6, floor.internal * 1e6 / 5, floor.compile * 1e6, floor.exec * 1e6, floor.brisk * 1e6,
		floor.rows * 1e6, math.max(0, floor.brisk - floor.rows) * 1e6, (floor.rows + floor.exec) * 1e6,
		floor.rows + floor.exec > floor.internal / 5 and "more" or "less"));
p(("- bytes per contact at most 1/3 of sql's (at %d contacts): %.0f vs %.0f bytes (%.2f of sql) — %s")
	:format(big, bytes_at.brisk, bytes_at.sql, bytes_at.brisk / bytes_at.sql, bytes_at.brisk * 3 <= bytes_at.sql and "met" or "NOT met"));
p(("- single-contact update within 2x between 10 and %d contacts: %.2fx with synchronous=normal (the work itself) — %s;")
	:format(big, upd_ratio_normal, upd_ratio_normal <= 2 and "met" or "NOT met"));
p(("  %.2fx with the default synchronous=full, where each commit's fsync dominates and varies with the disk's load")
	:format(upd_ratio));
p("");
print(table.concat(out, "\n"));
os.execute("rm -rf '"..dir.."'");
