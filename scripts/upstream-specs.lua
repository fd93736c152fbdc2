-- scripts/upstream-specs.lua — Prosody's own specs (spec/upstream/<release>/,
-- unmodified copies) against stock Prosody and against Brisk, for the
-- Prosody that `make env` points at. Run by scripts/run-upstream-specs.sh.
--
-- Each spec runs twice under busted, with spec/helpers/upstream.lua as the
-- helper: BRISK_UPSTREAM=stock, then =brisk. Brisk passes a spec when it
-- has no failure or error and exactly the tests that pass for stock pass
-- for Brisk too (the storage spec tags each test with its driver, so names
-- are compared with the tags taken out and each name counted once).
--
-- Prints one line per spec and "upstream-<version>: N passed, N failed"
-- (counting Brisk's tests; a spec that differs from stock counts one more
-- failure), appends "upstream-<version> N N" to $BRISK_RESULTS, exits non-zero
-- on any failure.
local version = assert(os.getenv("BRISK_PROSODY"), "run through scripts/run-upstream-specs.sh");
if version == "13" then require "loader"; end
local json = require "util.json";
local release = ({ ["0.12"] = "prosody-0.12.3", ["13"] = "prosody-13.0.1" })[version];
local root = assert(os.getenv("BRISK_ROOT"));
local label = os.getenv("BRISK_UPSTREAM_LABEL") or ("upstream-" .. version);

-- spec file, and busted options
local SPECS = {
	{ "util_stanza_spec.lua" },
	{ "util_xmppstream_spec.lua" },
	{ "util_jid_spec.lua" },
	{ "util_indexedbheap_spec.lua" },
	{ "util_events_spec.lua" },
	-- Brisk has no archive stores: those tests are not run for either.
	{ "core_storagemanager_spec.lua", "--filter-out=archive" },
};

local function sh(cmd)
	local f = assert(io.popen(cmd, "r"));
	local out = f:read("a");
	f:close();
	return out;
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'"; end

-- Run one spec with one target; returns busted's decoded JSON report.
local function run(spec, opts, target)
	-- A fresh folder each run: the storage spec writes ./data.
	local dir = sh("mktemp -d /tmp/brisk-upstream-XXXXXX"):gsub("%s+$", "");
	-- Under make test-asan, lua5.4 gets the sanitizer runtime (see run-specs.sh).
	local preload = os.getenv("BRISK_ASAN_PRELOAD") or "";
	local cmd = ("cd %s && mkdir data && BRISK_UPSTREAM=%s LD_PRELOAD=%s lua5.4 /usr/bin/busted --helper=%s %s -o %s %s 2>&1"):format(
		q(dir), target, q(preload), q(root .. "/spec/helpers/upstream.lua"), opts or "",
		q(root .. "/spec/helpers/upstream_output.lua"),
		q(("%s/spec/upstream/%s/%s"):format(root, release, spec)));
	local out = sh(cmd);
	os.execute("rm -rf " .. q(dir));
	-- The report is the last line; anything the spec printed comes before.
	local report = json.decode(out:match("^({[^\n]*})%s*$") or out:match("\n({[^\n]*})%s*$") or "");
	if type(report) ~= "table" then
		return nil, "busted gave no report:\n" .. out:sub(-3000);
	end
	return report;
end

-- How many tests of each name passed, per storage driver: the storage spec
-- tags its tests "#<driver> #storage backend"; other specs have no tags
-- (driver "-"). Names can repeat within a spec, so these are counts.
local function tally(list)
	local by_driver = {};
	for _, t in ipairs(list or {}) do
		local driver = t.name:match("#storage backend") and t.name:match("#([%w_-]+)") or "-";
		local name = t.name:gsub(" #[%w_-]+", "");
		local counts = by_driver[driver] or {};
		by_driver[driver] = counts;
		counts[name] = (counts[name] or 0) + 1;
	end
	return by_driver;
end

-- Differences between a stock driver's counts and Brisk's, as messages.
local function compare(want, got, problems, what)
	for name, n in pairs(want) do
		if (got[name] or 0) ~= n then
			problems[#problems + 1] = ("%s: %q passes %d time(s) for stock, %d for Brisk"):format(what, name, n, got[name] or 0);
		end
	end
	for name, n in pairs(got) do
		if not want[name] then
			problems[#problems + 1] = ("%s: %q passes %d time(s) for Brisk, never for stock"):format(what, name, n);
		end
	end
end

local function describe_failures(report)
	local lines = {};
	for _, kind in ipairs({ "failures", "errors" }) do
		for _, t in ipairs(report[kind] or {}) do
			lines[#lines + 1] = ("  %s: %s\n    %s"):format(kind, t.name, tostring(t.message):gsub("\n", "\n    "));
		end
	end
	return table.concat(lines, "\n");
end

local passed, failed = 0, 0;
for _, s in ipairs(SPECS) do
	local spec, opts = s[1], s[2];
	local stock, serr = run(spec, opts, "stock");
	local brisk, berr = run(spec, opts, "brisk");
	local problems = {};
	if not stock then problems[#problems + 1] = "stock: " .. serr; end
	if not brisk then problems[#problems + 1] = "brisk: " .. berr; end
	if stock and (#stock.failures > 0 or #stock.errors > 0) then
		problems[#problems + 1] = "stock itself fails here:\n" .. describe_failures(stock);
	end
	local nb = 0;
	if brisk then
		nb = #brisk.successes;
		if #brisk.failures > 0 or #brisk.errors > 0 then
			problems[#problems + 1] = "Brisk fails:\n" .. describe_failures(brisk);
		end
	end
	if stock and brisk then
		-- Every stock driver's tests pass for Brisk's one, and nothing more.
		local want, got = tally(stock.successes), tally(brisk.successes);
		local mine = got.brisk or got["-"] or {};
		local ndrivers = 0;
		for driver, counts in pairs(want) do
			ndrivers = ndrivers + 1;
			compare(counts, mine, problems, driver == "-" and "passed" or ("passed, stock driver " .. driver));
		end
		local wp, gp = tally(stock.pendings), tally(brisk.pendings);
		for driver, counts in pairs(wp) do
			compare(counts, gp.brisk or gp["-"] or {}, problems, "pending" .. (driver == "-" and "" or (", stock driver " .. driver)));
		end
		print(("%s %-30s stock %d passed (%d driver(s)), Brisk %d passed, %d pending%s"):format(
			label, spec, #stock.successes, ndrivers, nb, #brisk.pendings, #problems == 0 and ": identical" or ""));
	end
	passed = passed + nb;
	if #problems > 0 then
		failed = failed + #(brisk and brisk.failures or {}) + #(brisk and brisk.errors or {}) + 1;
		print(("%s %s FAILED\n%s"):format(label, spec, table.concat(problems, "\n")));
	end
end

print(("%s: %d passed, %d failed"):format(label, passed, failed));
local results = os.getenv("BRISK_RESULTS");
if results and results ~= "" then
	local f = assert(io.open(results, "a"));
	f:write(("%s %d %d\n"):format(label, passed, failed));
	f:close();
end
os.exit(failed == 0);
