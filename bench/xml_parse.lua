-- bench/xml_parse.lua — stock util.xmppstream vs brisk.xml stream parsing.
--
-- Builds one client stream from the parser corpus (spec/fixtures/xml, the
-- c2s streams' stanzas: messages, presence, iq roster/disco/vcard, MUC,
-- pubsub, Jingle), repeated to a few hundred KB, and feeds it in 4 KB
-- chunks (as network reads arrive) to stock util.xmppstream.new and to
-- Brisk's (as brisk.patch installs it), in the same run, with the same
-- callbacks (which only count stanzas). The ceiling is libexpat alone with
-- namespace processing and empty handlers on the same bytes and chunks
-- (bench/expat_noop.c, a benchmark-only module built into build/bench/).
-- First both parsers' stanzas are checked to serialize to the same bytes
-- (stock serializer, attributes in pairs() order).
--
-- Then idle streams: the C memory a Brisk stream holds awake and hibernating
-- (brisk.xml.memory), and what waking a hibernated stream costs next to
-- parsing one small stanza (a 100-byte message) on an awake stream.
--
-- Usage: eval "$(make -s env)"; lua5.4 bench/xml_parse.lua [--quick]
-- With env BENCH_TSV=file, rows "area\tlabel\tstock\tbrisk\tunit" are
-- appended (higher is better for every unit).
require "bench.lib.prelude"
local xmppstream = require "util.xmppstream"
local bx = require "brisk.xml"
local brisk_new = require "brisk.patch.xmppstream".new(bx)
-- libexpat with empty handlers (benchmark-only, `make bench-sos`)
local expat_noop = assert(package.loadlib(((arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or ".")
	.. "/build/bench/brisk_bench_expat_noop.so", "luaopen_brisk_bench_expat_noop"))()

local quick = arg and arg[1] == "--quick"
local RUN_SECONDS = quick and 0.25 or 1.0 -- per measurement
local RUNS = quick and 3 or 5 -- median of
local CHUNK = 4096
local clock = os.clock

local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."

local HEADER = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
	.. "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>"

-- The stanzas of the c2s corpus files, as text (each file's lines between
-- its stream header and </stream:stream>).
local function corpus_body()
	local dir = root .. "/spec/fixtures/xml/"
	local parts = {}
	local p = io.popen("ls " .. dir .. " 2>/dev/null")
	for name in p:lines() do
		if name:match("^c2s_.*%.xml$") then
			local f = assert(io.open(dir .. name, "rb"))
			local data = f:read("a")
			f:close()
			local body = data:match("^.-<stream:stream[^>]*>(.*)</stream:stream>%s*$")
			parts[#parts + 1] = assert(body, name)
		end
	end
	p:close()
	assert(#parts > 0, "no corpus in " .. dir)
	return table.concat(parts)
end

local function build_stream(target)
	local body = corpus_body()
	local reps = math.max(1, math.floor(target / #body))
	return HEADER .. body:rep(reps) .. "</stream:stream>"
end

local function chunks_of(data)
	local list = {}
	for i = 1, #data, CHUNK do list[#list + 1] = data:sub(i, i + CHUNK - 1) end
	return list
end

local function parse_with(new, chunks, out)
	local n = 0
	local session = { notopen = true }
	local stream = new(session, {
		default_ns = "jabber:client",
		streamopened = function (s) s.notopen = nil end,
		handlestanza = out and function (_, stanza) n = n + 1; out[n] = tostring(stanza) end
			or function () n = n + 1 end,
		error = function (_, e) error("unexpected stream error: " .. tostring(e)) end,
	}, 64 * 1024 * 1024)
	for i = 1, #chunks do
		local ok, err = stream:feed(chunks[i])
		if not ok then error("feed failed: " .. tostring(err)) end
	end
	return n
end

local function noop_parse(chunks)
	local ok, err = expat_noop(chunks)
	if not ok then error("expat: " .. tostring(err)) end
	return 0
end

-- Median seconds per call of f over RUNS runs of about RUN_SECONDS each.
local function measure(f)
	f() -- warm up
	local times = {}
	for r = 1, RUNS do
		local calls, t0 = 0, clock()
		local t
		repeat
			f()
			calls = calls + 1
			t = clock() - t0
		until t >= RUN_SECONDS
		times[r] = t / calls
		collectgarbage()
	end
	table.sort(times)
	return times[(RUNS + 1) // 2]
end

local data = build_stream(quick and 200 * 1024 or 600 * 1024)
local chunks = chunks_of(data)
local mb = #data / (1024 * 1024)

-- Same stanzas from both, byte for byte when serialized (the differential
-- specs check far more).
local out_stock, out_brisk = {}, {}
local n_stock = parse_with(xmppstream.new, chunks, out_stock)
local n_brisk = parse_with(brisk_new, chunks, out_brisk)
assert(n_stock == n_brisk and n_stock > 0, ("stanza counts differ: %d vs %d"):format(n_stock, n_brisk))
for i = 1, n_stock do
	assert(out_stock[i] == out_brisk[i], ("stanza %d serializes differently:\n%s\n%s"):format(i, out_stock[i], out_brisk[i]))
end
out_stock, out_brisk = nil, nil

local t_stock = measure(function () return parse_with(xmppstream.new, chunks) end)
local t_brisk = measure(function () return parse_with(brisk_new, chunks) end)
local t_noop = measure(function () return noop_parse(chunks) end)

local function f(x) return string.format(x >= 100 and "%.0f" or "%.1f", x) end

local rows = {
	{ "stanzas/s", n_stock / t_stock, n_brisk / t_brisk, n_stock / t_noop },
	{ "MB/s", mb / t_stock, mb / t_brisk, mb / t_noop },
}
print("### XML stream parsing (util.xmppstream vs brisk.xml)")
print("")
print(("%d stanzas, %.2f MB, fed in %d-byte chunks; median of %d runs."):format(n_stock, mb, CHUNK, RUNS))
print("")
print("| measure | stock | Brisk | Brisk / stock | libexpat no-op | no-op / Brisk |")
print("|---|---:|---:|---:|---:|---:|")
for _, r in ipairs(rows) do
	print(("| %s | %s | %s | %.1fx | %s | %.2fx |"):format(r[1], f(r[2]), f(r[3]), r[3] / r[2], f(r[4]), r[4] / r[3]))
end
print("")
print(("Targets: Brisk / stock >= 8x (%s), no-op / Brisk <= 2x (%s)."):format(
	t_stock / t_brisk >= 8 and "met" or "not met", t_brisk / t_noop <= 2 and "met" or "not met"))

-- Idle streams ------------------------------------------------------

-- K c2s streams past their header, as a server holds idle clients.
local SMALL = "<message to='bob@example.com/phone' id='x7Rq2' type='chat'><body>Are you there now?</body></message>"
assert(#SMALL == 100)
local K = quick and 500 or 2000
local function idle_streams(new)
	local list = {}
	for i = 1, K do
		local s = new({ notopen = true }, {
			default_ns = "jabber:client",
			streamopened = function (sess) sess.notopen = nil end,
			handlestanza = function () end,
			error = function (_, e) error("unexpected stream error: " .. tostring(e)) end,
		})
		assert(s:feed(HEADER))
		list[i] = s
	end
	return list
end

-- The seconds per stream that f(stream) takes over all K streams, the best
-- of 2 * RUNS passes (these are differences of a few microseconds, and the
-- minimum is the least disturbed by other load); prepare() runs untimed
-- before each pass.
local function per_stream(list, f, prepare)
	local best = math.huge
	for _ = 1, 2 * RUNS do
		if prepare then prepare() end
		collectgarbage()
		local t0 = clock()
		for i = 1, #list do f(list[i]) end
		best = math.min(best, (clock() - t0) / #list)
	end
	return best
end

local list = idle_streams(brisk_new)
collectgarbage()
local m_awake = bx.memory()
local feed_space = function (s) assert(s:feed(" ")) end
local feed_small = function (s) assert(s:feed(SMALL)) end
local hibernate_all = function () bx.hibernate(0) end
-- an awake stream fed one byte (white space between stanzas): the baseline
local t_space = per_stream(list, feed_space)
-- a hibernated stream fed the same byte: that plus waking
local t_wake_space = per_stream(list, feed_space, hibernate_all)
hibernate_all()
local m_asleep = bx.memory()
assert(m_asleep.hibernating == K)
-- one small stanza, awake and hibernated (woken by it)
local t_small = per_stream(list, feed_small)
local t_wake_small = per_stream(list, feed_small, hibernate_all)
-- hibernating: the sweep itself, per stream it frees
local t_hibernate = math.huge
for _ = 1, 2 * RUNS do
	for i = 1, #list do list[i]:feed(" ") end
	collectgarbage()
	local t0 = clock()
	local n = bx.hibernate(0)
	t_hibernate = math.min(t_hibernate, (clock() - t0) / n)
end
-- stock's cost for the same small stanza, for scale
local stock_list = idle_streams(xmppstream.new)
local t_small_stock = per_stream(stock_list, feed_small)
stock_list, list = nil, nil
collectgarbage()

local t_wake = t_wake_space - t_space
local function us(x) return string.format("%.2f", x * 1e6) end
print("")
print("### Idle streams: memory and hibernation")
print("")
print(("%d c2s streams past their stream header, each pass over all of them (cold caches, as for"
	.. " clients idle a while); per stream, best of %d passes."):format(K, 2 * RUNS))
print("")
print("| | per stream |")
print("|---|---:|")
print(("| C memory, awake (expat parser, buffers) | %d B |"):format(m_awake.bytes // K))
print(("| C memory, hibernating (the replay copy of the stream header) | %d B |"):format(m_asleep.bytes // K))
print(("| waking: a hibernated stream fed 1 byte, minus an awake one | %s µs |"):format(us(t_wake)))
print(("| hibernating: brisk.xml.hibernate(0), per stream freed | %s µs |"):format(us(t_hibernate)))
print(("| one 100-byte message, awake stream (Brisk) | %s µs |"):format(us(t_small)))
print(("| one 100-byte message, awake stream (stock) | %s µs |"):format(us(t_small_stock)))
print(("| one 100-byte message that wakes its stream (Brisk) | %s µs |"):format(us(t_wake_small)))
print("")
print(("Waking costs %.2fx one small stanza on an awake Brisk stream (target: < 1x), %.2fx stock's; "
	.. "a woken stream's first small stanza costs %.2fx an awake one's."):format(
	t_wake / t_small, t_wake / t_small_stock, t_wake_small / t_small))

local tsv = os.getenv("BENCH_TSV")
if tsv and tsv ~= "" then
	local out = assert(io.open(tsv, "a"))
	out:write(("xml_parse\tparse stanzas\t%.1f\t%.1f\tstanzas/s\n"):format(rows[1][2], rows[1][3]))
	out:write(("xml_parse\tparse throughput\t%.2f\t%.2f\tMB/s\n"):format(rows[2][2], rows[2][3]))
	out:close()
end
