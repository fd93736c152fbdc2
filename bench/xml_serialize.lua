-- bench/xml_serialize.lua — stock util.stanza vs brisk.xml serialization.
--
-- Serializes the same stanzas with stock __tostring / top_tag and with
-- Brisk's (installed into util.stanza, called through tostring() and
-- :top_tag() exactly as Prosody calls them), in one run, and prints a
-- Markdown section. Stanza sets: the parser corpus (spec/fixtures/xml,
-- parsed by stock util.xmppstream) and a generated mix of typical client
-- traffic. Outputs are checked byte-identical before timing.
--
-- Usage: eval "$(make -s env)"; lua5.4 bench/xml_serialize.lua [--quick]
-- With env BENCH_TSV=file, rows "area\tlabel\tstock\tbrisk\tunit" are
-- appended (higher is better for every unit).
require "bench.lib.prelude"
local st = require "util.stanza"
local xmppstream = require "util.xmppstream"
local bx = require "brisk.xml"
local patch = require "brisk.patch"

local quick = arg and arg[1] == "--quick"
local RUN_SECONDS = quick and 0.15 or 0.6 -- per measurement
local RUNS = quick and 3 or 5 -- median of

local clock = os.clock

-- Stanza sets ------------------------------------------------------------

local function parse_stream(data)
	local out = {}
	local session = { notopen = true }
	local stream = xmppstream.new(session, {
		default_ns = "jabber:client",
		streamopened = function (s) s.notopen = nil end,
		handlestanza = function (_, stanza) out[#out + 1] = stanza end,
		error = function () end,
	})
	stream:feed(data)
	return out
end

local function corpus()
	local list = {}
	for _, fx in ipairs(require "spec.helpers.xml_harness".corpus()) do
		for _, s in ipairs(parse_stream(fx.data)) do list[#list + 1] = s end
	end
	return list
end

-- Typical c2s traffic: chat messages with receipts and chat states,
-- presence with caps, MUC presence, roster pushes and results, disco,
-- MAM results (forwarded, nested) and pubsub events.
local function mix()
	local list = {}
	local words = { "hello", "there", "how", "are", "you", "<3", "fine", "&", "thanks", "é", "😀", "ok" }
	local function text(i, n)
		local t = {}
		for j = 1, n do t[j] = words[(i * 7 + j * 3) % #words + 1] end
		return table.concat(t, " ")
	end
	for i = 1, 40 do
		list[#list + 1] = st.message({ to = "juliet@capulet.lit/balcony", from = "romeo@montague.lit/orchard",
			type = "chat", id = "msg" .. i }, text(i, 3 + i % 30))
			:tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up()
			:tag("request", { xmlns = "urn:xmpp:receipts" }):up()
			:tag("origin-id", { xmlns = "urn:xmpp:sid:0", id = "de305d54-75b4-431b-adb2-eb6b9e54" .. i }):up()
	end
	for i = 1, 20 do
		list[#list + 1] = st.presence({ from = "user" .. i .. "@example.com/phone", to = "juliet@capulet.lit" })
			:tag("show"):text("away"):up()
			:tag("status"):text("In a meeting " .. i):up()
			:tag("priority"):text("5"):up()
			:tag("c", { xmlns = "http://jabber.org/protocol/caps", hash = "sha-1", node = "https://conversations.im",
				ver = "QWf0xmdQHyiR1Sd8v4kJb2s1wA=" }):up()
		list[#list + 1] = st.presence({ from = "room@muc.example.com/nick" .. i, to = "juliet@capulet.lit/balcony" })
			:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" })
			:tag("item", { affiliation = "member", role = "participant", jid = "user" .. i .. "@example.com/phone" }):up()
			:tag("status", { code = "110" }):up():up()
	end
	local roster = st.iq({ type = "result", id = "roster1", to = "juliet@capulet.lit/balcony" })
		:tag("query", { xmlns = "jabber:iq:roster", ver = "42" })
	for i = 1, 50 do
		roster:tag("item", { jid = "contact" .. i .. "@example.com", name = "Contact " .. i, subscription = "both" })
			:tag("group"):text("Friends"):up():up()
	end
	list[#list + 1] = roster:reset()
	local disco = st.iq({ type = "result", id = "disco1", from = "example.com", to = "juliet@capulet.lit/balcony" })
		:tag("query", { xmlns = "http://jabber.org/protocol/disco#info" })
		:tag("identity", { category = "server", type = "im", name = "Prosody" }):up()
	for _, f in ipairs({ "jabber:iq:roster", "urn:xmpp:carbons:2", "urn:xmpp:mam:2", "urn:xmpp:ping",
		"vcard-temp", "jabber:iq:version", "urn:xmpp:blocking", "http://jabber.org/protocol/commands" }) do
		disco:tag("feature", { var = f }):up()
	end
	list[#list + 1] = disco:reset()
	for i = 1, 10 do
		list[#list + 1] = st.message({ to = "juliet@capulet.lit/balcony", id = "mam" .. i })
			:tag("result", { xmlns = "urn:xmpp:mam:2", queryid = "q1", id = "archive" .. i })
			:tag("forwarded", { xmlns = "urn:xmpp:forward:0" })
			:tag("delay", { xmlns = "urn:xmpp:delay", stamp = "2026-11-25T13:00:0" .. (i % 10) .. "Z" }):up()
			:tag("message", { xmlns = "jabber:client", to = "juliet@capulet.lit", from = "romeo@montague.lit/orchard",
				type = "chat", id = "orig" .. i })
			:tag("body"):text(text(i, 12)):up():up():up():up()
		list[#list + 1] = st.message({ to = "juliet@capulet.lit", from = "pubsub.example.com" })
			:tag("event", { xmlns = "http://jabber.org/protocol/pubsub#event" })
			:tag("items", { node = "urn:xmpp:microblog:0" })
			:tag("item", { id = "entry" .. i })
			:tag("entry", { xmlns = "http://www.w3.org/2005/Atom" })
			:tag("title", { type = "text" }):text(text(i, 8)):up()
			:tag("published"):text("2026-11-25T13:00:00Z"):up():up():up():up():up()
	end
	return list
end

-- Timing -----------------------------------------------------------------

-- Calls per second of f over set, for RUN_SECONDS.
local function rate(f, set)
	local n, passes = #set, 0
	local t0 = clock()
	local t
	repeat
		for i = 1, n do f(set[i]) end
		passes = passes + 1
		t = clock() - t0
	until t >= RUN_SECONDS
	return passes * n / t
end

local function median(rates)
	table.sort(rates)
	return rates[(RUNS + 1) // 2]
end

-- Median over RUNS of (calls per second, bytes per second) for f over set.
local function measure(f, set, bytes_per_pass)
	local rates = {}
	for r = 1, RUNS do rates[r] = rate(f, set) end
	local m = median(rates)
	return m, bytes_per_pass and m * bytes_per_pass / #set or nil
end

-- The same for stock and for Brisk installed, their runs alternating, so
-- that a change in the load of this shared machine hits both sides alike
-- and the ratio stays meaningful. Returns stock's rate, then Brisk's.
local function measure_pair(f, set)
	local a, b = {}, {}
	for r = 1, RUNS do
		a[r] = rate(f, set)
		local undo = patch.install({ "stanza", "xmppstream" }, { rebind = false })
		b[r] = rate(f, set)
		undo()
	end
	return median(a), median(b)
end

local rows = {}
-- label: the table's; short: the chart's (stable across corpus changes).
local function row(label, stock, brisk, unit, short)
	rows[#rows + 1] = { label = label, stock = stock, brisk = brisk, unit = unit, short = short or label }
end

local stock_tostring = st.stanza_mt.__tostring
local stock_top_tag = st.stanza_mt.top_tag

local sets = { { "corpus", corpus() }, { "typical mix", mix() } }
local fast_path_candidates = { "get_child", "get_child_text", "find", "childtags", "clone", "get_text" }

-- Reference outputs and byte counts, with stock.
local want = {}
for _, set in ipairs(sets) do
	local bytes = 0
	want[set[1]] = {}
	for i, s in ipairs(set[2]) do
		local x = stock_tostring(s)
		want[set[1]][i] = x
		bytes = bytes + #x
	end
	set.bytes = bytes
end

local function run_tostring(s) return tostring(s) end
local function run_top_tag(s) return s:top_tag() end

-- Stock and Brisk installed (the way mod_brisk_xml runs), alternating.
local undo = patch.install({ "stanza", "xmppstream" }, { rebind = false })
for _, set in ipairs(sets) do
	local name, list = set[1], set[2]
	for i, s in ipairs(list) do
		assert(tostring(s) == want[name][i], "Brisk output differs from stock on " .. name .. " #" .. i)
	end
end
undo()
assert(st.stanza_mt.__tostring == stock_tostring, "undo did not restore stock")
local results = {}
for _, set in ipairs(sets) do
	local name, list = set[1], set[2]
	if #list > 0 then
		local r = {}
		local per_call = set.bytes / #list
		r.ts_stock, r.ts_brisk = measure_pair(run_tostring, list)
		r.mb_stock, r.mb_brisk = r.ts_stock * per_call, r.ts_brisk * per_call
		r.tt_stock, r.tt_brisk = measure_pair(run_top_tag, list)
		results[name] = r
	end
end
assert(st.stanza_mt.__tostring == stock_tostring, "undo did not restore stock")

for _, set in ipairs(sets) do
	local name, list = set[1], set[2]
	local r = results[name]
	if r then
		row(("tostring, %s (%d stanzas, avg %d B)"):format(name, #list, set.bytes // #list),
			r.ts_stock, r.ts_brisk, "stanzas/s", "tostring, " .. name)
		row(("tostring, %s"):format(name), r.mb_stock / 1e6, r.mb_brisk / 1e6, "MB/s")
		row(("top_tag, %s"):format(name), r.tt_stock, r.tt_brisk, "calls/s")
	end
end

-- Fast-path candidates: Brisk replaces a method only where a C version
-- exists in brisk.xml (exported under the method's name) and pays.
local typical = sets[2][2]
local fp_calls = {
	get_child = function (m) return function (s) return m(s, "body") end end,
	get_child_text = function (m) return function (s) return m(s, "body") end end,
	find = function (m) return function (s) return m(s, "{urn:xmpp:mam:2}result/{urn:xmpp:forward:0}forwarded/{jabber:client}message/body#") end end,
	childtags = function (m) return function (s) for _ in m(s) do end end end,
	clone = function (m) return function (s) return m(s) end end,
	get_text = function (m) return function (s) return m(s.tags[1] or s) end end,
}
local fp_rows = {}
for _, name in ipairs(fast_path_candidates) do
	local stock_m = st.stanza_mt[name] or st[name]
	local a = measure(fp_calls[name](stock_m), typical)
	local c_m = bx[name]
	local b = c_m and measure(fp_calls[name](c_m), typical) or nil
	fp_rows[#fp_rows + 1] = { name = name, stock = a, brisk = b }
	if b then row(name .. " (typical mix)", a, b, "calls/s") end
end

-- Output -------------------------------------------------------------------

local function fmt(v, unit)
	if unit == "MB/s" then return ("%.1f"):format(v) end
	if v >= 1e6 then return ("%.2fM"):format(v / 1e6) end
	if v >= 1e3 then return ("%.0fk"):format(v / 1e3) end
	return ("%.0f"):format(v)
end

print("### XML serialization (util.stanza __tostring / top_tag)")
print()
print(("Stock util.stanza vs brisk.xml installed, same stanzas, same run, runs alternating; median of %d runs of %.2f s%s.")
	:format(RUNS, RUN_SECONDS, quick and " (--quick)" or ""))
print()
print("| what | stock | Brisk | ratio | unit |")
print("|---|---:|---:|---:|---|")
for _, r in ipairs(rows) do
	print(("| %s | %s | %s | %.1fx | %s |"):format(r.label, fmt(r.stock, r.unit), fmt(r.brisk, r.unit),
		r.brisk / r.stock, r.unit))
end
local kept = {}
for _, r in ipairs(fp_rows) do
	if not r.brisk then kept[#kept + 1] = ("%s %s/s"):format(r.name, fmt(r.stock)) end
end
if #kept > 0 then
	print()
	print("Methods left stock (no C version pays enough to replace them), stock rate on the typical mix: "
		.. table.concat(kept, ", ") .. ".")
end
print()

local tsv = os.getenv("BENCH_TSV")
if tsv and tsv ~= "" then
	local f = assert(io.open(tsv, "a"))
	for _, r in ipairs(rows) do
		f:write(("xml_serialize\t%s\t%.6g\t%.6g\t%s\n"):format(r.short, r.stock, r.brisk, r.unit))
	end
	f:close()
end
