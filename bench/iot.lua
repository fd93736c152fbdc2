-- bench/iot.lua — mod_brisk_iot's engine and end-to-end latency.
--
-- Stock Prosody has no device engine, so the "stock" column is what a
-- module written the usual way would do: the same transitions (online,
-- offline, state with a hash of show/status/priority/payload) and rule
-- matching (globs as Lua patterns) kept in a Lua table per device. Brisk is
-- brisk.presence. Both see the same generated presence stream.
--
--   lua5.4 bench/iot.lua [--quick]    (after eval "$(make -s env)")
-- Prints a Markdown section; with BENCH_TSV set, appends rows to that file.

local presence = require "brisk.presence";
local quick = arg[1] == "--quick";
local clock = os.clock;

local N_DEVICES = quick and 20000 or 100000;
local N_EVENTS = quick and 400000 or 2000000;

local rules = {
	{ name = "freezer-offline", match = "freezer-*@devices.example.com", on = "offline", after = 60 },
	{ name = "low-battery", match = "*@devices.example.com", on = "state" },
	{ name = "any-online", on = "online" },
	{ name = "flapping", on = "flapping", transitions = 5, within = 60 },
	{ name = "silent", on = "silent", after = 300 },
};

local function jid(i)
	return ((i % 3 == 0) and "freezer-%06d@devices.example.com" or "sensor-%06d@devices.example.com"):format(i);
end

-- The presence stream: device i, available?, status.
math.randomseed(1);
local stream_dev, stream_avail, stream_status = {}, {}, {};
local STREAM = 65536;
for k = 1, STREAM do
	stream_dev[k] = math.random(1, N_DEVICES);
	stream_avail[k] = math.random() < 0.8;
	stream_status[k] = "battery=" .. math.random(1, 100);
end
local jids = {};
for i = 1, N_DEVICES do jids[i] = jid(i); end

-- Stock-style Lua engine ------------------------------------------------------
local function glob_to_pattern(g)
	if not g:find("@") then g = "*@" .. g; end
	return "^" .. g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$";
end

local function lua_engine()
	local devices, pats = {}, {};
	for i, r in ipairs(rules) do pats[i] = r.match and glob_to_pattern(r.match); end
	local e = { n = 0, out = 0 };
	function e.update(j, now, avail, show, status, prio)
		local d = devices[j];
		if not d then
			local m = {};
			for i, r in ipairs(rules) do if not pats[i] or j:match(pats[i]) then m[#m + 1] = r; end end
			d = { online = false, since = now, last = now, seen = now, rules = m, ring = {} };
			devices[j] = d;
			e.n = e.n + 1;
		end
		d.seen = now;
		local kind;
		if avail then
			local h = (show or "") .. "\0" .. (status or "") .. "\0" .. (prio or 0);
			if not d.online then kind = "online"; d.online = true; d.since = now; d.hash = h;
			elseif h ~= d.hash then kind = "state"; d.hash = h; end
		elseif d.online then
			kind = "offline"; d.online = false; d.since = now; d.hash = nil;
		end
		if kind then
			d.last = now;
			if kind ~= "state" then
				local ring = d.ring;
				ring[#ring + 1] = now;
				if #ring > 5 then table.remove(ring, 1); end
			end
			local fired = {};
			for _, r in ipairs(d.rules) do if r.on == kind and not r.after then fired[#fired + 1] = r.name; end end
			e.out = e.out + 1;
			return { kind = kind, jid = j, rules = fired, time = now };
		end
	end
	return e;
end

local function run_lua()
	collectgarbage(); collectgarbage();
	local before = collectgarbage("count");
	local e = lua_engine();
	for i = 1, N_DEVICES do e.update(jids[i], 0, true, nil, "battery=50", 0); end
	collectgarbage(); collectgarbage();
	local bytes = (collectgarbage("count") - before) * 1024 / N_DEVICES;
	local t0 = clock();
	local now = 1;
	for k = 1, N_EVENTS do
		local s = (k - 1) % STREAM + 1;
		now = now + 0.0001;
		e.update(jids[stream_dev[s]], now, stream_avail[s], nil, stream_status[s], 0);
	end
	return N_EVENTS / (clock() - t0), bytes, e.out;
end

local function run_brisk()
	collectgarbage(); collectgarbage();
	local e = presence.new{ now = 0, rules = rules };
	for i = 1, N_DEVICES do e:update(jids[i], 0, true, nil, "battery=50", 0); end
	while e:pop() do end
	local bytes = e:memory() / N_DEVICES;
	local t0 = clock();
	local now = 1;
	local out = 0;
	for k = 1, N_EVENTS do
		local s = (k - 1) % STREAM + 1;
		now = now + 0.0001;
		if e:update(jids[stream_dev[s]], now, stream_avail[s], nil, stream_status[s], 0) > 0 then
			-- Take the events out as the module does (a table each).
			while true do
				local ev = e:pop();
				if not ev then break; end
				out = out + 1;
			end
		end
	end
	return N_EVENTS / (clock() - t0), bytes, out;
end

local lua_rate, lua_bytes = run_lua();
local c_rate, c_bytes = run_brisk();

local rows = {
	{ "engine: presence updates through match + transition", lua_rate, c_rate, "updates/s", true },
	{ "engine: memory per tracked device", lua_bytes, c_bytes, "bytes (lower is better)", false },
};

-- Presence-to-webhook latency on a live server (Brisk only: stock has no
-- webhooks). Skipped when the server cannot start here.
local latency;
do
	local ok, err = pcall(function ()
		local prosody = require "spec.helpers.prosody";
		local receiver = require "spec.helpers.http_receiver";
		local st = require "util.stanza";
		local socket = require "socket";
		local secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
		local hook = receiver.start{ secret = secret };
		local srv = prosody.start{
			host_modules = { "brisk_iot" }; accounts = { dev = "pw" }; log_level = "info";
			host_config = { iot_rules = { { name = "all-state", on = "state", webhook = hook.url, secret = secret } } };
		};
		local c = srv:connect("dev", "pw", "b");
		c:send(st.presence());
		local samples = {};
		local n = quick and 30 or 200;
		for i = 1, n do
			local t0 = socket.gettime();
			c:send(st.presence():text_tag("status", "s" .. i));
			local reqs = hook:wait(i, 5);
			local r = reqs[i];
			if r then samples[#samples + 1] = (r.time - t0) * 1000; end
		end
		srv:stop();
		hook:stop();
		table.sort(samples);
		latency = { p50 = samples[math.ceil(#samples * 0.5)], p99 = samples[math.ceil(#samples * 0.99)], n = #samples };
	end);
	if not ok then io.stderr:write("iot bench: live latency skipped: ", tostring(err), "\n"); end
end

print("### IoT presence engine (mod_brisk_iot)");
print("");
print(("%d devices, %d presence updates, 5 rules (globs, debounce, flapping, silence). Stock: the same logic in plain Lua tables."):format(N_DEVICES, N_EVENTS));
print("");
print("| measure | stock | Brisk | ratio | unit |");
print("|---|---:|---:|---:|---|");
for _, r in ipairs(rows) do
	local ratio = r[5] and r[3] / r[2] or r[2] / r[3];
	print(("| %s | %.0f | %.0f | %.2fx | %s |"):format(r[1], r[2], r[3], ratio, r[4]));
end
if latency then
	print(("| presence-to-webhook latency p50 (live, %d samples) | — | %.1f | — | ms |"):format(latency.n, latency.p50));
	print(("| presence-to-webhook latency p99 (live, %d samples) | — | %.1f | — | ms |"):format(latency.n, latency.p99));
end
print("");

local tsv = os.getenv("BENCH_TSV");
if tsv then
	local f = assert(io.open(tsv, "a"));
	f:write(("iot\tengine updates\t%.0f\t%.0f\tupdates/s\n"):format(lua_rate, c_rate));
	-- Higher is better in the TSV: devices per MB of engine memory.
	f:write(("iot\tdevices per MB\t%.0f\t%.0f\tdevices/MB\n"):format(1048576 / lua_bytes, 1048576 / c_bytes));
	f:close();
end
