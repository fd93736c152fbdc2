-- Layout probes: brisk.xml's stanza tables must be in stock's internal state,
-- not only hold the same keys in the same pairs() order. The parser skips
-- some of stock's table writes where they provably leave no trace (see
-- push_attrs in modules/xml/parse.c); these probes look for a trace. The
-- same destructive sequence of writes goes to every table of a stock stanza
-- and of the Brisk stanza parsed from the same bytes, and every answer must
-- agree: the length operator on tables with holes (which answers from the
-- array's internal size hint), where integer and string keys land (pairs()
-- order after each write, which shows array size, node size, free pointer
-- and collision chains), and the length after removals.
--
-- Every other stanza is parsed by a Brisk stream that hibernates at every
-- feed end where it can and is fed after every tag end, so its parser is
-- rebuilt between the stream header and the stanza and inside it.
--
-- BRISK_FUZZ_ITER=n scales the number of generated stanzas (default 1500:
-- a fifth of it here, each stanza has a dozen tables to probe).
local harness = require "spec.helpers.xml_harness"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"
-- Brisk's util.xmppstream.new for this Prosody, as brisk.patch installs it
local brisk_new = require "brisk.patch.xmppstream".new(brisk)

local ITER = (tonumber(os.getenv("BRISK_FUZZ_ITER")) or 1500) // 5
local SEED0 = tonumber(os.getenv("BRISK_FUZZ_SEED")) or 20261125

local HDR = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
	.. " xmlns:foo='urn:foo' to='localhost' version='1.0'>"

local function parse(new, data, hibernating)
	local out = {}
	local saved = hibernating and brisk.set_limits({ hibernate_eagerly = true })
	local stream = new({ notopen = true }, {
		default_ns = "jabber:client",
		streamopened = function(s) s.notopen = nil end,
		handlestanza = function(_, stanza) out[#out + 1] = stanza end,
		error = function(_, e) out[#out + 1] = "error " .. tostring(e) end,
	})
	if saved then brisk.set_limits(saved) end
	for _, chunk in ipairs(hibernating and harness.tag_chunks(nil, data) or { data }) do
		assert(stream:feed(chunk))
	end
	return out
end

-- pairs() order of t as a string (keys only; values are equal anyway)
local function order(t)
	local keys = {}
	for k in pairs(t) do keys[#keys + 1] = type(k) == "string" and k or ("#" .. tostring(k)) end
	return table.concat(keys, " ")
end

-- The probe: a fixed sequence of writes and questions, answers in a list.
-- Integer keys around the array's possible sizes with holes, then string
-- keys (fill the nodes, force resizes), then removals.
local function probe(t, out)
	-- the sequence length counted without # (which moves the hint), then
	-- holes in its middle: # answers from the hint
	local n0 = 0
	while rawget(t, n0 + 1) ~= nil do n0 = n0 + 1 end
	if n0 >= 3 then
		local saved = {}
		for k = 2, n0 - 1 do saved[k] = t[k]; t[k] = nil end
		out[#out + 1] = "holes len " .. #t
		for k = n0 - 1, 2, -1 do t[k] = saved[k] end
		out[#out + 1] = "refilled len " .. #t
	end
	out[#out + 1] = "len " .. #t
	for _, k in ipairs({ 1, 2, 4, n0 + 2, 3, 8, 6, n0 + 1 }) do
		local had = rawget(t, k)
		t[k] = had or ("p" .. k)
		out[#out + 1] = ("[%d] len %d | %s"):format(k, #t, order(t))
	end
	for i = 1, 6 do
		t["s" .. i] = i
		out[#out + 1] = ("s%d len %d | %s"):format(i, #t, order(t))
	end
	for _, k in ipairs({ 2, n0 + 2, 3 }) do
		t[k] = nil
		out[#out + 1] = ("-%d len %d | %s"):format(k, #t, order(t))
	end
end

-- every table of a stanza, in a fixed walk order
local function tables(stanza, list)
	list[#list + 1] = stanza
	list[#list + 1] = stanza.attr
	list[#list + 1] = stanza.tags
	for _, child in ipairs(stanza) do
		if type(child) == "table" then tables(child, list) end
	end
	return list
end

local function compare(data, what, hibernating)
	local a, b = parse(stock.new, data), parse(brisk_new, data, hibernating)
	assert.are.equal(#a, #b, what)
	for i = 1, #a do
		if type(a[i]) ~= "table" then
			assert.are.equal(a[i], b[i], what)
			goto continue
		end
		assert.is_nil(harness.diff({ { "stanza", a[i] } }, { { "stanza", b[i] } }), what)
		-- collect all tables first: probing a stanza table changes its children
		local ta, tb = tables(a[i], {}), tables(b[i], {})
		assert.are.equal(#ta, #tb, what)
		for j = 1, #ta do
			local pa, pb = {}, {}
			probe(ta[j], pa)
			probe(tb[j], pb)
			for k = 1, #pa do
				if pa[k] ~= pb[k] then
					error(("%s: table %d, probe step %d:\nstock: %s\nbrisk: %s\ninput: %q")
						:format(what, j, k, pa[k], tostring(pb[k]), data), 2)
				end
			end
		end
		::continue::
	end
end

local NAMES = { "to", "from", "id", "type", "a", "b", "c", "d", "version", "foo:bar", "xml:lang", "xml:space" }

local function gen_attrs(r)
	local list, used = {}, {}
	local made_up = r(2) == 1
	for _ = 1, r(7) - 1 do
		local k = made_up and ("n" .. r(3000)) or NAMES[r(#NAMES)]
		if not used[k] then
			used[k] = true
			list[#list + 1] = (" %s='%s'"):format(k, k:gsub("%W", ""))
		end
	end
	return table.concat(list)
end

-- an element with 0..12 children (elements and text; fewer further down),
-- some in their own namespace (xmlns set by the parser), nested up to depth 3
local function gen_element(r, depth)
	local name = ({ "body", "x", "item", "c", "query" })[r(5)]
	local ns = r(2) == 1 and (" xmlns='urn:" .. r(4) .. "'") or ""
	local out = { "<", name, ns, gen_attrs(r) }
	local nchildren = depth == 1 and r(13) - 1 or depth == 2 and r(5) - 1 or 0
	if nchildren == 0 and r(2) == 1 then
		out[#out + 1] = "/>"
		return table.concat(out)
	end
	out[#out + 1] = ">"
	for _ = 1, nchildren do
		if r(4) == 1 then out[#out + 1] = "t" .. r(9) else out[#out + 1] = gen_element(r, depth + 1) end
	end
	out[#out + 1] = "</" .. name .. ">"
	return table.concat(out)
end

describe("brisk.xml stanza tables vs stock, probed", function()
	it("tells a table from the same keys with another size hint", function()
		-- the same six entries, appended one by one with # (as stock's
		-- t_insert does) or created at once: pairs() cannot tell them
		-- apart, the probe must
		local x, y = {}, { 1, 2, 3, 4, 5, 6, nil, nil }
		for i = 1, 6 do x[#x + 1] = i end
		assert.are.equal(order(x), order(y))
		local pa, pb = {}, {}
		probe(x, pa)
		probe(y, pb)
		assert.are_not.same(pa, pb)
	end)

	it("matches on generated stanzas of every attribute and child count, each table probed", function()
		local r = harness.rng(SEED0 + 11)
		for n = 1, ITER do
			local kind = ({ "message", "presence", "iq" })[r(3)]
			local data = HDR .. "<" .. kind .. gen_attrs(r) .. ">"
			for _ = 1, r(4) - 1 do data = data .. gen_element(r, 1) end
			data = data .. "</" .. kind .. ">"
			compare(data, "stanza " .. n, n % 2 == 0)
		end
	end)

	it("matches on the c2s corpus, each table probed", function()
		for _, item in ipairs(harness.corpus()) do
			if item.profile == "c2s" then
				local body = item.data:match("^.-<stream:stream[^>]*>(.*)</stream:stream>%s*$")
				if body then
					compare(HDR .. body, item.name)
					compare(HDR .. body, item.name .. " (hibernating)", true)
				end
			end
		end
	end)
end)
