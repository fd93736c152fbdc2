-- Benchmark probe, loaded only by bench/e2e.lua's servers: describes the
-- server's memory when the load generator asks (build/bench/loadgen --probe).
--
-- The load generator writes a moment's name into <bench_probe_dir>/probe.request
-- and sends SIGUSR2 (Prosody turns it into the "signal/SIGUSR2" event on
-- 0.12 and 13 alike); this module answers with <bench_probe_dir>/probe-<name>.txt,
-- key=value lines:
--
--   rss_kb            VmRSS of the process
--   lua_bytes         collectgarbage("count"), before any collection
--   lua_live_bytes    the same after a full collection (garbage gone); the
--                     *_after_gc keys are the other figures at that point
--   malloc_inuse      bytes of malloc chunks in use (glibc mallinfo2), Lua's included
--   malloc_free       bytes malloc holds free (fragmentation, not returned to the OS)
--   lua_chunks        bytes of the malloc chunks of blocks allocated through the
--                     Lua allocator (headers and rounding included), relative to
--                     when counting began: malloc_inuse - lua_chunks is C memory
--                     allocated with malloc directly (libexpat, OpenSSL)
--   lua_requested     the bytes those blocks were asked for (same origin):
--                     lua_requested - lua_bytes is C memory that a C library
--                     allocates through the Lua allocator (the GC does not count it)
--   lua_allocated     bytes allocated through the Lua allocator since counting
--                     began (new or growing blocks: garbage per stanza)
--   sessions          c2s sessions
--   xml_streams, xml_hibernating, xml_bytes   brisk.xml.memory(), when it exists
--   parser_lua_bytes, parser_c_bytes   per stream parser (C: through malloc or
--                     through the Lua allocator outside the GC's count), measured by creating
--                     bench_probe_parsers parsers with util.xmppstream.new (whichever
--                     implementation the server runs) and feeding each what a
--                     c2s session's parser sees after SASL
--   socket_lua_bytes  one LuaSocket TCP object (its 8 KiB receive buffer is inside)
--   rss_after_trim_kb VmRSS after malloc_trim(0), at the very end of "ready"
--                     (so every later figure of the run follows a trim)
--
-- Moments named "mark-*" only read the counters (no collection, no
-- experiments), so that they can bracket a measured window.
--
-- With bench_probe_profile = true, "mark-start" also starts a sampling
-- profiler (an instruction-count hook on the main thread and every session's
-- coroutine) and "mark-end" stops it and writes <dir>/profile.txt: per Lua
-- function, the samples that landed in it and the bytes allocated since the
-- previous sample (an approximate attribution: C functions' allocations go
-- to the Lua function that called them), self and with two callers.
--
-- The malloc figures need build/bench/bench_probe.so (bench_probe_so); without
-- it the file has only the Lua and RSS figures.
module:set_global();

local lib;
do
	local ok_prosody = pcall(require, "prosody.util.xmppstream");
	lib = function (name) return require((ok_prosody and "prosody." or "") .. name); end
end

local dir = module:get_option_string("bench_probe_dir");
local so = module:get_option_string("bench_probe_so");
local nparsers = module:get_option_number("bench_probe_parsers", 200);

local probe;
if so then
	local open = package.loadlib(so, "luaopen_bench_probe");
	if open then probe = open(); else module:log("warn", "bench probe: cannot load %s", so); end
end
-- Count Lua's own malloc chunks from now on (adds one malloc_usable_size()
-- per allocation; only servers that measure memory or garbage load this).
if probe and module:get_option_boolean("bench_probe_count_lua", true) then probe.count_lua(); end

local function rss_kb()
	local f = io.open("/proc/self/status", "r");
	if not f then return nil; end
	local s = f:read("a");
	f:close();
	return tonumber(s:match("VmRSS:%s*(%d+)"));
end

local function lua_bytes() return math.floor(collectgarbage("count") * 1024); end

local function full_gc()
	collectgarbage("collect");
	collectgarbage("collect");
end

-- C bytes outside the GC's count right now: allocated with malloc directly
-- plus through the Lua allocator by C code (nil without the C probe).
local function c_outside()
	if not probe then return nil; end
	local mi, l, count = probe.mallinfo(), probe.lua(), lua_bytes();
	if l then return (mi.inuse - l.chunks) + (l.requested - count); end
	return mi.inuse - count;  -- malloc's headers of Lua's own blocks included
end

-- What a stream parser costs: n parsers made the way mod_c2s makes them,
-- each fed what a session's parser sees after SASL (stream header, bind,
-- session, initial presence). Returns Lua and C bytes per parser.
local function parser_cost(n)
	local xmppstream = lib "util.xmppstream";
	local callbacks = {
		stream_ns = "http://etherx.jabber.org/streams", default_ns = "jabber:client",
		streamopened = function (session) session.notopen = nil; end,
		streamclosed = function () end,
		handlestanza = function () end,
		error = function () end,
	};
	local input = {
		"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
		"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>lg1</resource></bind></iq>",
		"<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
		"<presence/>",
	};
	local keep = {};
	full_gc();
	local l0, c0 = lua_bytes(), c_outside();
	for i = 1, n do
		local session = { notopen = true };
		local stream = xmppstream.new(session, callbacks, 1024 * 1024);
		for _, chunk in ipairs(input) do stream:feed(chunk); end
		keep[i] = { session, stream };
	end
	full_gc();
	local l1, c1 = lua_bytes(), c_outside();
	keep = nil; -- luacheck: ignore
	full_gc();
	return (l1 - l0) / n, c0 and (c1 - c0) / n or nil;
end

-- One LuaSocket TCP object, as every plain c2s connection holds one.
local function socket_cost(n)
	local socket = require "socket";
	local keep = {};
	full_gc();
	local l0 = lua_bytes();
	for i = 1, n do keep[i] = socket.tcp(); end
	full_gc();
	local l1 = lua_bytes();
	for i = 1, n do keep[i]:close(); end
	keep = nil; -- luacheck: ignore
	full_gc();
	return (l1 - l0) / n;
end

-- The sampling profiler (bench_probe_profile).
-- bench_probe_profile = "calls": count every Lua function call instead of
-- sampling (slow, but exact: calls per stanza).
local profiling = module:get_option("bench_probe_profile", false);
local PERIOD = 1000;  -- instructions between samples
local MASK, COUNT = "", PERIOD;
if profiling == "calls" then MASK, COUNT = "c", 0; end
local prof;
local getinfo, sethook = debug.getinfo, debug.sethook;

local function where(level)
	local info = getinfo(level, "Sn");
	if not info then return nil; end
	return ("%s:%d %s"):format(info.short_src, info.linedefined, info.name or "?");
end

local function hook()
	local p = prof;
	if not p then return; end
	local a0 = probe and probe.allocated() or 0;
	local self_key = where(3) or "?";
	if MASK == "c" then  -- a call: count it where it lands
		local e = p.self[self_key];
		if not e then e = { 0, 0 }; p.self[self_key] = e; end
		e[1] = e[1] + 1;
		p.samples = p.samples + 1;
		local stack = self_key .. " < " .. (where(4) or "");
		e = p.stack[stack];
		if not e then e = { 0, 0 }; p.stack[stack] = e; end
		e[1] = e[1] + 1;
		return;
	end
	local stack = self_key .. " < " .. (where(4) or "") .. " < " .. (where(5) or "");
	local da = a0 - p.last;
	local e = p.self[self_key];
	if not e then e = { 0, 0 }; p.self[self_key] = e; end
	e[1], e[2] = e[1] + 1, e[2] + da;
	e = p.stack[stack];
	if not e then e = { 0, 0 }; p.stack[stack] = e; end
	e[1], e[2] = e[1] + 1, e[2] + da;
	p.samples, p.bytes = p.samples + 1, p.bytes + da;
	p.last = probe and probe.allocated() or 0;  -- the hook's own allocations excluded
end

local function hook_thread(co)
	if type(co) == "thread" and coroutine.status(co) ~= "dead" then sethook(co, hook, MASK, COUNT); end
end

local orig_create = coroutine.create;
local function profile_start()
	prof = { self = {}, stack = {}, samples = 0, bytes = 0, last = probe and probe.allocated() or 0 };
	sethook(hook, MASK, COUNT);
	-- Stanzas run in each session's util.async runner: hook those threads,
	-- and any created from now on.
	for _, s in pairs(prosody.full_sessions) do
		if type(s.thread) == "table" then hook_thread(s.thread.thread); end
	end
	for _, host in pairs(prosody.hosts) do
		for _, user in pairs(host.sessions or {}) do
			for _, s in pairs(user.sessions or {}) do
				if type(s.thread) == "table" then hook_thread(s.thread.thread); end
			end
		end
	end
	coroutine.create = function (f)  -- luacheck: ignore 122
		local co = orig_create(f);
		if prof then sethook(co, hook, MASK, COUNT); end
		return co;
	end;
end

local function profile_stop()
	local p = prof;
	prof = nil;
	sethook();
	coroutine.create = orig_create;  -- luacheck: ignore 122
	if not p then return; end
	local lines = { ("samples=%d bytes=%d period=%d"):format(p.samples, p.bytes, PERIOD) };
	for _, part in ipairs({ { "self", p.self }, { "stack", p.stack } }) do
		local keys = {};
		for k in pairs(part[2]) do keys[#keys + 1] = k; end
		for _, order in ipairs({ 1, 2 }) do
			table.sort(keys, function (a, b) return part[2][a][order] > part[2][b][order]; end);
			lines[#lines + 1] = ("-- %s, by %s"):format(part[1], order == 1 and "samples" or "bytes");
			for i = 1, math.min(40, #keys) do
				local e = part[2][keys[i]];
				lines[#lines + 1] = ("%6.2f%% samples %6.2f%% bytes  %s"):format(100 * e[1] / math.max(1, p.samples),
					100 * e[2] / math.max(1, p.bytes), keys[i]);
			end
		end
	end
	local f = io.open(dir .. "/profile.txt", "w");
	if f then f:write(table.concat(lines, "\n"), "\n"); f:close(); end
end

local function count_sessions()
	local n = 0;
	for _, s in pairs(prosody.full_sessions) do
		if s.type == "c2s" then n = n + 1; end
	end
	return n;
end

local function answer()
	local f = io.open(dir .. "/probe.request", "r");
	if not f then return; end
	local label = (f:read("l") or ""):match("^[%w%-_]+$");
	f:close();
	if not label then return; end
	local t, order = {}, {};
	local function put(k, v)
		if v ~= nil then
			if t[k] == nil then order[#order + 1] = k; end
			t[k] = type(v) == "number" and math.floor(v + 0.5) or v;
		end
	end
	put("rss_kb", rss_kb());
	put("lua_bytes", lua_bytes());
	if probe then
		local mi, l = probe.mallinfo(), probe.lua();
		put("malloc_inuse", mi.inuse);
		put("malloc_free", mi.free);
		if l then
			put("lua_chunks", l.chunks);
			put("lua_requested", l.requested);
			put("lua_allocated", l.allocated);
			put("lua_allocations", l.allocations);
			for tag = 0, 15 do put("lua_allocated_tag" .. tag, l.by_tag[tag]); end
			for k = 0, 23 do put("lua_allocated_raw" .. k, l.raw_by_size[k]); end
		end
	end
	if profiling and label == "mark-start" then profile_start(); end
	if profiling and label == "mark-end" then profile_stop(); end
	-- bench_probe_trace = { min, max }: C stacks of the window's new
	-- non-object blocks of that size, into <dir>/traces.txt.
	local trace = module:get_option("bench_probe_trace");
	if probe and trace and label == "mark-start" then probe.trace(trace[1], trace[2]); end
	if probe and trace and label == "mark-end" then
		local f = io.open(dir .. "/traces.txt", "w");
		if f then f:write(table.concat(probe.traces(), "\n"), "\n"); f:close(); end
		probe.trace(1, 0);
	end
	if label:match("^mark%-") then goto write; end
	put("sessions", count_sessions());
	do
		local bx = package.loaded["brisk.xml"];
		if type(bx) == "table" and type(bx.memory) == "function" then
			local ok, m = pcall(bx.memory);
			if ok and type(m) == "table" then
				put("xml_streams", m.streams);
				put("xml_hibernating", m.hibernating);
				put("xml_bytes", m.bytes);
			end
		end
	end
	full_gc();
	put("lua_live_bytes", lua_bytes());
	put("rss_after_gc_kb", rss_kb());
	if probe then
		local mi, l = probe.mallinfo(), probe.lua();
		put("malloc_inuse_after_gc", mi.inuse);
		if l then put("lua_chunks_after_gc", l.chunks); put("lua_requested_after_gc", l.requested); end
	end
	if label == "ready" then
		local ok, pl, pc = pcall(parser_cost, nparsers);
		if ok then
			put("parser_lua_bytes", pl);
			put("parser_c_bytes", pc);
		else
			module:log("warn", "bench probe: parser experiment failed: %s", pl);
		end
		local ok2, sl = pcall(socket_cost, 32);
		if ok2 then put("socket_lua_bytes", sl); end
		-- Last: what RSS would be if malloc handed back the memory it keeps
		-- free (glibc's malloc_trim also releases free pages inside the heap).
		if probe then
			probe.trim();
			put("rss_after_trim_kb", rss_kb());
		end
	end
	::write::
	local lines = {};
	for _, k in ipairs(order) do lines[#lines + 1] = k .. "=" .. tostring(t[k]); end
	local tmp = dir .. "/probe-" .. label .. ".tmp";
	local out = assert(io.open(tmp, "w"));
	out:write(table.concat(lines, "\n"), "\n");
	out:close();
	os.rename(tmp, dir .. "/probe-" .. label .. ".txt");
end

if dir then
	module:hook_global("signal/SIGUSR2", function ()
		local ok, err = pcall(answer);
		if not ok then module:log("error", "bench probe failed: %s", err); end
	end);
end
