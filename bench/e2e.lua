-- End-to-end benchmark: a real Prosody on loopback, started once with the
-- stock configuration and once with the same configuration plus whichever
-- Brisk modules exist in lualib/ (mod_brisk_xml globally, mod_storage_brisk
-- for rosters, mod_brisk_iot on the host), each loaded by the C load
-- generator (build/bench/loadgen) in three scenarios: message ping-pong,
-- presence churn towards a roster-heavy controller, and idle connections.
--
--   eval "$(make -s env)"; lua5.4 bench/e2e.lua [--quick] [--keep] [--breakdown]
--
-- --only=pingpong|presence|idle runs one scenario.
-- --breakdown adds one configuration per Brisk module (stock plus that module
-- alone), to see which module a gain or a cost comes from.
--
-- Prints a Markdown section; with env BENCH_TSV=<file> it also appends
-- area<TAB>label<TAB>stock<TAB>brisk<TAB>unit rows (higher is better).
-- Every server gets a fresh data directory under /tmp, which is removed
-- afterwards unless --keep is given.  Everything is bounded: each scenario
-- runs for a fixed time and the load generator has its own hard deadlines.
-- Environment knobs for experiments (BENCH_E2E_CONFIG, BENCH_E2E_WITHOUT,
-- BENCH_LOADGEN) are described in docs/benchmarks.md.

local socket = require "socket";

local quick, keep, breakdown, only = false, false, false, nil;
for _, a in ipairs(arg) do
	if a == "--quick" then quick = true;
	elseif a:match("^%-%-only=") then only = a:match("=(.*)");
	elseif a == "--keep" then keep = true;
	elseif a == "--breakdown" then breakdown = true;
	else io.stderr:write("usage: lua5.4 bench/e2e.lua [--quick] [--keep] [--breakdown] [--only=scenario]\n"); os.exit(2); end
end

if only and only ~= "pingpong" and only ~= "presence" and only ~= "idle" then
	io.stderr:write("e2e: --only takes pingpong, presence or idle\n");
	os.exit(2);
end

local root = (arg[0]:match("^(.*)/bench/[^/]*$") or ".");
if root:sub(1, 1) ~= "/" then root = io.popen("cd '" .. root .. "' && pwd"):read("l"); end
local loadgen = os.getenv("BENCH_LOADGEN") or (root .. "/build/bench/loadgen");  -- override: e.g. a sanitizer build

-- Scenario sizes.  Quick keeps both servers' whole run well under a minute.
local sizes = quick and {
	pingpong = { clients = 200, inflight = 32, duration = 3, warmup = 0.5, light = 4, light_duration = 1.5 },
	presence = { clients = 300, inflight = 32, duration = 3, warmup = 0.5, light = 4, light_duration = 1.5 },
	idle     = { clients = 500, duration = 1, warmup = 0.5 },
} or {
	pingpong = { clients = 2000, inflight = 128, duration = 20, warmup = 2, light = 4, light_duration = 5, rounds = 2 },
	presence = { clients = 3000, inflight = 128, duration = 20, warmup = 2, light = 4, light_duration = 5, rounds = 2 },
	idle     = { clients = 5000, duration = 3, warmup = 2 },
};
local accounts = 0;
for _, s in pairs(sizes) do accounts = math.max(accounts, s.clients); end

local function log(fmt, ...) io.stderr:write("e2e: ", fmt:format(...), "\n"); end

local function exists(path)
	local f = io.open(path, "r");
	if f then f:close(); return true; end
	return false;
end

local function read_all(path)
	local f = io.open(path, "r");
	if not f then return nil; end
	local s = f:read("a");
	f:close();
	return s;
end

local function sh(cmd)
	local p = io.popen(cmd, "r");
	local out = p:read("a");
	p:close();
	return out;
end

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'"; end

if not exists(loadgen) then
	io.stderr:write("e2e: ", loadgen, " is missing; run `make bench-loadgen` first\n");
	os.exit(1);
end

-- Which Brisk modules exist right now; the Brisk server enables exactly these.
local brisk = {
	xml = exists(root .. "/lualib/mod_brisk_xml.lua"),
	storage = exists(root .. "/lualib/mod_storage_brisk.lua"),
	iot = exists(root .. "/lualib/mod_brisk_iot.lua"),
};

-- The configurations measured: stock, then stock plus every Brisk module
-- that exists, and with --breakdown each module alone.
local variants = { { name = "stock", mods = {} } };
do
	local all, names = {}, { "xml", "storage", "iot" };
	for _, m in ipairs(names) do all[m] = brisk[m] or nil; end
	variants[2] = { name = "brisk", mods = all };
	if breakdown then
		for _, m in ipairs(names) do
			if brisk[m] then variants[#variants + 1] = { name = "only " .. m, mods = { [m] = true } }; end
		end
	end
end

local function free_port()
	local s = assert(socket.bind("127.0.0.1", 0));
	local _, port = s:getsockname();
	s:close();
	return tonumber(port);
end

-- Serialize a Lua value into config syntax (strings, numbers, booleans, tables).
local function serialize(v)
	local t = type(v);
	if t == "string" then return ("%q"):format(v);
	elseif t == "number" or t == "boolean" then return tostring(v);
	elseif t == "table" then
		local parts = {};
		for i = 1, #v do parts[#parts + 1] = serialize(v[i]); end
		local keys = {};
		for k in pairs(v) do
			if not (math.type(k) == "integer" and k >= 1 and k <= #v) then keys[#keys + 1] = k; end
		end
		table.sort(keys, function (a, b) return tostring(a) < tostring(b); end);
		for _, k in ipairs(keys) do
			parts[#parts + 1] = "[" .. serialize(k) .. "] = " .. serialize(v[k]);
		end
		return "{ " .. table.concat(parts, ", ") .. " }";
	end
	error("cannot serialize " .. t);
end

-- The stock module set: Debian's default prosody.cfg.lua minus what needs
-- certificates, s2s, HTTP or registration, and minus mod_limits (the load
-- generator must not be throttled).
local stock_modules = {
	"disco", "roster", "saslauth", "blocklist", "bookmarks", "carbons", "pep", "private",
	"smacks", "vcard4", "vcard_legacy", "csi_simple", "ping", "time", "uptime", "version", "posix",
};

-- BENCH_E2E_WITHOUT="pep,carbons" drops stock modules from both
-- configurations, to find out what a cost comes from.
do
	local without = {};
	for m in (os.getenv("BENCH_E2E_WITHOUT") or ""):gmatch("[^,%s]+") do without[m] = true; end
	for i = #stock_modules, 1, -1 do
		if without[stock_modules[i]] then table.remove(stock_modules, i); end
	end
end

local function write_config(dir, port, variant)
	local global_modules = { table.unpack(stock_modules) };
	local host_modules = { "bench_setup" };
	local storage = "internal";
	local extra = {};
	do
		local mods = variant.mods;
		if mods.xml then global_modules[#global_modules + 1] = "brisk_xml"; end
		if mods.storage then storage = { roster = "brisk" }; end
		if mods.iot then
			host_modules[#host_modules + 1] = "brisk_iot";
			-- Rules come from bench/e2e/iot_rules.lua when present, so the
			-- presence scenario goes through the rule engine.
			local rules_file = root .. "/bench/e2e/iot_rules.lua";
			if exists(rules_file) then extra.iot_rules = dofile(rules_file); end
		end
	end
	local lines = {
		"-- generated by bench/e2e.lua (" .. variant.name .. ")",
		"run_as_root = true",
		"daemonize = false",
		"pidfile = " .. serialize(dir .. "/prosody.pid"),
		"data_path = " .. serialize(dir .. "/data"),
		"plugin_paths = " .. serialize({ root .. "/bench/e2e", root .. "/lualib" }),
		"interfaces = { \"127.0.0.1\" }",
		"local_interfaces = { \"127.0.0.1\" }",
		"c2s_ports = { " .. port .. " }",
		"c2s_require_encryption = false",
		"allow_unencrypted_plain_auth = true",
		"c2s_stanza_size_limit = 1024 * 1024",
		"limits = {}",
		-- Nagle off: otherwise back-to-back small writes to one client wait for
		-- its delayed ACK (40 ms) and the latency figures measure TCP, not Prosody.
		"network_settings = { nagle = false }",
		"authentication = \"internal_hashed\"",
		"storage = " .. serialize(storage),
		"modules_enabled = " .. serialize(global_modules),
		"modules_disabled = { \"s2s\", \"limits\" }",
		"log = { { levels = { min = \"warn\" }, to = \"file\", filename = " .. serialize(dir .. "/prosody.log") .. " } }",
		-- BENCH_E2E_CONFIG: extra global options for both configurations
		-- (e.g. 'gc = { mode = "generational" }'), to try a setting out.
		os.getenv("BENCH_E2E_CONFIG") or "",
		"",
		"VirtualHost \"localhost\"",
		"  modules_enabled = " .. serialize(host_modules),
		"  bench_accounts = " .. accounts,
		"  bench_setup_done = " .. serialize(dir .. "/setup.done"),
	};
	for k, v in pairs(extra) do lines[#lines + 1] = "  " .. k .. " = " .. serialize(v); end
	local path = dir .. "/prosody.cfg.lua";
	local f = assert(io.open(path, "w"));
	f:write(table.concat(lines, "\n"), "\n");
	f:close();
	return path;
end

local function alive(pid)
	local stat = read_all("/proc/" .. pid .. "/stat");
	return stat ~= nil and not stat:match("^%d+ %b() [ZX]");
end

-- Root may raise the hard limit itself; anyone may raise the soft limit to it.
local raise_fd_limit = "ulimit -Hn 65536 2>/dev/null; ulimit -n $(ulimit -Hn)";

-- If the harness gives BENCH_E2E_PIDS, every server is recorded there
-- ("pid dir" lines) so that it can clean up should this script be killed.
local function record_server(pid, dir)
	local path = os.getenv("BENCH_E2E_PIDS");
	if not path then return; end
	local f = io.open(path, "a");
	if f then f:write(pid, " ", dir, "\n"); f:close(); end
end

local Server = {};
Server.__index = Server;

local function start_server(variant)
	local dir = sh("mktemp -d /tmp/brisk-bench-XXXXXX"):match("[^\n]+");
	-- certs/ exists (empty) only so that certmanager has nothing to complain about.
	assert(os.execute("mkdir -p " .. shell_quote(dir .. "/data") .. " " .. shell_quote(dir .. "/certs")));
	local port = free_port();
	local cfg = write_config(dir, port, variant);
	local env = ("LUA_PATH=%s LUA_CPATH=%s "):format(
		shell_quote(os.getenv("LUA_PATH") or (root .. "/lualib/?.lua;" .. root .. "/lualib/?/init.lua;;")),
		shell_quote(os.getenv("LUA_CPATH") or (root .. "/build/?.so;;")));
	-- The fd limit goes as high as the hard limit allows, for both processes.
	local cmd = ("(%s; exec env %s prosody --config %s -F >%s 2>&1) & echo $!"):format(raise_fd_limit,
		env, shell_quote(cfg), shell_quote(dir .. "/stdout.log"));
	local pid = tonumber(sh("sh -c " .. shell_quote(cmd)):match("%d+"));
	record_server(pid, dir);
	local self = setmetatable({ variant = variant, dir = dir, port = port, pid = pid, cfg = cfg }, Server);
	local t_start = socket.gettime();
	local deadline = t_start + 60 + accounts / 100;
	while socket.gettime() < deadline do
		if not alive(pid) then break; end
		local done = read_all(dir .. "/setup.done");
		if done and done:match("^%d+") then
			local c = socket.tcp();
			c:settimeout(1);
			local ok = c:connect("127.0.0.1", port);
			c:close();
			if ok then
				log("%s: server up with %d accounts in %.1f s", variant.name, accounts, socket.gettime() - t_start);
				return self;
			end
		elseif done then
			self:stop();
			error("server setup failed: " .. done);
		end
		socket.sleep(0.1);
	end
	local why = (read_all(dir .. "/stdout.log") or "") .. (read_all(dir .. "/prosody.log") or "");
	self:stop();
	error("Prosody (" .. variant.name .. ") did not come up:\n" .. why:sub(-2000));
end

function Server:stop()
	if self.pid and alive(self.pid) then
		local t0 = socket.gettime();
		os.execute("kill -TERM " .. self.pid .. " 2>/dev/null");
		local deadline = socket.gettime() + 10;
		while alive(self.pid) and socket.gettime() < deadline do socket.sleep(0.05); end
		if alive(self.pid) then os.execute("kill -KILL " .. self.pid .. " 2>/dev/null"); end
		log("%s: server stopped in %.1f s", self.variant.name, socket.gettime() - t0);
	end
	self.pid = nil;
end

-- Lines of the server's log at level error (the log holds warn and up).
function Server:errors()
	local out = {};
	for line in (read_all(self.dir .. "/prosody.log") or ""):gmatch("[^\n]+") do
		if line:match("%serror%s") then out[#out + 1] = line; end
	end
	return out;
end

function Server:cleanup()
	self:stop();
	if not keep then os.execute("rm -rf " .. shell_quote(self.dir)); end
end

local function run_loadgen(server, scenario, size)
	local args = {
		loadgen, "--scenario", scenario, "--port", server.port, "--clients", size.clients,
		"--duration", size.duration, "--server-pid", server.pid,
		"--warmup", size.warmup,
	};
	if size.inflight then args[#args + 1] = "--inflight"; args[#args + 1] = size.inflight; end
	if size.light then
		for _, a in ipairs({ "--light-inflight", size.light, "--light-duration", size.light_duration }) do
			args[#args + 1] = a;
		end
	end
	local quoted = {};
	for i, a in ipairs(args) do quoted[i] = shell_quote(a); end
	local errlog = server.dir .. "/loadgen-" .. scenario .. ".log";
	local cmd = ("%s; %s 2>%s"):format(raise_fd_limit, table.concat(quoted, " "), shell_quote(errlog));
	local out = sh("sh -c " .. shell_quote(cmd));
	local r = {};
	for k, v in out:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v; end
	if not r.scenario then
		error(("load generator failed (%s, %s):\n%s"):format(server.variant.name, scenario,
			(read_all(errlog) or ""):sub(-2000)));
	end
	r.stderr = read_all(errlog) or "";
	return r;
end

-- Run every scenario against every configuration, a fresh server each time
-- so that memory and CPU figures of one run do not leak into the next.  The
-- configurations alternate within a scenario (and swap order every round)
-- so that a slow spell of a shared machine hits both alike.
-- BENCH_E2E_BUDGET (seconds, set by the harness from its time limit): past
-- it, no further rounds are started, so a slow machine yields a report with
-- fewer rounds instead of none at all.
local budget = tonumber(os.getenv("BENCH_E2E_BUDGET"));
local t_begin = socket.gettime();

local function run_all()
	local results = {};
	for _, v in ipairs(variants) do results[v.name] = {}; end
	for _, scenario in ipairs({ "idle", "pingpong", "presence" }) do
		if only and scenario ~= only then goto next; end
		local size = sizes[scenario];
		for round = 1, size.rounds or 1 do
			if round > 1 and budget and socket.gettime() - t_begin > budget then
				log("time budget spent: no round %d of %s", round, scenario);
				break;
			end
			for k = 1, #variants do
				local v = variants[round % 2 == 1 and k or #variants + 1 - k];
				log("%s: %s with %d clients (round %d)", v.name, scenario, size.clients, round);
				local ok, server = pcall(start_server, v);
				local r;
				if ok then
					ok, r = pcall(run_loadgen, server, scenario, size);
					server:stop();
					if ok then
						local errs = server:errors();
						r.server_errors, r.first_error = #errs, errs[1];
					end
					server:cleanup();
				else
					r = server;
				end
				local list = results[v.name][scenario] or {};
				results[v.name][scenario] = list;
				if ok then
					list[#list + 1] = r;
					log("%s: %s: %.0f stanzas/s, %.3f CPU s/100k, p99 %.2f ms, %.1f KiB/client, loadgen CPU %.0f%%",
						v.name, scenario, r.rate, r.server_cpu_per_100k, r.p99_ms, r.rss_per_client_kb,
						r.loadgen_util * 100);
				else
					log("%s: %s failed: %s", v.name, scenario, r);
					list.failed = tostring(r);
				end
			end
		end
		::next::
	end
	return results;
end

local results = run_all();

-- Metrics: how each is read from a result, whether lower is better, and
-- (for the chart) a higher-is-better form.
local metrics = {
	{ "pingpong", "throughput", "stanzas/s", function (r) return r.rate; end },
	{ "pingpong", "server CPU per 100k stanzas", "CPU s", function (r) return r.server_cpu_per_100k; end, lower = true,
		chart = { "efficiency", function (v) return 1e5 / v; end, "stanzas per server CPU s" } },
	{ "pingpong", "latency p50, saturated", "ms", function (r) return r.p50_ms; end, lower = true },
	{ "pingpong", "latency p99, saturated", "ms", function (r) return r.p99_ms; end, lower = true },
	{ "pingpong", "latency p50, light load", "ms", function (r) return r.light_samples > 0 and r.light_p50_ms or nil; end, lower = true },
	{ "pingpong", "latency p99, light load", "ms", function (r) return r.light_samples > 0 and r.light_p99_ms or nil; end, lower = true },
	{ "presence", "throughput", "stanzas/s", function (r) return r.rate; end },
	{ "presence", "server CPU per 100k stanzas", "CPU s", function (r) return r.server_cpu_per_100k; end, lower = true,
		chart = { "efficiency", function (v) return 1e5 / v; end, "stanzas per server CPU s" } },
	{ "presence", "latency p50, saturated", "ms", function (r) return r.p50_ms; end, lower = true },
	{ "presence", "latency p99, saturated", "ms", function (r) return r.p99_ms; end, lower = true },
	{ "presence", "latency p50, light load", "ms", function (r) return r.light_samples > 0 and r.light_p50_ms or nil; end, lower = true },
	{ "presence", "latency p99, light load", "ms", function (r) return r.light_samples > 0 and r.light_p99_ms or nil; end, lower = true },
	{ "presence", "controller re-login until it has every device's presence", "ms",
		function (r) return r.resync_ms >= 0 and r.resync_ms or nil; end, lower = true,
		chart = { "controller re-login speed", function (v) return 1000 / v; end, "re-logins/s" } },
	{ "presence", "server CPU for that re-login", "ms",
		function (r) return r.resync_cpu_s >= 0 and r.resync_cpu_s * 1000 or nil; end, lower = true },
	{ "idle", "server RSS per connected client", "KiB", function (r) return r.rss_per_client_kb; end, lower = true,
		chart = { "memory", function (v) return 1024 / v; end, "clients per MiB of server RSS" } },
	{ "idle", "server CPU per login", "ms", function (r) return r.login_cpu_s / r.logged_in * 1000; end, lower = true,
		chart = { "login cost", function (v) return 1000 / v; end, "logins per server CPU s" } },
	{ "idle", "server CPU while idle", "% of a core", function (r) return r.server_util * 100; end, lower = true },
};

local function fmt(v)
	if type(v) ~= "number" or v ~= v or v == math.huge then return "n/a"; end
	local a = math.abs(v);
	if a >= 1000 then return ("%.0f"):format(v);
	elseif a >= 100 then return ("%.1f"):format(v);
	elseif a >= 1 then return ("%.2f"):format(v);
	else return ("%.3f"):format(v); end
end

-- A metric of one configuration: the median over its rounds.
local function get(vname, m, fn)
	local list = results[vname][m[1]];
	if not list then return nil, "not run"; end
	local vals = {};
	for _, r in ipairs(list) do
		local ok, v = pcall(fn, r);
		if ok and type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge then vals[#vals + 1] = v; end
	end
	if #vals == 0 then return nil; end
	table.sort(vals);
	local n = #vals;
	return n % 2 == 1 and vals[(n + 1) // 2] or (vals[n // 2] + vals[n // 2 + 1]) / 2;
end

local function gain(m, s, b)
	if s and b and s > 0 and b > 0 then return m.lower and s / b or b / s; end
	return nil;
end

local enabled = {};
if brisk.xml then enabled[#enabled + 1] = "`brisk_xml` (global)"; end
if brisk.storage then enabled[#enabled + 1] = "`storage = { roster = \"brisk\" }`"; end
if brisk.iot then enabled[#enabled + 1] = "`brisk_iot` (host)"; end

local out = {};
local function p(s) out[#out + 1] = s or ""; end
p("### End to end: real Prosody on loopback" .. (quick and " (quick)" or ""));
p();
p(("Prosody %s on 127.0.0.1, `internal_hashed` auth (10000 PBKDF2 iterations), no TLS, mod_limits off, "
	.. "driven by `build/bench/loadgen` (one epoll process, real SASL PLAIN, bind, session, initial presence). "
	.. "Brisk configuration: the same plus %s.")
	:format(sh("cat " .. (os.getenv("BRISK_PROSODY_LIB") or "/usr/lib/prosody") .. "/prosody.version 2>/dev/null"):match("[^\n]+") or "?",
		#enabled > 0 and table.concat(enabled, ", ") or "no Brisk module yet (both runs are stock; the ratios show run-to-run noise)"));
p();
p(("Scenarios: **ping-pong** %d clients in pairs, %d messages in flight, %g s; **presence** %d devices + 1 controller "
	.. "(roster of %d, both-way subscriptions), %d changes in flight (every 4th an unavailable/available flap), %g s; "
	.. "**idle** %d connected clients. \"Saturated\" latency is measured in that window (mostly queueing: in flight / "
	.. "throughput), \"light load\" in a following %g s window with %d in flight. "
	.. "A fresh server per run; stock and Brisk alternate; figures are medians over rounds (%d planned).")
	:format(sizes.pingpong.clients, sizes.pingpong.inflight, sizes.pingpong.duration,
		sizes.presence.clients, accounts, sizes.presence.inflight, sizes.presence.duration, sizes.idle.clients,
		sizes.pingpong.light_duration, sizes.pingpong.light, sizes.pingpong.rounds or 1));
p();
-- A module that failed to load leaves a server that still runs, so errors
-- in a server's log are shown before the figures they may invalidate.
for _, v in ipairs(variants) do
	for _, sc in ipairs({ "idle", "pingpong", "presence" }) do
		for _, r in ipairs(results[v.name][sc] or {}) do
			if r.first_error then
				p(("**Warning:** the %s server of the %s scenario logged %d error line(s), first: `%s`")
					:format(v.name, sc, r.server_errors, r.first_error:gsub("`", "'"):sub(1, 300)));
				p();
			end
		end
	end
end
local head = { "| Scenario | Metric | Stock | Brisk | Brisk gain |" };
local rule = { "|---|---|---:|---:|---:|" };
for k = 3, #variants do
	head[#head + 1] = " " .. variants[k].name .. " gain |";
	rule[#rule + 1] = "---:|";
end
p(table.concat(head) .. " Unit |");
p(table.concat(rule) .. "---|");
local tsv = os.getenv("BENCH_TSV");
local tsv_rows = {};
for _, m in ipairs(metrics) do
	local s, s_why = get("stock", m, m[4]);
	local b, b_why = get("brisk", m, m[4]);
	local g = gain(m, s, b);
	local row = ("| %s | %s | %s | %s | %s |"):format(m[1], m[2], s and fmt(s) or s_why or "failed",
		b and fmt(b) or b_why or "failed",
		g and ("%.2f×"):format(g) or "n/a");
	for k = 3, #variants do
		local gk = gain(m, s, get(variants[k].name, m, m[4]));
		row = row .. " " .. (gk and ("%.2f×"):format(gk) or "n/a") .. " |";
	end
	p(row .. " " .. m[3] .. (m.lower and " (lower is better)" or "") .. " |");
	-- The chart's form of a lower-is-better figure is computed from the same
	-- medians as the table, so both always agree.
	local label, unit, cs, cb = m[1] .. " " .. m[2], m[3], s, b;
	if m.chart then
		if s and b and s > 0 and b > 0 then
			label, unit, cs, cb = m[1] .. " " .. m.chart[1], m.chart[3], m.chart[2](s), m.chart[2](b);
		else
			cs, cb = nil, nil;
		end
	end
	if not m.lower or m.chart then
		if cs and cb then
			tsv_rows[#tsv_rows + 1] = ("e2e\t%s\t%.6g\t%.6g\t%s"):format(label, cs, cb, unit);
		end
	end
end
p();
p("Brisk gain: stock/Brisk where lower is better, Brisk/stock otherwise (above 1 means Brisk is better).");
p();
-- The load generator's own load, and anything that went wrong.
local notes = {};
for _, v in ipairs(variants) do
	for _, sc in ipairs({ "pingpong", "presence", "idle" }) do
		local list = results[v.name][sc] or {};
		if list.failed then
			notes[#notes + 1] = ("- %s %s: **failed**: %s"):format(v.name, sc, list.failed:gsub("\n", " "):sub(1, 300));
		end
		for i, r in ipairs(list) do
			notes[#notes + 1] = ("- %s %s #%d: %.0f stanzas received in %.1f s; server busy %.0f%% of a core, "
				.. "load generator %.0f%% of a core; %d/%d logged in in %.1f s, %d client errors, "
				.. "%d server error lines, %d latency samples")
				:format(v.name, sc, i, r.received, r.seconds, r.server_util * 100, r.loadgen_util * 100,
					r.logged_in, r.connections, r.login_s, r.errors, r.server_errors, r.samples);
		end
	end
end
p("<details><summary>Run details</summary>");
p();
for _, n in ipairs(notes) do p(n); end
p();
p("</details>");
p();
io.write(table.concat(out, "\n"));
if tsv and #tsv_rows > 0 then
	local f = assert(io.open(tsv, "a"));
	f:write(table.concat(tsv_rows, "\n"), "\n");
	f:close();
end
