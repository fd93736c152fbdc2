-- End-to-end benchmark: a real Prosody on loopback, started with the stock
-- configuration and with the same configuration plus whichever Brisk modules
-- exist in lualib/ (mod_brisk_xml and mod_brisk_util globally,
-- mod_storage_brisk for rosters, mod_brisk_iot on the host), each driven by
-- the C load generator
-- (build/bench/loadgen).
--
--   eval "$(make -s env)"; lua5.4 bench/e2e.lua [--quick] [--keep] [--breakdown] [--alloc]
--
-- Three configurations, side by side:
--   stock       stock Prosody with its default GC (incremental, 105/500)
--   stock-gen   the same with gc = { mode = "generational" }
--   brisk       stock + Brisk's modules, with the GC docs/scaling.md recommends
-- All three get the scale settings docs/scaling.md recommends (blocklist and
-- PEP cache sizes for the fleet; the harness raises the fd limit).
--
-- Scenarios (--only=a,b runs some of them):
--   idle          clients log in and stay connected; memory per client, itemised
--   large         each client sends one 500 KB stanza, then idles; the same itemisation
--   pingpong      message ping-pong between pairs of clients
--   presence      presence churn towards a controller whose roster holds every device
--   tls-idle      idle over STARTTLS (self-signed certificate made with openssl)
--   tls-pingpong  ping-pong over STARTTLS
--
-- --breakdown adds one configuration per Brisk module (stock plus that module
-- alone, with stock's GC), to see which module a gain or a cost comes from.
-- --alloc also counts the bytes Lua allocates per stanza in ping-pong and
-- presence (a counting allocator in the server; adds a little CPU).
-- --profile (implies --alloc and --keep) also runs a sampling profiler in
-- each server during the measured window: <server dir>/profile.txt;
-- --profile=calls counts every Lua call instead (exact, slow).
-- --study=gc|settings|tls|same-gc runs one of the studies behind
-- docs/scaling.md instead of the comparison (see study_* below).
--
-- Prints a Markdown section; with env BENCH_TSV=<file> it also appends
-- area<TAB>label<TAB>stock<TAB>brisk<TAB>unit rows (higher is better).
-- Every server gets a fresh data directory under /tmp, which is removed
-- afterwards unless --keep is given.  Everything is bounded: each scenario
-- runs for a fixed time and the load generator has its own hard deadlines.
-- Environment knobs for experiments (BENCH_E2E_CONFIG, BENCH_E2E_GC,
-- BENCH_E2E_WITHOUT, BENCH_LOADGEN) are described in docs/benchmarks.md.

local socket = require "socket";

local quick, keep, breakdown, alloc, only, study, profile = false, false, false, false, nil, nil, false;
for _, a in ipairs(arg) do
	if a == "--quick" then quick = true;
	elseif a:match("^%-%-only=") then
		only = {};
		for s in a:match("=(.*)"):gmatch("[^,]+") do only[s] = true; end
	elseif a:match("^%-%-study=") then study = a:match("=(.*)");
	elseif a == "--keep" then keep = true;
	elseif a == "--breakdown" then breakdown = true;
	elseif a == "--alloc" then alloc = true;
	elseif a == "--profile" then alloc, profile, keep = true, true, true;
	elseif a == "--profile=calls" then alloc, profile, keep = true, "calls", true;
	else
		io.stderr:write("usage: lua5.4 bench/e2e.lua [--quick] [--keep] [--breakdown] [--alloc] "
			.. "[--only=scenario,...] [--study=gc|settings|tls|same-gc]\n");
		os.exit(2);
	end
end

local SCENARIOS = { "idle", "large", "pingpong", "presence", "tls-idle", "tls-pingpong" };
do
	local known = {};
	for _, s in ipairs(SCENARIOS) do known[s] = true; end
	known.fd = study == "settings" or nil;  -- the settings study's fd-limit run
	for s in pairs(only or {}) do
		if not known[s] then
			io.stderr:write("e2e: --only takes ", table.concat(SCENARIOS, ", "), "\n");
			os.exit(2);
		end
	end
	if study and study ~= "gc" and study ~= "settings" and study ~= "tls" and study ~= "same-gc" then
		io.stderr:write("e2e: --study takes gc, settings, tls or same-gc\n");
		os.exit(2);
	end
end

local root = (arg[0]:match("^(.*)/bench/[^/]*$") or ".");
if root:sub(1, 1) ~= "/" then root = io.popen("cd '" .. root .. "' && pwd"):read("l"); end
local loadgen = os.getenv("BENCH_LOADGEN") or (root .. "/build/bench/loadgen");  -- override: e.g. a sanitizer build
local probe_so = root .. "/build/bench/bench_probe.so";
local tls_shim = root .. "/build/bench/tls_shim.so";

-- The GC Brisk recommends (docs/scaling.md, measured by --study=gc): most of
-- the CPU that Prosody's default (105/500, a full mark every 5% of heap
-- growth) spends at fleet scale, for a few percent more memory per client;
-- generational saves a little more CPU for 40-90% more memory.
local RECOMMENDED_GC = { mode = "incremental", threshold = 120, speed = 400 };

-- Scenario sizes.  Quick keeps the whole run within the harness's limit.
-- Accounts use 1000 PBKDF2 iterations (Prosody's default is 10000): a login
-- then costs about 6 ms less CPU, the same for stock and Brisk, and the full
-- run fits in its time limit with two rounds of ping-pong and presence
-- (docs/benchmarks.md).
local ITERATIONS = 1000;
local sizes = quick and {
	idle           = { clients = 300, duration = 0.5, warmup = 3, iterations = 1000 },
	large          = { clients = 50, duration = 0.5, warmup = 3, inflight = 8, stanza_kb = 500, iterations = 1000 },
	pingpong       = { clients = 200, inflight = 32, duration = 2, warmup = 0.5, light = 4, light_duration = 1, iterations = 1000 },
	presence       = { clients = 300, inflight = 32, duration = 2, warmup = 0.5, light = 4, light_duration = 1, iterations = 1000 },
	["tls-idle"]   = { clients = 200, duration = 0.5, warmup = 3, iterations = 1000 },
	["tls-pingpong"] = { clients = 100, inflight = 32, duration = 2, warmup = 0.5, iterations = 1000 },
} or {
	idle           = { clients = 5000, duration = 3, warmup = 4, iterations = 1000 },
	large          = { clients = 500, duration = 2, warmup = 4, inflight = 8, stanza_kb = 500, iterations = 1000 },
	pingpong       = { clients = 2000, inflight = 128, duration = 15, warmup = 2, light = 4, light_duration = 4, rounds = 2, iterations = 1000 },
	presence       = { clients = 3000, inflight = 128, duration = 15, warmup = 2, light = 4, light_duration = 4, rounds = 2, iterations = 1000 },
	["tls-idle"]   = { clients = 5000, duration = 2, warmup = 4, iterations = 1000 },
	["tls-pingpong"] = { clients = 2000, inflight = 128, duration = 10, warmup = 2, iterations = 1000 },
};
-- The TLS scenarios compare stock and Brisk only (what TLS costs does not
-- depend on the GC), which keeps the full run inside its time limit.
local VARIANTS_OF = { ["tls-idle"] = { stock = true, brisk = true }, ["tls-pingpong"] = { stock = true, brisk = true } };
local KIND = { idle = "idle", large = "large", pingpong = "pingpong", presence = "presence",
	["tls-idle"] = "idle", ["tls-pingpong"] = "pingpong" };
local MEMORY = { idle = true, large = true, ["tls-idle"] = true };
local accounts = 0;
for _, s in pairs(sizes) do accounts = math.max(accounts, s.clients); end
-- BENCH_E2E_ROUNDS=1: fewer rounds of ping-pong and presence, for experiments.
if tonumber(os.getenv("BENCH_E2E_ROUNDS")) then
	for _, s in pairs(sizes) do
		if s.rounds then s.rounds = tonumber(os.getenv("BENCH_E2E_ROUNDS")); end
	end
end

local t_start_all = socket.gettime();
local function log(fmt, ...)
	io.stderr:write(("e2e: [%.1f s] "):format(socket.gettime() - t_start_all), fmt:format(...), "\n");
end

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
local have_probe = exists(probe_so);
if not have_probe then log("%s is missing (make bench-loadgen): no malloc figures", probe_so); end

-- Which Brisk modules exist right now; the Brisk server enables exactly these.
local brisk = {
	xml = exists(root .. "/lualib/mod_brisk_xml.lua"),
	util = exists(root .. "/lualib/mod_brisk_util.lua"),
	storage = exists(root .. "/lualib/mod_storage_brisk.lua"),
	iot = exists(root .. "/lualib/mod_brisk_iot.lua"),
};
local all_brisk = {};
for m, present in pairs(brisk) do all_brisk[m] = present or nil; end

-- The settings docs/scaling.md recommends for a fleet, for every
-- configuration: caches that hold every online user (Prosody's defaults,
-- 64 or 256 blocklists and 1000 PEP services, are far below a fleet and
-- reload from disk or evict by linear scan on every stanza).
local function scale_settings(n)
	return { blocklist_cache_size = n, pep_service_cache_size = n };
end

-- BENCH_E2E_GC='{ mode = "generational" }' gives every configuration that
-- GC (and drops stock-gen, which it would duplicate); BENCH_E2E_GC=default
-- gives every configuration Prosody's default GC.
local gc_override, gc_overridden;
do
	local src = os.getenv("BENCH_E2E_GC");
	if src == "default" then
		gc_overridden = true;
	elseif src and src ~= "" then
		gc_override = assert(load("return " .. src, "BENCH_E2E_GC", "t", {}))();
		gc_overridden = true;
	end
end

local function gc_label(gc)
	if not gc then return "default GC (incremental 105/500)"; end
	local parts = {};
	for _, k in ipairs({ "threshold", "speed", "step_size", "minor_threshold", "major_threshold" }) do
		if gc[k] then parts[#parts + 1] = k .. " " .. gc[k]; end
	end
	return gc.mode .. (#parts > 0 and (" (" .. table.concat(parts, ", ") .. ")") or "");
end

-- The configurations of the comparison.
local variants;
do
	local settings = scale_settings(accounts + 1);
	variants = {
		{ name = "stock", title = "Stock", mods = {}, gc = gc_override, settings = settings },
	};
	if not gc_overridden then
		variants[#variants + 1] = { name = "stock-gen", title = "Stock, generational", mods = {},
			gc = { mode = "generational" }, settings = settings };
	end
	variants[#variants + 1] = { name = "brisk", title = "Brisk", mods = all_brisk,
		gc = (gc_overridden and gc_override) or (not gc_overridden and RECOMMENDED_GC) or nil, settings = settings };
	if breakdown then
		for _, m in ipairs({ "xml", "util", "storage", "iot" }) do
			if brisk[m] then
				variants[#variants + 1] = { name = "only " .. m, title = "only " .. m, mods = { [m] = true },
					gc = gc_override, settings = settings, breakdown = true };
			end
		end
	end
end
local function variant(name)
	for _, v in ipairs(variants) do if v.name == name then return v; end end
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

-- opts: tls (bool), probe (bool: load mod_bench_probe), count_lua (bool),
-- iterations (PBKDF2 iterations of the accounts).
local function write_config(dir, port, v, opts)
	local global_modules = { table.unpack(stock_modules) };
	local host_modules = { "bench_setup" };
	local storage = "internal";
	local extra = {};
	local extra_global = {};
	do
		local mods = v.mods;
		if mods.xml then
			global_modules[#global_modules + 1] = "brisk_xml";
			-- Idle-stream hibernation (a brisk_xml without it ignores the
			-- option): short enough to show within the memory scenarios'
			-- idle period (warmup >= 3 s); Brisk's default is 30 s.
			extra_global[#extra_global + 1] = "brisk_xml_hibernate_after = 2";
		end
		if mods.util then global_modules[#global_modules + 1] = "brisk_util"; end
		if mods.storage then storage = { roster = "brisk" }; end
		if mods.iot then
			host_modules[#host_modules + 1] = "brisk_iot";
			-- Rules come from bench/e2e/iot_rules.lua when present, so the
			-- presence scenario goes through the rule engine.
			local rules_file = root .. "/bench/e2e/iot_rules.lua";
			if exists(rules_file) then extra.iot_rules = dofile(rules_file); end
		end
	end
	if opts.probe then global_modules[#global_modules + 1] = "bench_probe"; end
	if opts.tls then global_modules[#global_modules + 1] = "tls"; end  -- STARTTLS (in Debian's default set)
	local lines = {
		"-- generated by bench/e2e.lua (" .. v.name .. ")",
		"run_as_root = true",
		"daemonize = false",
		"pidfile = " .. serialize(dir .. "/prosody.pid"),
		"data_path = " .. serialize(dir .. "/data"),
		"plugin_paths = " .. serialize({ root .. "/bench/e2e", root .. "/lualib" }),
		"interfaces = { \"127.0.0.1\" }",
		"local_interfaces = { \"127.0.0.1\" }",
		"c2s_ports = { " .. port .. " }",
		"c2s_require_encryption = " .. tostring(opts.tls and true or false),
		"allow_unencrypted_plain_auth = true",
		"c2s_stanza_size_limit = 1024 * 1024",
		"limits = {}",
		-- Nagle off: otherwise back-to-back small writes to one client wait for
		-- its delayed ACK (40 ms) and the latency figures measure TCP, not Prosody.
		"network_settings = { nagle = false }",
		"authentication = \"internal_hashed\"",
		"default_iteration_count = " .. (opts.iterations or ITERATIONS),
		"storage = " .. serialize(storage),
		"modules_enabled = " .. serialize(global_modules),
		"modules_disabled = { \"s2s\", \"limits\" }",
		"log = { { levels = { min = \"warn\" }, to = \"file\", filename = " .. serialize(dir .. "/prosody.log") .. " } }",
	};
	if v.gc then lines[#lines + 1] = "gc = " .. serialize(v.gc); end
	for _, l in ipairs(extra_global) do lines[#lines + 1] = l; end
	for k, val in pairs(v.settings or {}) do lines[#lines + 1] = k .. " = " .. serialize(val); end
	if opts.tls then
		lines[#lines + 1] = "certificates = " .. serialize(dir .. "/certs");
		local ssl = { certificate = dir .. "/certs/localhost.crt", key = dir .. "/certs/localhost.key" };
		for k, val in pairs(v.ssl or {}) do ssl[k] = val; end
		lines[#lines + 1] = "ssl = " .. serialize(ssl);
	end
	if opts.probe then
		lines[#lines + 1] = "bench_probe_dir = " .. serialize(dir);
		if have_probe then lines[#lines + 1] = "bench_probe_so = " .. serialize(probe_so); end
		lines[#lines + 1] = "bench_probe_count_lua = " .. tostring(opts.count_lua and true or false);
		if profile then lines[#lines + 1] = "bench_probe_profile = " .. serialize(profile); end
	end
	for _, l in ipairs(v.config or {}) do lines[#lines + 1] = l; end
	-- BENCH_E2E_CONFIG: extra global options for every configuration, to try
	-- a setting out.
	lines[#lines + 1] = os.getenv("BENCH_E2E_CONFIG") or "";
	for _, l in ipairs({
		"",
		"VirtualHost \"localhost\"",
		"  modules_enabled = " .. serialize(host_modules),
		"  bench_accounts = " .. (opts.accounts or accounts),
		"  bench_setup_done = " .. serialize(dir .. "/setup.done"),
	}) do lines[#lines + 1] = l; end
	for k, val in pairs(extra) do lines[#lines + 1] = "  " .. k .. " = " .. serialize(val); end
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

-- A self-signed ECDSA P-256 certificate for "localhost", in the server's folder.
local function make_certificate(dir)
	local cmd = ("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 "
		.. "-subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout %s -out %s >/dev/null 2>&1")
		:format(shell_quote(dir .. "/certs/localhost.key"), shell_quote(dir .. "/certs/localhost.crt"));
	if not os.execute(cmd) then error("openssl could not make a certificate"); end
end

-- opts as for write_config, plus env (extra environment, e.g. LD_PRELOAD)
-- and fd_limit (the server's soft fd limit; default: as high as allowed).
local function start_server(v, opts)
	-- BENCH_E2E_TMPDIR: where the servers' folders go (default /tmp).
	local dir = sh("mktemp -d " .. shell_quote((os.getenv("BENCH_E2E_TMPDIR") or "/tmp") .. "/brisk-bench-XXXXXX")):match("[^\n]+");
	-- certs/ exists (empty without TLS) so that certmanager has nothing to complain about.
	assert(os.execute("mkdir -p " .. shell_quote(dir .. "/data") .. " " .. shell_quote(dir .. "/certs")));
	if opts.tls then make_certificate(dir); end
	local port = free_port();
	local cfg = write_config(dir, port, v, opts);
	local env = ("LUA_PATH=%s LUA_CPATH=%s "):format(
		shell_quote(os.getenv("LUA_PATH") or (root .. "/lualib/?.lua;" .. root .. "/lualib/?/init.lua;;")),
		shell_quote(os.getenv("LUA_CPATH") or (root .. "/build/?.so;;")));
	for k, val in pairs(opts.env or {}) do env = env .. k .. "=" .. shell_quote(val) .. " "; end
	local limit = opts.fd_limit and ("ulimit -n " .. math.floor(opts.fd_limit)) or raise_fd_limit;
	local cmd = ("(%s; exec env %s prosody --config %s -F >%s 2>&1) & echo $!"):format(limit,
		env, shell_quote(cfg), shell_quote(dir .. "/stdout.log"));
	local pid = tonumber(sh("sh -c " .. shell_quote(cmd)):match("%d+"));
	record_server(pid, dir);
	local self = setmetatable({ variant = v, dir = dir, port = port, pid = pid, cfg = cfg, opts = opts }, Server);
	local n = opts.accounts or accounts;
	local t_start = socket.gettime();
	local deadline = t_start + 60 + n / 100;
	while socket.gettime() < deadline do
		if not alive(pid) then break; end
		local done = read_all(dir .. "/setup.done");
		if done and done:match("^%d+") then
			local c = socket.tcp();
			c:settimeout(1);
			local ok = c:connect("127.0.0.1", port);
			c:close();
			if ok then
				log("%s: server up with %d accounts in %.1f s", v.name, n, socket.gettime() - t_start);
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
	error("Prosody (" .. v.name .. ") did not come up:\n" .. why:sub(-2000));
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

-- A probe answer (key=value lines) as a table, or nil.
local function parse_probe(text)
	if not text then return nil; end
	local t = {};
	for k, v in text:gmatch("([%w_]+)=([^\n]*)") do t[k] = tonumber(v) or v; end
	return t;
end

-- Ask the server for a probe ourselves (after the load generator is gone).
function Server:probe(label)
	if not self.opts.probe or not self.pid then return nil; end
	local out = self.dir .. "/probe-" .. label .. ".txt";
	os.remove(out);
	local f = assert(io.open(self.dir .. "/probe.request.tmp", "w"));
	f:write(label, "\n");
	f:close();
	os.rename(self.dir .. "/probe.request.tmp", self.dir .. "/probe.request");
	os.execute("kill -USR2 " .. self.pid .. " 2>/dev/null");
	local deadline = socket.gettime() + 60;
	while socket.gettime() < deadline do
		if exists(out) then return parse_probe(read_all(out)); end
		socket.sleep(0.05);
	end
	return nil;
end

local function run_loadgen(server, sc, size)
	local kind = KIND[sc] or sc;
	local args = {
		loadgen, "--scenario", kind, "--port", server.port, "--clients", size.clients,
		"--duration", size.duration, "--server-pid", server.pid,
		"--warmup", size.warmup,
	};
	local function add(...) for _, a in ipairs({ ... }) do args[#args + 1] = a; end end
	if size.inflight then add("--inflight", size.inflight); end
	if size.light then add("--light-inflight", size.light, "--light-duration", size.light_duration); end
	if server.opts.tls then add("--tls", 1); end
	if size.tls_max then add("--tls-max", size.tls_max); end
	if size.stanza_kb then add("--stanza-kb", size.stanza_kb); end
	if size.connect_timeout then add("--connect-timeout", size.connect_timeout); end
	if server.opts.probe then add("--probe", server.dir); end
	local quoted = {};
	for i, a in ipairs(args) do quoted[i] = shell_quote(a); end
	local errlog = server.dir .. "/loadgen-" .. sc .. ".log";
	local cmd = ("%s; %s 2>%s"):format(raise_fd_limit, table.concat(quoted, " "), shell_quote(errlog));
	local out = sh("sh -c " .. shell_quote(cmd));
	local f = io.open(server.dir .. "/loadgen-" .. sc .. ".out", "w");
	if f then f:write(out); f:close(); end
	local r = {};
	for k, v in out:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v; end
	if not r.scenario then
		error(("load generator failed (%s, %s):\n%s"):format(server.variant.name, sc,
			(read_all(errlog) or ""):sub(-2000)));
	end
	r.stderr = read_all(errlog) or "";
	r.probe = {};
	for _, label in ipairs({ "base", "ready", "mark-start", "mark-end", "mark-light-start", "mark-light-end" }) do
		r.probe[label] = parse_probe(read_all(server.dir .. "/probe-" .. label .. ".txt"));
	end
	return r;
end

-- One server, one load generator run; returns the result or nil, error.
-- opts as for start_server; after = probe once more when every client left.
local function run_one(v, sc, size, opts)
	log("%s: %s with %d clients", v.name, sc, size.clients);
	local ok, server = pcall(start_server, v, opts);
	if not ok then return nil, server; end
	local r;
	ok, r = pcall(run_loadgen, server, sc, size);
	if ok and opts.after then
		-- Once the server has closed every session (it may still be busy
		-- with the load generator's goodbyes), see what memory stays.
		local deadline = socket.gettime() + 30;
		repeat
			socket.sleep(0.5);
			r.probe.after = server:probe("after");
		until not r.probe.after or (r.probe.after.sessions or 0) == 0 or socket.gettime() > deadline;
	end
	server:stop();
	if ok then
		local errs = server:errors();
		r.server_errors, r.first_error = #errs, errs[1];
		local shim = {};
		for l in (read_all(server.dir .. "/stdout.log") or ""):gmatch("tls_shim: ([^\n]*)") do shim[#shim + 1] = l; end
		r.shim = #shim > 0 and table.concat(shim, "; ") or nil;
	end
	server:cleanup();
	if not ok then return nil, r; end
	log("%s: %s: %.0f stanzas/s, %.3f CPU s/100k, p99 %.2f ms, %.1f KiB/client, loadgen CPU %.0f%%",
		v.name, sc, r.rate, r.server_cpu_per_100k, r.p99_ms, r.rss_per_client_kb, r.loadgen_util * 100);
	return r;
end

local function options_for(sc, size)
	return {
		tls = sc:match("^tls%-") ~= nil,
		probe = MEMORY[sc] or alloc,
		count_lua = MEMORY[sc] or alloc,
		iterations = size.iterations,
		after = MEMORY[sc],
	};
end

-- BENCH_E2E_BUDGET (seconds, set by the harness from its time limit): a
-- round that would end past it (judged by the longest round so far) is not
-- started, so a slow machine yields a report with fewer rounds, or fewer
-- scenarios, instead of none at all.  Every scenario's first round comes
-- before any second round, so second rounds are what goes first.
local budget = tonumber(os.getenv("BENCH_E2E_BUDGET"));
local t_begin = socket.gettime();
local skipped = {};

-- Run every scenario against every configuration, a fresh server each time
-- so that memory and CPU figures of one run do not leak into the next.  The
-- configurations alternate within a scenario (and swap order every round)
-- so that a slow spell of a shared machine hits all alike.
local function run_all(vs, scenarios, size_of, opts_of)
	local results = {};
	for _, v in ipairs(vs) do results[v.name] = {}; end
	local plan = {};
	for _, sc in ipairs(scenarios) do
		for round = 1, size_of(sc).rounds or 1 do plan[#plan + 1] = { sc = sc, round = round }; end
	end
	table.sort(plan, function (a, b)
		if a.round ~= b.round then return a.round < b.round; end
		local ia, ib;
		for i, sc in ipairs(scenarios) do
			if sc == a.sc then ia = i; end
			if sc == b.sc then ib = i; end
		end
		return ia < ib;
	end);
	local longest = 0;
	for _, step in ipairs(plan) do
		local sc, round = step.sc, step.round;
		local size = size_of(sc);
		local elapsed = socket.gettime() - t_begin;
		if budget and elapsed + longest > budget then
			log("time budget: %s round %d not started (%.0f s spent, a round takes up to %.0f s)", sc, round, elapsed, longest);
			skipped[#skipped + 1] = sc .. (round > 1 and (" round " .. round) or "");
			goto next_step;
		end
		do
			local t0 = socket.gettime();
			for k = 1, #vs do
				local v = vs[round % 2 == 1 and k or #vs + 1 - k];
				if vs.filter and vs.filter[sc] and not vs.filter[sc][v.name] then goto next_variant; end
				local r, err = run_one(v, sc, size, opts_of(sc, size, v));
				local list = results[v.name][sc] or {};
				results[v.name][sc] = list;
				if r then
					list[#list + 1] = r;
				else
					log("%s: %s failed: %s", v.name, sc, err);
					list.failed = tostring(err);
				end
				::next_variant::
			end
			longest = math.max(longest, socket.gettime() - t0);
		end
		::next_step::
	end
	return results;
end

-- ---------------------------------------------------------------------------
-- Figures

local function fmt(v)
	if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then return "n/a"; end
	local a = math.abs(v);
	if a >= 1000 then return ("%.0f"):format(v);
	elseif a >= 100 then return ("%.1f"):format(v);
	elseif a >= 1 then return ("%.2f"):format(v);
	else return ("%.3f"):format(v); end
end

local function median(vals)
	if #vals == 0 then return nil; end
	table.sort(vals);
	local n = #vals;
	return n % 2 == 1 and vals[(n + 1) // 2] or (vals[n // 2] + vals[n // 2 + 1]) / 2;
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge; end

-- A figure of one configuration in one scenario: the median over its rounds.
local function get(results, vname, sc, fn)
	local list = results[vname] and results[vname][sc];
	if not list then return nil, "not run"; end
	local vals = {};
	for _, r in ipairs(list) do
		local ok, v = pcall(fn, r);
		if ok and finite(v) then vals[#vals + 1] = v; end
	end
	if #vals == 0 then return nil, list.failed and "failed" or "n/a"; end
	return median(vals);
end

local function per_client_kib(r, a, b)
	return (a - b) / r.logged_in / 1024;
end

-- Memory per connected client, itemised from the probes before the first
-- login ("base") and after the login burst settled ("ready"), in KiB.
--   rss        VmRSS growth
--   lua        Lua heap (collectgarbage "count"): live + garbage
--   lua_live   what survives a full collection
--   garbage    lua - lua_live
--   c_malloc   C memory allocated with malloc directly (libexpat, OpenSSL)
--   c_luaalloc C memory allocated through the Lua allocator outside the GC's count
--   overhead   malloc's headers and rounding of the blocks through the Lua allocator
--   rest       rss - everything malloc holds: freed memory malloc keeps, partly used pages
--   parser_c   parser C memory per client: brisk.xml.memory() when present, else
--              the server's own parser measured by creating parsers (see mod_bench_probe)
--   parser_lua, socket   Lua-side cost of one parser / one LuaSocket object
local function memory_items(r)
	local b, a = r.probe and r.probe.base, r.probe and r.probe.ready;
	if not (b and a and r.logged_in and r.logged_in > 0) then return nil; end
	local n = r.logged_in;
	local m = {};
	m.rss = (a.rss_kb - b.rss_kb) / n;
	m.lua = per_client_kib(r, a.lua_bytes, b.lua_bytes);
	if a.lua_live_bytes and b.lua_live_bytes then
		m.lua_live = per_client_kib(r, a.lua_live_bytes, b.lua_live_bytes);
		m.garbage = m.lua - m.lua_live;
	end
	if a.malloc_inuse and a.lua_chunks and b.lua_chunks then
		m.c_malloc = per_client_kib(r, a.malloc_inuse - a.lua_chunks, b.malloc_inuse - b.lua_chunks);
		m.c_luaalloc = per_client_kib(r, a.lua_requested - a.lua_bytes, b.lua_requested - b.lua_bytes);
		m.overhead = per_client_kib(r, a.lua_chunks - a.lua_requested, b.lua_chunks - b.lua_requested);
		m.rest = m.rss - per_client_kib(r, a.malloc_inuse, b.malloc_inuse);
	elseif a.malloc_inuse then
		m.c_malloc = per_client_kib(r, a.malloc_inuse - a.lua_bytes, b.malloc_inuse - b.lua_bytes);
		m.rest = m.rss - per_client_kib(r, a.malloc_inuse, b.malloc_inuse);
	end
	if a.xml_bytes and a.xml_streams then
		m.parser_c = a.xml_bytes / n / 1024;
		m.parser_c_method = "brisk.xml.memory()";
		m.xml_hibernating = a.xml_hibernating;
		m.xml_streams = a.xml_streams;
	elseif a.parser_c_bytes then
		m.parser_c = a.parser_c_bytes / 1024;
		m.parser_c_method = "parsers created in the server";
	end
	if a.parser_lua_bytes then m.parser_lua = a.parser_lua_bytes / 1024; end
	if a.rss_after_trim_kb then m.rss_trimmed = (a.rss_after_trim_kb - b.rss_kb) / n; end
	if a.socket_lua_bytes then m.socket = a.socket_lua_bytes / 1024; end
	if m.lua_live and m.parser_lua and m.socket then
		m.session = m.lua_live - m.parser_lua - m.socket;
	end
	-- After every client left: read after a full collection (a parser's C
	-- memory goes with its userdata's __gc), against the base before any.
	local after = r.probe.after;
	if after and after.rss_after_gc_kb and (after.sessions or 0) == 0 then  -- n/a while sessions remain
		m.after_rss = (after.rss_after_gc_kb - b.rss_kb) / n;
		if after.malloc_inuse_after_gc and after.lua_chunks_after_gc and b.lua_chunks then
			m.after_c_malloc = per_client_kib(r, after.malloc_inuse_after_gc - after.lua_chunks_after_gc,
				b.malloc_inuse - b.lua_chunks);
		end
		if after.lua_live_bytes and b.lua_live_bytes then
			m.after_lua_live = per_client_kib(r, after.lua_live_bytes, b.lua_live_bytes);
		end
	end
	return m;
end

local function mem(key) return function (r) return (memory_items(r) or {})[key]; end; end

-- Lua bytes allocated per stanza delivered in the measured window (--alloc).
local function alloc_per_stanza(r)
	local s, e = r.probe and r.probe["mark-start"], r.probe and r.probe["mark-end"];
	if not (s and e and s.lua_allocated and e.lua_allocated and r.received > 0) then return nil; end
	return (e.lua_allocated - s.lua_allocated) / r.received;
end

-- The same in the light-load window, where no stanzas queue up, so that a
-- slower server's bigger batches (more stanzas per read and write) do not
-- make it look thriftier.
local function alloc_per_stanza_light(r)
	local s, e = r.probe and r.probe["mark-light-start"], r.probe and r.probe["mark-light-end"];
	if not (s and e and s.lua_allocated and e.lua_allocated and (r.light_received or 0) > 0) then return nil; end
	return (e.lua_allocated - s.lua_allocated) / r.light_received;
end

local function cpu_per_100k_light(r)
	if not ((r.light_received or 0) > 0 and r.light_server_cpu_s) then return nil; end
	return r.light_server_cpu_s / r.light_received * 1e5;
end

local function rss_under_load(r)
	if not (r.rss_end_kb and r.rss_start_kb and r.logged_in > 0) then return nil; end
	return (r.rss_end_kb - r.rss_start_kb) / r.logged_in;
end

local function prosody_version()
	return sh("cat " .. (os.getenv("BRISK_PROSODY_LIB") or "/usr/lib/prosody") .. "/prosody.version 2>/dev/null"):match("[^\n]+") or "?";
end

local function load_average()
	return (read_all("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)") or "?";
end

local out = {};
local function p(s) out[#out + 1] = s or ""; end

-- Warnings about server errors and failures, and the per-run notes.
local function run_notes(results, vs, scenarios)
	for _, v in ipairs(vs) do
		for _, sc in ipairs(scenarios) do
			for _, r in ipairs(results[v.name][sc] or {}) do
				if r.first_error then
					p(("**Warning:** the %s server of the %s scenario logged %d error line(s), first: `%s`")
						:format(v.name, sc, r.server_errors, r.first_error:gsub("`", "'"):sub(1, 300)));
					p();
				end
			end
		end
	end
end

local function run_details(results, vs, scenarios)
	local notes = {};
	for _, v in ipairs(vs) do
		for _, sc in ipairs(scenarios) do
			local list = results[v.name][sc] or {};
			if list.failed then
				notes[#notes + 1] = ("- %s %s: **failed**: %s"):format(v.name, sc, list.failed:gsub("\n", " "):sub(1, 300));
			end
			for i, r in ipairs(list) do
				local extra = "";
				if r.uploads and r.uploads > 0 then
					extra = (", %d large stanzas answered in %.1f s (%.0f ms server CPU each)")
						:format(r.uploads, r.upload_s, r.upload_cpu_s / r.uploads * 1000);
				end
				local m = memory_items(r);
				if m and m.xml_streams then
					extra = extra .. (", brisk.xml: %d streams, %s hibernating"):format(m.xml_streams, tostring(m.xml_hibernating));
				end
				if r.shim then extra = extra .. ", " .. r.shim; end
				notes[#notes + 1] = ("- %s %s #%d: %.0f stanzas received in %.1f s; server busy %.0f%% of a core, "
					.. "load generator %.0f%% of a core; %d/%d logged in in %.1f s, %d client errors, "
					.. "%d server error lines, %d latency samples%s")
					:format(v.name, sc, i, r.received, r.seconds, r.server_util * 100, r.loadgen_util * 100,
						r.logged_in, r.connections, r.login_s, r.errors, r.server_errors or 0, r.samples, extra);
			end
		end
	end
	p("<details><summary>Run details</summary>");
	p();
	for _, n in ipairs(notes) do p(n); end
	p();
	p("</details>");
	p();
end

local tsv_rows = {};

-- ---------------------------------------------------------------------------
-- The comparison

local function report_comparison(results, scenarios)
	local ran = {};
	for _, sc in ipairs(scenarios) do ran[sc] = true; end
	local has_gen = variant("stock-gen") ~= nil;
	local enabled = {};
	if brisk.xml then enabled[#enabled + 1] = "`brisk_xml` (global)"; end
	if brisk.util then enabled[#enabled + 1] = "`brisk_util` (global)"; end
	if brisk.storage then enabled[#enabled + 1] = "`storage = { roster = \"brisk\" }`"; end
	if brisk.iot then enabled[#enabled + 1] = "`brisk_iot` (host)"; end

	p("### End to end: real Prosody on loopback" .. (quick and " (quick)" or ""));
	p();
	p(("Prosody %s on 127.0.0.1, `internal_hashed` auth, mod_limits off, driven by `build/bench/loadgen` "
		.. "(one epoll process, real SASL PLAIN, bind, session, initial presence; STARTTLS through OpenSSL in the "
		.. "`tls-` scenarios). Load average at the end: %s.")
		:format(prosody_version(), load_average()));
	p();
	p("Configurations, each with the scale settings of docs/scaling.md (`blocklist_cache_size` and "
		.. "`pep_service_cache_size` " .. (accounts + 1) .. ", fd limit raised):");
	p();
	for _, v in ipairs(variants) do
		if not v.breakdown then
			p(("- **%s**: %s, %s"):format(v.title,
				next(v.mods) and ("stock plus " .. (#enabled > 0 and table.concat(enabled, ", ") or "nothing")) or "stock modules",
				gc_label(v.gc)));
		end
	end
	if breakdown then p("- **only …**: stock plus that Brisk module alone, " .. gc_label(gc_override)); end
	p();
	p(("Scenarios: **idle** %d clients; **large** %d clients each send one %d KB stanza (an IQ the server answers "
		.. "with an error), %d at a time, then idle; **ping-pong** %d clients in pairs, %d messages in flight, %g s; "
		.. "**presence** %d devices + 1 controller (roster of %d, both-way subscriptions), %d changes in flight "
		.. "(every 4th an unavailable/available flap), %g s; **tls-idle** %d and **tls-ping-pong** %d clients "
		.. "(%g s) over STARTTLS. \"Light load\" latency is measured in a following %g s window with %d in flight. "
		.. "A fresh server per run; configurations alternate; figures are medians over rounds "
		.. "(ping-pong and presence: %d planned).")
		:format(sizes.idle.clients, sizes.large.clients, sizes.large.stanza_kb, sizes.large.inflight,
			sizes.pingpong.clients, sizes.pingpong.inflight, sizes.pingpong.duration,
			sizes.presence.clients, accounts, sizes.presence.inflight, sizes.presence.duration,
			sizes["tls-idle"].clients, sizes["tls-pingpong"].clients, sizes["tls-pingpong"].duration,
			sizes.pingpong.light_duration, sizes.pingpong.light, sizes.pingpong.rounds or 1));
	p();
	run_notes(results, variants, scenarios);
	if #skipped > 0 then
		p("**Not run, for lack of time (the harness's limit):** " .. table.concat(skipped, ", ") .. ".");
		p();
	end

	-- The rows ping-pong and presence share, in this order.
	local function load_metrics(sc)
		return {
			{ sc, "throughput", "stanzas/s", function (r) return r.rate; end },
			{ sc, "server CPU per 100k stanzas", "CPU s", function (r) return r.server_cpu_per_100k; end, lower = true,
				chart = { "efficiency", function (v) return 1e5 / v; end, "stanzas per server CPU s" } },
			{ sc, "Lua allocated per stanza", "bytes", alloc_per_stanza, lower = true, optional = true },
			{ sc, "server RSS per client after the window", "KiB", rss_under_load, lower = true },
			{ sc, "latency p50, saturated", "ms", function (r) return r.p50_ms; end, lower = true },
			{ sc, "latency p99, saturated", "ms", function (r) return r.p99_ms; end, lower = true },
			{ sc, "latency p50, light load", "ms", function (r) return r.light_samples > 0 and r.light_p50_ms or nil; end, lower = true },
			{ sc, "latency p99, light load", "ms", function (r) return r.light_samples > 0 and r.light_p99_ms or nil; end, lower = true },
			{ sc, "server CPU per 100k stanzas, light load", "CPU s", cpu_per_100k_light, lower = true },
			{ sc, "Lua allocated per stanza, light load", "bytes", alloc_per_stanza_light, lower = true, optional = true },
		};
	end
	local metrics = {};
	for _, sc in ipairs({ "pingpong", "presence" }) do
		for _, m in ipairs(load_metrics(sc)) do metrics[#metrics + 1] = m; end
	end
	for _, m in ipairs({
		{ "presence", "controller re-login until it has every device's presence", "ms",
			function (r) return r.resync_ms >= 0 and r.resync_ms or nil; end, lower = true,
			chart = { "controller re-login speed", function (v) return 1000 / v; end, "re-logins/s" } },
		{ "presence", "server CPU for that re-login", "ms",
			function (r) return r.resync_cpu_s >= 0 and r.resync_cpu_s * 1000 or nil; end, lower = true },
		{ "idle", "server RSS per connected client", "KiB", function (r) return r.rss_per_client_kb; end, lower = true,
			chart = { "memory", function (v) return 1024 / v; end, "clients per MiB of server RSS" } },
		{ "idle", "server CPU per login (1000 PBKDF2 iterations)", "ms", function (r) return r.login_cpu_s / r.logged_in * 1000; end, lower = true,
			chart = { "login cost", function (v) return 1000 / v; end, "logins per server CPU s" } },
		{ "idle", "server CPU while idle", "% of a core", function (r) return r.server_util * 100; end, lower = true },
		{ "large", "server RSS per client after its large stanza", "KiB", function (r) return r.rss_per_client_kb; end, lower = true,
			chart = { "memory", function (v) return 1024 / v; end, "clients per MiB of server RSS" } },
		{ "large", "server CPU per large stanza", "ms", function (r) return r.uploads > 0 and r.upload_cpu_s / r.uploads * 1000 or nil; end, lower = true },
		{ "tls-idle", "server RSS per connected client", "KiB", function (r) return r.rss_per_client_kb; end, lower = true,
			chart = { "memory", function (v) return 1024 / v; end, "clients per MiB of server RSS" } },
		{ "tls-idle", "server CPU per login (TLS handshake included)", "ms", function (r) return r.login_cpu_s / r.logged_in * 1000; end, lower = true },
		{ "tls-pingpong", "throughput", "stanzas/s", function (r) return r.rate; end },
		{ "tls-pingpong", "server CPU per 100k stanzas", "CPU s", function (r) return r.server_cpu_per_100k; end, lower = true,
			chart = { "efficiency", function (v) return 1e5 / v; end, "stanzas per server CPU s" } },
		{ "tls-pingpong", "server RSS per client after the window", "KiB", rss_under_load, lower = true },
	}) do metrics[#metrics + 1] = m; end

	local function gain(m, s, b)
		if s and b and s > 0 and b > 0 then return m.lower and s / b or b / s; end
		return nil;
	end
	local cols = { "stock" };
	if has_gen then cols[#cols + 1] = "stock-gen"; end
	cols[#cols + 1] = "brisk";
	local function cols_of(sc)
		local out = {};
		for _, c in ipairs(cols) do
			if not (VARIANTS_OF[sc] and not VARIANTS_OF[sc][c]) then out[#out + 1] = c; end
		end
		return out;
	end
	local head = "| Scenario | Metric |";
	local rule = "|---|---|";
	for _, c in ipairs(cols) do head = head .. " " .. variant(c).title .. " |"; rule = rule .. "---:|"; end
	head = head .. " Brisk gain vs stock |";
	rule = rule .. "---:|";
	if has_gen then head = head .. " Brisk gain vs stock, generational |"; rule = rule .. "---:|"; end
	for _, v in ipairs(variants) do
		if v.breakdown then head = head .. " " .. v.name .. " gain |"; rule = rule .. "---:|"; end
	end
	p(head .. " Unit |");
	p(rule .. "---|");
	-- The summary table and chart compare Brisk (docs/scaling.md's settings,
	-- its recommended GC) with stock Prosody as shipped (default GC): what an
	-- operator gets.  The GC's own share is the stock-gen column and the
	-- --study=gc figures in docs/scaling.md.
	local base_name = "stock";
	for _, m in ipairs(metrics) do
		if not ran[m[1]] then goto next_metric; end
		local vals = {};
		for _, c in ipairs(cols) do vals[c] = get(results, c, m[1], m[4]); end
		if m.optional and not vals.brisk and not vals.stock then goto next_metric; end
		do
			local row = ("| %s | %s |"):format(m[1], m[2]);
			for _, c in ipairs(cols) do
				local v, why = get(results, c, m[1], m[4]);
				row = row .. " " .. (v and fmt(v) or why or "n/a") .. " |";
			end
			local g = gain(m, vals.stock, vals.brisk);
			row = row .. " " .. (g and ("%.2f×"):format(g) or "n/a") .. " |";
			if has_gen then
				local g2 = gain(m, vals["stock-gen"], vals.brisk);
				row = row .. " " .. (g2 and ("%.2f×"):format(g2) or "n/a") .. " |";
			end
			for _, v in ipairs(variants) do
				if v.breakdown then
					local gk = gain(m, vals.stock, (get(results, v.name, m[1], m[4])));
					row = row .. " " .. (gk and ("%.2f×"):format(gk) or "n/a") .. " |";
				end
			end
			p(row .. " " .. m[3] .. (m.lower and " (lower is better)" or "") .. " |");
			local s, b = vals[base_name], vals.brisk;
			local label, unit, cs, cb = m[1] .. " " .. m[2], m[3], s, b;
			if m.chart then
				if s and b and s > 0 and b > 0 then
					label, unit, cs, cb = m[1] .. " " .. m.chart[1], m.chart[3], m.chart[2](s), m.chart[2](b);
				else
					cs, cb = nil, nil;
				end
			end
			if (not m.lower or m.chart) and cs and cb then
				tsv_rows[#tsv_rows + 1] = ("e2e\t%s\t%.6g\t%.6g\t%s"):format(label, cs, cb, unit);
			end
		end
		::next_metric::
	end
	p();
	p("Brisk gain: stock/Brisk where lower is better, Brisk/stock otherwise (above 1 means Brisk is better). "
		.. "Brisk runs with the GC docs/scaling.md recommends (" .. gc_label(variant("brisk").gc) .. "), stock with "
		.. "Prosody's default: the summary table and chart use that pair, what an operator gets by following the "
		.. "docs, so their CPU gains include the GC setting's, which stock gets too (docs/scaling.md measures it "
		.. "alone)." .. (has_gen and " The TLS scenarios run stock and Brisk only." or ""));
	p();

	-- Memory, itemised.
	local items = {
		{ "rss", "**server RSS**" },
		{ "lua", "Lua heap (collectgarbage \"count\")" },
		{ "lua_live", "  live: what survives a full collection" },
		{ "socket", "    of which one LuaSocket object per connection (its 8 KiB receive buffer inside)" },
		{ "parser_lua", "    of which the stream parser's Lua side" },
		{ "session", "    of which everything else (session, roster, presence, caches)" },
		{ "garbage", "  garbage not yet collected" },
		{ "c_malloc", "C memory through malloc (libexpat, OpenSSL, ...)" },
		{ "c_luaalloc", "C memory through the Lua allocator, outside the GC's count" },
		{ "parser_c", "  of the two: the stream parser's C memory" },
		{ "overhead", "malloc headers and rounding of the Lua allocator's blocks" },
		{ "rest", "the rest: memory malloc freed but keeps, partly used pages" },
		{ "rss_trimmed", "server RSS if malloc gave back the memory it keeps free (malloc_trim(0))" },
		{ "after_rss", "server RSS still held per client after every client left (after a full collection)" },
		{ "after_lua_live", "  Lua heap, live" },
		{ "after_c_malloc", "  C memory through malloc" },
	};
	for _, sc in ipairs({ "idle", "large", "tls-idle" }) do
		if not ran[sc] then goto next_sc; end
		p(("#### Memory per connected client, %s (KiB)"):format(sc));
		p();
		do
			local cols = cols_of(sc);
			local hd, rl = "| Item |", "|---|";
			for _, c in ipairs(cols) do hd = hd .. " " .. variant(c).title .. " |"; rl = rl .. "---:|"; end
			p(hd .. " Brisk / stock |");
			p(rl .. "---:|");
			local method;
			for _, it in ipairs(items) do
				local row = "| " .. it[2] .. " |";
				local any = false;
				local vs = {};
				for _, c in ipairs(cols) do
					local v = get(results, c, sc, mem(it[1]));
					vs[c] = v;
					any = any or v ~= nil;
					row = row .. " " .. (v and fmt(v) or "n/a") .. " |";
				end
				local ratio = vs.stock and vs.brisk and vs.stock ~= 0 and vs.brisk / vs.stock;
				row = row .. " " .. (ratio and ("%.2f"):format(ratio) or "") .. " |";
				if any then p(row); end
			end
			for _, c in ipairs(cols) do
				local list = results[c] and results[c][sc];
				local m = list and list[1] and memory_items(list[1]);
				if m and m.parser_c_method then
					method = (method and method .. "; " or "") .. variant(c).title .. ": " .. m.parser_c_method;
				end
			end
			p();
			if method then p("Parser C memory measured by " .. method .. "."); p(); end
		end
		::next_sc::
	end
	if ran.idle then
		local s = get(results, "stock", "idle", function (r) return r.rss_per_client_kb; end);
		local b = get(results, "brisk", "idle", function (r) return r.rss_per_client_kb; end);
		if s and b then
			p(("Target: idle RSS per client at most 0.65× stock: **%.2f×** (%s KiB vs %s KiB) — %s.")
				:format(b / s, fmt(b), fmt(s), b / s <= 0.65 and "met" or "not met"));
			p();
		end
	end
	if ran.large then
		local s = get(results, "stock", "large", function (r) return r.rss_per_client_kb; end);
		local b = get(results, "brisk", "large", function (r) return r.rss_per_client_kb; end);
		if s and b then
			p(("Target: after large stanzas Brisk at most stock: **%.2f×** (%s KiB vs %s KiB) — %s.")
				:format(b / s, fmt(b), fmt(s), b <= s and "met" or "not met"));
			p();
		end
	end
	-- What TLS costs per connection: tls-idle minus idle, tls-pingpong minus pingpong.
	if ran.idle and ran["tls-idle"] then
		p("#### What TLS costs");
		p();
		local cols = cols_of("tls-idle");
		local hd, rl = "| Figure |", "|---|";
		for _, c in ipairs(cols) do hd = hd .. " " .. variant(c).title .. " |"; rl = rl .. "---:|"; end
		p(hd);
		p(rl);
		local function diff(label, sc1, sc2, fn, unit)
			local row = "| " .. label .. " (" .. unit .. ") |";
			for _, c in ipairs(cols) do
				local a, b = get(results, c, sc1, fn), get(results, c, sc2, fn);
				row = row .. " " .. ((a and b) and fmt(a - b) or "n/a") .. " |";
			end
			p(row);
		end
		diff("server RSS per idle connection, TLS minus plain", "tls-idle", "idle", function (r) return r.rss_per_client_kb; end, "KiB");
		diff("  Lua heap, live", "tls-idle", "idle", mem("lua_live"), "KiB");
		diff("  C memory through malloc (OpenSSL)", "tls-idle", "idle", mem("c_malloc"), "KiB");
		diff("  the rest", "tls-idle", "idle", mem("rest"), "KiB");
		diff("server RSS still held per client after every client left, TLS minus plain", "tls-idle", "idle", mem("after_rss"), "KiB");
		if ran.pingpong and ran["tls-pingpong"] then
			diff("ping-pong server CPU per 100k stanzas, TLS minus plain", "tls-pingpong", "pingpong",
				function (r) return r.server_cpu_per_100k; end, "CPU s");
		end
		p();
		p("The plain and TLS runs of a configuration are separate servers; in the quick run their sizes differ "
			.. "(ping-pong and TLS ping-pong have the same size, idle and TLS idle too).");
		p();
	end
	run_details(results, variants, scenarios);
end

-- ---------------------------------------------------------------------------
-- Studies (docs/scaling.md): not part of `make bench`.

-- --study=gc: GC settings at ping-pong and presence scale, Brisk's
-- configuration (and stock for Prosody's default and generational).
local function study_gc()
	local candidates = {
		{ "Prosody default: incremental 105/500", nil },
		{ "incremental 200/100 (Lua's default)", { mode = "incremental", threshold = 200, speed = 100 } },
		{ "incremental 120/400", { mode = "incremental", threshold = 120, speed = 400 } },
		{ "generational 20/50 (Prosody's generational defaults)", { mode = "generational" } },
		{ "generational 20/100 (Lua's)", { mode = "generational", minor_threshold = 20, major_threshold = 100 } },
		{ "generational 10/50", { mode = "generational", minor_threshold = 10, major_threshold = 50 } },
		{ "generational 20/25", { mode = "generational", minor_threshold = 20, major_threshold = 25 } },
		{ "generational 10/20", { mode = "generational", minor_threshold = 10, major_threshold = 20 } },
		{ "incremental 110/400", { mode = "incremental", threshold = 110, speed = 400 } },
		{ "incremental 130/400", { mode = "incremental", threshold = 130, speed = 400 } },
		{ "incremental 150/400", { mode = "incremental", threshold = 150, speed = 400 } },
		{ "incremental 120/200", { mode = "incremental", threshold = 120, speed = 200 } },
		{ "incremental 120/1000", { mode = "incremental", threshold = 120, speed = 1000 } },
	};
	-- BENCH_STUDY_GC_LIST="1,4,7": only these candidates.
	if os.getenv("BENCH_STUDY_GC_LIST") then
		local keep_list = {};
		for i in os.getenv("BENCH_STUDY_GC_LIST"):gmatch("%d+") do keep_list[#keep_list + 1] = candidates[tonumber(i)]; end
		candidates = keep_list;
	end
	local which = os.getenv("BENCH_STUDY_CONFIGS"); -- "brisk" (default), "stock", "both"
	local bases = {};
	if which ~= "stock" then bases[#bases + 1] = { "brisk", all_brisk }; end
	if which == "stock" or which == "both" then bases[#bases + 1] = { "stock", {} }; end
	local vs = {};
	for _, base in ipairs(bases) do
		for i, c in ipairs(candidates) do
			vs[#vs + 1] = { name = base[1] .. " gc" .. i, title = base[1] .. ": " .. c[1], mods = base[2], gc = c[2],
				settings = scale_settings(accounts + 1) };
		end
	end
	local scs = {};
	for _, sc in ipairs({ "pingpong", "presence" }) do
		if not only or only[sc] then scs[#scs + 1] = sc; end
	end
	local results = run_all(vs, scs, function (sc)
		local s = {};
		for k, v in pairs(sizes[sc]) do s[k] = v; end
		s.rounds, s.light = nil, nil;
		return s;
	end, function (sc, size) return { iterations = size.iterations }; end);
	p("### GC settings at scale (--study=gc)");
	p();
	p(("Prosody %s, load average at the end %s. One run per setting and scenario (ping-pong %d clients, %g s; presence %d devices, %g s).")
		:format(prosody_version(), load_average(), sizes.pingpong.clients, sizes.pingpong.duration,
			sizes.presence.clients, sizes.presence.duration));
	p();
	p("| Configuration | Scenario | server CPU per 100k stanzas (CPU s) | RSS per client after login (KiB) | RSS per client after the window (KiB) | throughput (stanzas/s) | p99 saturated (ms) |");
	p("|---|---|---:|---:|---:|---:|---:|");
	for _, sc in ipairs(scs) do
		for _, v in ipairs(vs) do
			local r = results[v.name][sc] and results[v.name][sc][1];
			if r then
				p(("| %s | %s | %s | %s | %s | %s | %s |"):format(v.title, sc, fmt(r.server_cpu_per_100k),
					fmt(r.rss_per_client_kb), fmt(rss_under_load(r)), fmt(r.rate), fmt(r.p99_ms)));
			else
				p(("| %s | %s | failed | | | | |"):format(v.title, sc));
			end
		end
	end
	p();
	run_details(results, vs, scs);
end

-- --study=settings: stock Prosody, each scale setting on its own against
-- Prosody's defaults; and what a low fd limit does.
local function study_settings()
	local n = accounts + 1;
	local vs = {
		{ name = "defaults", title = "Prosody's defaults", mods = {}, settings = {} },
		{ name = "blocklist", title = "blocklist_cache_size = " .. n, mods = {}, settings = { blocklist_cache_size = n } },
		{ name = "pep", title = "pep_service_cache_size = " .. n, mods = {}, settings = { pep_service_cache_size = n } },
		{ name = "both", title = "both", mods = {}, settings = scale_settings(n) },
	};
	local gc = os.getenv("BENCH_STUDY_GC");
	if gc then
		local g = assert(load("return " .. gc, "BENCH_STUDY_GC", "t", {}))();
		for _, v in ipairs(vs) do v.gc = g; end
	end
	local scs = {};
	for _, sc in ipairs({ "pingpong", "presence", "idle" }) do
		if not only or only[sc] then scs[#scs + 1] = sc; end
	end
	local results = run_all(vs, scs, function (sc)
		local s = {};
		for k, v in pairs(sizes[sc]) do s[k] = v; end
		s.rounds, s.light = nil, nil;
		if sc == "idle" then s.iterations = 1000; end
		return s;
	end, function (sc, size) return { iterations = size.iterations, probe = sc == "idle", count_lua = sc == "idle" }; end);
	p("### Scale settings, each on its own (--study=settings)");
	p();
	p(("Stock Prosody %s, %s, load average at the end %s. One run each.")
		:format(prosody_version(), gc_label(vs[1].gc), load_average()));
	p();
	p("| Setting | ping-pong CPU per 100k (CPU s) | presence CPU per 100k (CPU s) | idle RSS per client (KiB) | idle Lua heap live per client (KiB) |");
	p("|---|---:|---:|---:|---:|");
	for _, v in ipairs(vs) do
		local function g(sc, fn) return fmt((get(results, v.name, sc, fn))); end
		p(("| %s | %s | %s | %s | %s |"):format(v.title,
			g("pingpong", function (r) return r.server_cpu_per_100k; end),
			g("presence", function (r) return r.server_cpu_per_100k; end),
			g("idle", function (r) return r.rss_per_client_kb; end),
			g("idle", mem("lua_live"))));
	end
	p();
	-- A soft fd limit of 1024 (the usual default) with more clients than that.
	if not only or only.fd then
		local n_fd = quick and 300 or 1500;
		local v = { name = "fd-1024", title = "ulimit -n 1024", mods = {}, settings = scale_settings(n) };
		local r, err = run_one(v, "idle", { clients = n_fd, duration = 1, warmup = 1, iterations = 1000, connect_timeout = 10 },
			{ iterations = 1000, fd_limit = quick and 256 or 1024 });
		p(("With the server's soft fd limit at %d (`ulimit -n`) and %d clients connecting (10 s login timeout): %s"):format(
			quick and 256 or 1024, n_fd,
			r and ("%d logged in, %d failed (the server stops accepting when it runs out of descriptors: "
				.. "server_epoll pauses the listener for 10 s at a time, logging that only at debug level)")
				:format(r.logged_in, r.connections - r.logged_in)
			or ("the run failed: " .. tostring(err):gsub("\n", " "):sub(1, 400))));
		p();
	end
	run_details(results, vs, scs);
end

-- --study=tls: per-connection TLS memory, LuaSec's SSL_MODE_RELEASE_BUFFERS
-- measured by masking it (build/bench/tls_shim.so), TLS 1.2 vs 1.3, and
-- what stays after the clients leave.
local function study_tls()
	local n = accounts + 1;
	local which = os.getenv("BENCH_STUDY_CONFIGS") == "brisk" and all_brisk or {};
	local base = { mods = which, settings = scale_settings(n), gc = os.getenv("BENCH_STUDY_GC")
		and assert(load("return " .. os.getenv("BENCH_STUDY_GC"), "gc", "t", {}))() or nil };
	local function mk(name, title, extra)
		local v = { name = name, title = title };
		for k, val in pairs(base) do v[k] = val; end
		for k, val in pairs(extra or {}) do v[k] = val; end
		return v;
	end
	local shim_env = exists(tls_shim) and { LD_PRELOAD = tls_shim } or nil;
	local vs = {
		mk("plain", "no TLS", { sc = "idle" }),
		mk("tls13", "TLS 1.3 (LuaSec as installed)", { sc = "tls-idle", env = shim_env }),
		mk("tls13-norelease", "TLS 1.3, SSL_MODE_RELEASE_BUFFERS masked", { sc = "tls-idle",
			env = shim_env and { LD_PRELOAD = tls_shim, BENCH_TLS_NO_RELEASE = "1" } }),
		mk("tls12", "TLS 1.2 clients", { sc = "tls-idle", env = shim_env, tls_max = "1.2" }),
		-- Prosody sets OpenSSL's no_ticket by default; this turns it off.
		mk("tls13-tickets", "TLS 1.3, ssl = { options = { no_ticket = false } }", { sc = "tls-idle", env = shim_env,
			ssl = { options = { no_ticket = false } } }),
	};
	local results = {};
	for _, v in ipairs(vs) do results[v.name] = {}; end
	for _, v in ipairs(vs) do
		local size = {};
		for k, val in pairs(sizes["tls-idle"]) do size[k] = val; end
		size.tls_max = v.tls_max;
		local opts = { tls = v.sc == "tls-idle", probe = true, count_lua = true, iterations = 1000, after = true, env = v.env };
		local r, err = run_one(v, v.sc, size, opts);
		results[v.name][v.sc] = r and { r } or { failed = tostring(err) };
	end
	p("### TLS memory per connection (--study=tls)");
	p();
	p(("Prosody %s, %s configuration, %d idle clients each, load average at the end %s.")
		:format(prosody_version(), next(which) and "Brisk" or "stock", sizes["tls-idle"].clients, load_average()));
	p();
	p("| Variant | RSS per client (KiB) | Lua heap live | C through malloc | the rest | RSS held per client after all left | malloc C held after all left | shim |");
	p("|---|---:|---:|---:|---:|---:|---:|---|");
	for _, v in ipairs(vs) do
		local r = results[v.name][v.sc] and results[v.name][v.sc][1];
		local m = r and memory_items(r) or {};
		p(("| %s | %s | %s | %s | %s | %s | %s | %s |"):format(v.title, fmt(r and r.rss_per_client_kb), fmt(m.lua_live),
			fmt(m.c_malloc), fmt(m.rest), fmt(m.after_rss), fmt(m.after_c_malloc), r and r.shim or ""));
	end
	p();
	run_details(results, vs, { "idle", "tls-idle" });
end

-- --study=same-gc: stock and Brisk under the same GC, for each of Prosody's
-- default, the recommended setting and generational mode (issue 13: presence
-- churn at least stock's in both modes), and Brisk without mod_brisk_util
-- under the recommended GC (issue 15: what brisk.jid and brisk.heap alone
-- gain end to end). Ping-pong and presence, BENCH_E2E_ROUNDS rounds (1 by
-- default), medians.
local function study_same_gc()
	local settings = scale_settings(accounts + 1);
	local no_util = {};
	for m, on in pairs(all_brisk) do if m ~= "util" then no_util[m] = on; end end
	local gcs = {
		{ "default", "Prosody's default (incremental 105/500)", nil },
		{ "rec", "recommended (" .. gc_label(RECOMMENDED_GC) .. ")", RECOMMENDED_GC },
		{ "gen", "generational", { mode = "generational" } },
	};
	local vs = {};
	for _, g in ipairs(gcs) do
		vs[#vs + 1] = { name = "stock " .. g[1], title = "stock", mods = {}, gc = g[3], settings = settings };
		vs[#vs + 1] = { name = "brisk " .. g[1], title = "Brisk", mods = all_brisk, gc = g[3], settings = settings };
		if g[1] == "rec" and all_brisk.util then
			vs[#vs + 1] = { name = "brisk-noutil rec", title = "Brisk without brisk_util", mods = no_util,
				gc = g[3], settings = settings };
		end
	end
	local rounds = tonumber(os.getenv("BENCH_E2E_ROUNDS")) or 1;
	local scs = {};
	for _, sc in ipairs({ "pingpong", "presence" }) do
		if not only or only[sc] then scs[#scs + 1] = sc; end
	end
	local results = run_all(vs, scs, function (sc)
		local s = {};
		for k, v in pairs(sizes[sc]) do s[k] = v; end
		s.rounds, s.light = rounds, nil;
		return s;
	end, function (_, size) return { iterations = size.iterations }; end);
	local function cpu(name, sc)
		local list = results[name] and results[name][sc];
		if not list or #list == 0 then return nil; end
		local vals = {};
		for _, r in ipairs(list) do vals[#vals + 1] = r.server_cpu_per_100k; end
		return median(vals);
	end
	p("### Stock and Brisk under the same GC (--study=same-gc)");
	p();
	p(("Prosody %s, load average at the end %s; ping-pong %d clients, %g s; presence %d devices, %g s; %d round(s), medians; configurations alternate.")
		:format(prosody_version(), load_average(), sizes.pingpong.clients, sizes.pingpong.duration,
			sizes.presence.clients, sizes.presence.duration, rounds));
	p();
	p("| GC | Scenario | stock | Brisk | Brisk / stock (CPU per stanza) | Brisk gain | Brisk without brisk_util | brisk_util's gain |");
	p("|---|---|---:|---:|---:|---:|---:|---:|");
	for _, g in ipairs(gcs) do
		for _, sc in ipairs(scs) do
			local a, b, c = cpu("stock " .. g[1], sc), cpu("brisk " .. g[1], sc), cpu("brisk-noutil " .. g[1], sc);
			p(("| %s | %s | %s | %s | %s | %s | %s | %s |"):format(g[2], sc, fmt(a), fmt(b),
				(a and b) and ("%.2f"):format(b / a) or "n/a", (a and b) and ("%.2f×"):format(a / b) or "n/a",
				c and fmt(c) or "", (b and c) and ("%.2f×"):format(c / b) or ""));
		end
	end
	p();
	p("Figures: server CPU s per 100k stanzas delivered (lower is better); gains above 1 mean Brisk (or brisk_util) is better.");
	p();
	run_details(results, vs, scs);
end

-- ---------------------------------------------------------------------------

if study == "gc" then
	study_gc();
elseif study == "settings" then
	study_settings();
elseif study == "tls" then
	study_tls();
elseif study == "same-gc" then
	study_same_gc();
else
	local scenarios = {};
	for _, sc in ipairs(SCENARIOS) do
		if not only or only[sc] then scenarios[#scenarios + 1] = sc; end
	end
	variants.filter = VARIANTS_OF;
	local results = run_all(variants, scenarios, function (sc) return sizes[sc]; end,
		function (sc, size) return options_for(sc, size); end);
	report_comparison(results, scenarios);
end

io.write(table.concat(out, "\n"));
local tsv = os.getenv("BENCH_TSV");
if tsv and #tsv_rows > 0 then
	local f = assert(io.open(tsv, "a"));
	f:write(table.concat(tsv_rows, "\n"), "\n");
	f:close();
end
