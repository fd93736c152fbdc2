-- Differential specs: brisk.xml.new against stock util.xmppstream.new, in the
-- same Lua state, on the same bytes. Every callback, its arguments (stanza
-- trees deep-compared in next() order, metatables included), feed() results
-- and raised errors must be identical; every table of every stanza (stanza,
-- attr, tags, children, recursively) must iterate its keys in stock's
-- pairs() order, and every stanza must serialize (stock tostring) to the
-- same bytes. harness.diff checks all of that for every run below.
--
-- Hibernation (the parser freed at a stanza boundary and rebuilt on the next
-- bytes) must not change any of it: most runs are repeated with Brisk's
-- streams hibernating at every feed end where they can ("eager") or swept by
-- brisk.hibernate(0) after every feed ("sweep"), fed at random points or
-- after every tag end (so at every stanza boundary).
--
-- BRISK_FUZZ_ITER=n sets the number of random and of mutated streams
-- (default 1500 each); BRISK_FUZZ_SEED picks the first seed.
local harness = require "spec.helpers.xml_harness"
local st = require "util.stanza"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"
-- Brisk's util.xmppstream.new for this Prosody, as brisk.patch installs it
local brisk_new = require "brisk.patch.xmppstream".new(brisk)

local ITER = tonumber(os.getenv("BRISK_FUZZ_ITER")) or 1500
local SEED0 = tonumber(os.getenv("BRISK_FUZZ_SEED")) or 20261125

-- feeds that left a Brisk stream hibernating and feeds that woke one, by
-- mode (the runs must not be vacuous)
local hibernated = { eager = 0, sweep = 0 }
local woke = { eager = 0, sweep = 0 }

local function check(chunks, opts, what, mode)
	local a = harness.run(stock.new, chunks, opts)
	local b = harness.run(brisk_new, chunks, opts)
	local d = harness.diff(a, b)
	if not d and mode then
		local c, n, w = harness.run_hibernating(brisk, chunks, opts, mode)
		hibernated[mode] = hibernated[mode] + n
		woke[mode] = woke[mode] + w
		d = harness.diff(a, c)
		if d then d = "(hibernating: " .. mode .. ")\n" .. d end
	end
	if d then
		local o = {}
		for k, v in pairs(opts or {}) do o[#o + 1] = k .. "=" .. harness.dump(v) end
		error(("%s\n%s\noptions: %s\ninput: %q"):format(what, d, table.concat(o, " "),
			table.concat(chunks, "\1|\1")), 2)
	end
	return a
end

describe("brisk.xml parser vs stock util.xmppstream", function()
	local corpus = harness.corpus()

	it("has a corpus", function()
		assert.truthy(#corpus >= 10)
	end)

	it("tells tables with equal contents but another pairs() order apart", function()
		-- two tables holding the same pairs, filled in opposite orders, until
		-- next() visits them differently (hash collisions make it so quickly)
		local a, b
		for n = 2, 64 do
			a, b = {}, {}
			for i = 1, n do a["k" .. i] = i end
			for i = n, 1, -1 do b["k" .. i] = i end
			if harness.key_orders(a)[1] ~= harness.key_orders(b)[1] then break end
		end
		assert.are_not.equal(harness.key_orders(a)[1], harness.key_orders(b)[1])
		assert.is_false(harness.same(a, b))
		assert.truthy(harness.diff({ { "stanza", a } }, { { "stanza", b } }))
		assert.is_nil(harness.diff({ { "stanza", a } }, { { "stanza", a } }))
	end)

	-- Attribute lists of every length and order (the tables whose layout
	-- depends on LuaExpat's positional entries and xmppstream's renaming),
	-- on stanzas and children, in and out of the default namespace. After
	-- parsing, both stanzas go through the same writes Prosody's routing
	-- does; they must stay identical in key order and serialization.
	it("keeps parsed attribute tables identical to stock's under later writes", function()
		local hdr = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
			.. " xmlns:foo='urn:foo' to='localhost' version='1.0'>"
		local names = { "to", "from", "id", "type", "xml:lang", "a", "b", "version", "c", "d", "zz",
			"foo:bar", "xml:space", "xml:id", "xml:base", "foo:q", "lang", "e", "f", "g" }
		local function parse(new, data)
			local out = {}
			local cbs = { stream_ns = "http://etherx.jabber.org/streams", default_ns = "jabber:client",
				streamopened = function(s) s.notopen = nil end,
				handlestanza = function(_, stanza) out[#out + 1] = stanza end,
				error = function(_, e) out[#out + 1] = "error " .. tostring(e) end }
			local stream = new({ notopen = true }, cbs)
			assert(stream:feed(data))
			return out
		end
		local function attrs(r)
			local list, used = {}, {}
			-- half the time attributes with made-up names: every layout of
			-- small tables (0 to 12 keys, colliding or not) comes up
			local made_up = r(2) == 1
			for _ = 1, made_up and r(13) - 1 or r(#names + 1) - 1 do
				local k = made_up and "n" .. r(5000) or names[r(#names)]
				if not used[k] then
					used[k] = true
					list[#list + 1] = k .. "='" .. k:gsub("%W", "") .. "'"
				end
			end
			return #list > 0 and " " .. table.concat(list, " ") or ""
		end
		local function touch(stanza, extra)
			-- what routing and common modules do to a received stanza, then
			-- more keys: where they land shows the tables' inner state
			stanza.attr.from = "alice@localhost/res"
			stanza.attr.to = nil
			stanza.attr.id = stanza.attr.id or "generated"
			stanza.attr.type = stanza.attr.type or "normal"
			stanza.attr["xml:lang"] = nil
			stanza:tag("delay", { xmlns = "urn:xmpp:delay", from = "localhost", stamp = "2026-01-01T00:00:00Z" }):up()
			for tag in stanza:childtags() do
				tag.attr.extra = "1"
				tag.attr.xmlns = tag.attr.xmlns or "urn:added"
				tag.attr.n1 = nil
				tag.attr.more = "2"
				for _, k in ipairs(extra) do tag.attr[k] = k end
			end
			for _, k in ipairs(extra) do stanza.attr[k] = k end
			stanza:remove_children("x", "urn:x")
			-- the length operator on tables with holes answers from the
			-- table's internal array-size hint, which stock's own "#attr"
			-- moves: the answers must agree too
			local lens = {}
			for _, t in ipairs({ stanza, table.unpack(stanza.tags) }) do
				t.attr[2] = "hole"
				lens[#lens + 1] = #t.attr
				t.attr[2] = nil
			end
			return stanza, table.concat(lens, ",")
		end
		local r = harness.rng(SEED0 + 7)
		for n = 1, 2 * ITER do
			local kind = ({ "message", "presence", "iq" })[r(3)]
			local data = hdr .. "<" .. kind .. attrs(r) .. "><body" .. attrs(r) .. ">x</body>"
				.. "<x xmlns='urn:x'" .. attrs(r) .. "/><y xmlns='urn:y'" .. attrs(r) .. "><z" .. attrs(r)
				.. "/>t</y></" .. kind .. ">"
			local a, b = parse(stock.new, data), parse(brisk_new, data)
			assert.are.equal(1, #a, data)
			local d = harness.diff({ { "stanza", a[1] } }, { { "stanza", b[1] } })
			if d then error(("stanza %d as parsed: %s\ninput: %q"):format(n, d, data)) end
			local extra = {}
			for i = 1, r(8) - 1 do extra[i] = "w" .. r(5000) end
			local ta, la = touch(a[1], extra)
			local tb, lb = touch(b[1], extra)
			assert.are.equal(la, lb, "lengths of attribute tables with holes, stanza " .. n)
			d = harness.diff({ { "stanza", ta } }, { { "stanza", tb } })
				or harness.diff({ { "stanza", st.clone(ta) } }, { { "stanza", st.clone(tb) } })
				or harness.diff({ { "stanza", st.reply(ta) } }, { { "stanza", st.reply(tb) } })
			if d then error(("stanza %d after writes: %s\ninput: %q"):format(n, d, data)) end
		end
	end)

	it("matches on every corpus stream fed whole", function()
		for _, item in ipairs(corpus) do
			local trace = harness.lines(check({ item.data }, { profile = item.profile }, item.name, "eager"))
			-- the corpus is valid XMPP: stanzas are delivered and nothing fails
			local stanzas = 0
			for _, ev in ipairs(trace) do
				if ev:match("^stanza ") then stanzas = stanzas + 1 end
				assert.is_nil(ev:match("^raise"), item.name)
			end
			assert.truthy(stanzas > 0 or item.name:match("^stream_errors"), item.name)
		end
	end)

	it("matches with every option variant on the corpus", function()
		local variants = {
			{ limit = 100 }, { limit = 400 }, { set_limit = { 1000, 3 } }, { set_limit = { 1000, 1 } },
			{ reset_after = "auth" }, { reset_after = "message" }, { raise_at = 2 }, { keep_notopen = true },
			{ no_open = true }, { no_close = true }, { finish = true }, { profile = "nodefault" },
			{ profile = "custom" }, { profile = "s2s" }, { profile = "bosh" },
		}
		for _, item in ipairs(corpus) do
			for i, v in ipairs(variants) do
				local opts = { profile = item.profile }
				for k, val in pairs(v) do opts[k] = val end
				check({ item.data }, opts, item.name)
				-- and split at every tag end, hibernating wherever possible
				check(harness.tag_chunks(nil, item.data), opts, item.name .. " at tag ends",
					i % 2 == 0 and "eager" or "sweep")
			end
		end
	end)

	it("matches at every split position of every corpus stream", function()
		for _, item in ipairs(corpus) do
			local data = item.data
			for i = 0, #data do
				check({ data:sub(1, i), data:sub(i + 1) }, { profile = item.profile, reset_after = "auth" },
					item.name .. " split at " .. i, "eager")
			end
		end
	end)

	it("matches when fed one byte at a time", function()
		for _, item in ipairs(corpus) do
			local chunks = {}
			for i = 1, #item.data do chunks[i] = item.data:sub(i, i) end
			check(chunks, { profile = item.profile, limit = 300 }, item.name .. " bytewise", "eager")
		end
	end)

	it("matches on " .. ITER .. " random streams", function()
		for n = 1, ITER do
			local seed = SEED0 + n
			local r = harness.rng(seed)
			local profiles = { "c2s", "s2s", "component", "bosh", "nodefault", "custom" }
			local profile = profiles[r(#profiles)]
			local s = harness.gen_stream(r, profile)
			local opts = harness.options(r, profile)
			local chunks = harness.chunks(r, s)
			-- (a generator of its own: r's sequence stays as it was)
			local r2 = harness.rng(seed * 3 + 1)
			if r2(3) == 1 then chunks = harness.tag_chunks(r2, s) end
			check(chunks, opts, "random stream, seed " .. seed, r2(2) == 1 and "eager" or "sweep")
		end
	end)

	it("matches on " .. ITER .. " mutated streams", function()
		for n = 1, ITER do
			local seed = SEED0 + 1000000 + n
			local r = harness.rng(seed)
			local base
			if r(2) == 1 then
				base = corpus[r(#corpus)]
			else
				base = { data = harness.gen_stream(r, "c2s"), profile = "c2s" }
			end
			local s = harness.mutate(r, base.data)
			local opts = harness.options(r, base.profile)
			local chunks = harness.chunks(r, s)
			local r2 = harness.rng(seed * 3 + 1)
			if r2(3) == 1 then chunks = harness.tag_chunks(r2, s) end
			check(chunks, opts, "mutated stream, seed " .. seed, r2(2) == 1 and "eager" or "sweep")
		end
	end)

	it("really hibernated and woke in the runs above", function()
		-- (counted over this file's earlier tests, which busted runs first;
		-- the corpus runs alone give about 450 of each, the random ones
		-- about 3000 more by default)
		for _, mode in ipairs({ "eager", "sweep" }) do
			assert.truthy(hibernated[mode] > 400 and woke[mode] > 400,
				("%s: %d hibernated, %d woke"):format(mode, hibernated[mode], woke[mode]))
		end
	end)
end)
