-- bench/xml_parse.lua — stock util.xmppstream vs brisk.xml stream parsing.
--
-- Builds one client stream from the parser corpus (spec/fixtures/xml, the
-- c2s streams' stanzas: messages, presence, iq roster/disco/vcard, MUC,
-- pubsub, Jingle), repeated to a few hundred KB, and feeds it in 4 KB
-- chunks (as network reads arrive) to stock util.xmppstream.new and to
-- brisk.xml.new, in the same run, with the same callbacks (which only count
-- stanzas). The ceiling is libexpat alone with namespace processing and
-- empty handlers on the same bytes and chunks (brisk.xml._expat_noop_parse,
-- a test-only function). First both parsers' stanzas are checked to
-- serialize to the same bytes (stock serializer, attributes in pairs() order).
--
-- Usage: eval "$(make -s env)"; lua5.4 bench/xml_parse.lua [--quick]
-- With env BENCH_TSV=file, rows "area\tlabel\tstock\tbrisk\tunit" are
-- appended (higher is better for every unit).
require "bench.lib.prelude"
local xmppstream = require "util.xmppstream"
local bx = require "brisk.xml"

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
	local ok, err = bx._expat_noop_parse(chunks)
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
local n_brisk = parse_with(bx.new, chunks, out_brisk)
assert(n_stock == n_brisk and n_stock > 0, ("stanza counts differ: %d vs %d"):format(n_stock, n_brisk))
for i = 1, n_stock do
	assert(out_stock[i] == out_brisk[i], ("stanza %d serializes differently:\n%s\n%s"):format(i, out_stock[i], out_brisk[i]))
end
out_stock, out_brisk = nil, nil

local t_stock = measure(function () return parse_with(xmppstream.new, chunks) end)
local t_brisk = measure(function () return parse_with(bx.new, chunks) end)
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

local tsv = os.getenv("BENCH_TSV")
if tsv and tsv ~= "" then
	local out = assert(io.open(tsv, "a"))
	out:write(("xml_parse\tparse stanzas\t%.1f\t%.1f\tstanzas/s\n"):format(rows[1][2], rows[1][3]))
	out:write(("xml_parse\tparse throughput\t%.2f\t%.2f\tMB/s\n"):format(rows[2][2], rows[2][3]))
	out:close()
end
