-- bench/lib/timing.lua — shared timing for the bench/util_*.lua micro
-- benchmarks (a folder of its own: scripts/bench.sh runs every bench/*.lua).
--
-- pair(stock_pass, brisk_pass, ops) measures two functions that each do
-- `ops` operations per call, their runs alternating (so that a change in
-- the load of a shared machine hits both alike), and returns the medians of
-- stock's and Brisk's operations per second (CPU time).
local M = {};

local clock = os.clock;

function M.setup(quick)
	M.quick = quick;
	M.RUN_SECONDS = quick and 0.12 or 0.4;
	M.RUNS = quick and 3 or 5;
end
M.setup(false);

local function rate(pass, ops)
	local n = 0;
	local t0 = clock();
	local t;
	repeat
		pass();
		n = n + 1;
		t = clock() - t0;
	until t >= M.RUN_SECONDS;
	return n * ops / t;
end

local function median(list)
	table.sort(list);
	return list[(#list + 1) // 2];
end

function M.pair(stock_pass, brisk_pass, ops)
	local a, b = {}, {};
	stock_pass();
	brisk_pass();
	for r = 1, M.RUNS do
		a[r] = rate(stock_pass, ops);
		b[r] = rate(brisk_pass, ops);
	end
	return median(a), median(b);
end

function M.fmt(v)
	if v >= 1e6 then return ("%.2fM"):format(v / 1e6); end
	if v >= 1e3 then return ("%.0fk"):format(v / 1e3); end
	return ("%.0f"):format(v);
end

-- Print a Markdown table of rows { label =, stock =, brisk =, unit =,
-- short = } and append them to $BENCH_TSV as area rows.
function M.report(area, rows)
	print("| what | stock | Brisk | ratio | unit |");
	print("|---|---:|---:|---:|---|");
	for _, r in ipairs(rows) do
		print(("| %s | %s | %s | %.1fx | %s |"):format(r.label, M.fmt(r.stock), M.fmt(r.brisk), r.brisk / r.stock, r.unit));
	end
	print();
	local tsv = os.getenv("BENCH_TSV");
	if tsv and tsv ~= "" then
		local f = assert(io.open(tsv, "a"));
		for _, r in ipairs(rows) do
			f:write(("%s\t%s\t%.6g\t%.6g\t%s\n"):format(area, r.short or r.label, r.stock, r.brisk, r.unit));
		end
		f:close();
	end
end

-- Prosody 13's libraries need its loader (as its prosody executable does).
function M.prosody()
	if os.getenv("BRISK_PROSODY") == "13" then require "loader"; end
	local version = "?";
	local f = io.open((os.getenv("BRISK_PROSODY_LIB") or "/usr/lib/prosody") .. "/prosody.version");
	if f then version = f:read("l") or "?"; f:close(); end
	return version;
end

return M;
