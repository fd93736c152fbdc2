-- brisk.xml's parser memory: the C memory a stream holds (counted by the
-- allocator: expat's memory suite and Brisk's own buffers), that nothing is
-- retained after a large stanza, and hibernation (an idle stream's expat
-- parser freed at a stanza boundary, rebuilt from its stream header on the
-- next bytes). Hibernating must change nothing observable: wherever stock
-- has an answer, the runs below compare with it through the differential
-- harness, hibernation attempted after every feed.
local harness = require "spec.helpers.xml_harness"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"
-- Brisk's util.xmppstream.new for this Prosody, as brisk.patch installs it
local brisk_new = require "brisk.patch.xmppstream".new(brisk)

-- test-only fault injection, outside the module's API (see l_fail_alloc)
local fail_alloc = debug.getregistry()["brisk.xml.fail_alloc"]

local HEADER = "<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
	.. " xmlns:stream='http://etherx.jabber.org/streams' xmlns:foo='urn:foo' to='example.com'"
	.. " version='1.0' xml:lang='de'>"
local MSG = "<message to='bob@example.com' id='a1' type='chat'><body>Hello, how are you?</body></message>"

-- A Brisk stream with callbacks that record what they see.
local function open(opts)
	opts = opts or {}
	local rec = { stanzas = {}, errors = {}, closed = 0, session = { notopen = true } }
	-- restart() does what mod_c2s does after SASL
	function rec.restart()
		rec.session.notopen = true
		rec.stream:reset()
	end
	rec.stream = brisk_new(rec.session, {
		default_ns = "jabber:client",
		streamopened = function (s) s.notopen = nil end,
		streamclosed = function () rec.closed = rec.closed + 1 end,
		handlestanza = function (_, st)
			rec.stanzas[#rec.stanzas + 1] = st
			if opts.on_stanza then opts.on_stanza(st) end
		end,
		error = function (_, e, a, b)
			rec.errors[#rec.errors + 1] = { e, a, b }
			if opts.raise_on_error then error("raised on " .. e, 0) end
		end,
	}, opts.limit or 10 * 1024 * 1024)
	return rec
end

local function mem(rec) return brisk.memory(rec.stream) end

-- Stock and Brisk on the same chunks, Brisk also hibernating (after every
-- feed where it can, and swept by hibernate(0)); returns how many feeds left
-- Brisk's stream hibernating in the two hibernating runs.
local function same_as_stock(chunks, opts)
	local a = harness.run(stock.new, chunks, opts)
	local d = harness.diff(a, harness.run(brisk_new, chunks, opts))
	assert(d == nil, d)
	local n = 0
	for _, mode in ipairs({ "eager", "sweep" }) do
		local b, h = harness.run_hibernating(brisk, chunks, opts, mode)
		d = harness.diff(a, b)
		assert(d == nil, d and (mode .. ": " .. d))
		n = n + h
	end
	return n
end

describe("brisk.xml parser memory", function ()
	local saved
	before_each(function () saved = brisk.set_limits() end)
	after_each(function ()
		brisk.set_limits(saved)
		fail_alloc(0)
	end)

	it("counts what each stream holds, and totals it", function ()
		collectgarbage()
		collectgarbage()
		local before = brisk.memory()
		local a, b = open(), open()
		assert.truthy(mem(a).expat > 2000) -- the parser exists from new() on
		assert(a.stream:feed(HEADER))
		local m = mem(a)
		assert.is_false(m.hibernating)
		assert.equal(m.expat + m.buffers, m.bytes)
		assert.truthy(m.buffers > 0) -- the stream header's replay copy
		local total = brisk.memory()
		assert.equal(before.streams + 2, total.streams)
		assert.equal(before.bytes + mem(a).bytes + mem(b).bytes, total.bytes)
		assert.equal(total.expat + total.buffers, total.bytes)
		a, b = nil, nil
		collectgarbage()
		collectgarbage()
		assert.same(before, brisk.memory())
		assert.has_error(function () brisk.memory({}) end)
		assert.has_error(function () brisk.memory(stock.new({}, { handlestanza = print, error = print })) end)
	end)

	it("holds at most 1 KiB for an idle hibernated stream", function ()
		local rec = open()
		assert(rec.stream:feed(HEADER))
		assert(rec.stream:feed(MSG))
		local awake = mem(rec)
		local n, hibernating, streams = brisk.hibernate(0)
		assert.truthy(n >= 1 and hibernating >= 1 and streams >= hibernating)
		local m = mem(rec)
		assert.is_true(m.hibernating)
		assert.equal(0, m.expat)
		assert.truthy(m.bytes <= 1024, m.bytes)
		print(("\n    idle stream C memory: %d bytes awake, %d hibernating"):format(awake.bytes, m.bytes))
		-- and wakes on the next bytes
		assert(rec.stream:feed(MSG))
		assert.is_false(mem(rec).hibernating)
		assert.equal(2, #rec.stanzas)
		-- an empty feed leaves a hibernating stream asleep, as it leaves expat untouched
		brisk.hibernate(0)
		assert.same({ true, nil }, { rec.stream:feed("") ~= nil, select(2, rec.stream:feed("")) })
		assert.is_true(mem(rec).hibernating)
	end)

	-- After any stanza the stream goes back to (about) what it held before
	-- it, without a sweep: Brisk's buffers are given back at the stanza's
	-- end, and a parser that grew past 32 KiB is rebuilt at the next feed end
	-- that allows it. Each case ends with a small stanza, fed on its own.
	local big = ("x"):rep(1024 * 1024)
	local cases = {
		{ "a 1 MB stanza in one feed", { "<message><body>" .. big .. "</body></message>" } },
		{ "a 1 MB attribute value", { "<message id='" .. big .. "'/>" } },
		{ "a 1 MB stanza in 4 KiB feeds", "split" },
		{ "a stanza 20000 elements deep", { "<message>" .. ("<a>"):rep(20000) .. ("</a>"):rep(20000) .. "</message>" } },
		{ "a stanza of 3000 distinct element and attribute names",
			{ (function ()
				local t = { "<message>" }
				for i = 1, 3000 do t[#t + 1] = ("<e%d a%d='1'/>"):format(i, i) end
				return table.concat(t) .. "</message>"
			end)() } },
	}
	for _, case in ipairs(cases) do
		it("keeps nothing after " .. case[1], function ()
			local rec = open()
			assert(rec.stream:feed(HEADER))
			assert(rec.stream:feed(MSG))
			local before = mem(rec).bytes
			local chunks = case[2]
			if chunks == "split" then
				local s = "<message><body>" .. big .. "</body></message>"
				chunks = {}
				for i = 1, #s, 4096 do chunks[#chunks + 1] = s:sub(i, i + 4095) end
			end
			local peak = 0
			for _, c in ipairs(chunks) do
				assert(rec.stream:feed(c))
				peak = math.max(peak, mem(rec).bytes)
			end
			assert(rec.stream:feed(MSG))
			assert.equal(3, #rec.stanzas)
			local after = mem(rec).bytes
			assert.truthy(after <= before + 8 * 1024,
				("%s: %d bytes before, %d at the peak, %d after"):format(case[1], before, peak, after))
			brisk.hibernate(0)
			assert.truthy(mem(rec).bytes <= 1024)
		end)
	end

	it("gives Brisk's buffers back after a large stanza even mid-stream", function ()
		local rec = open()
		assert(rec.stream:feed(HEADER))
		-- the large stanza ends inside a feed that also starts the next one:
		-- no feed end allows a rebuild, the text buffer still goes
		assert(rec.stream:feed("<message><body>" .. ("y"):rep(300000) .. "</body></message><message><body>hi"))
		assert.truthy(mem(rec).buffers <= 8 * 1024, mem(rec).buffers)
		assert(rec.stream:feed("</body></message>"))
	end)
end)

describe("brisk.xml parser hibernation", function ()
	local saved
	before_each(function () saved = brisk.set_limits() end)
	after_each(function ()
		brisk.set_limits(saved)
		fail_alloc(0)
	end)

	local function asleep_after(chunks, opts)
		local rec = open(opts)
		for _, c in ipairs(chunks) do pcall(rec.stream.feed, rec.stream, c) end
		brisk.hibernate(0)
		return mem(rec).hibernating, rec
	end

	it("hibernates only where nothing but the stream header matters", function ()
		assert.is_true((asleep_after({ HEADER })))
		assert.is_true((asleep_after({ HEADER, MSG, " \n\t" })))
		assert.is_true((asleep_after({ HEADER .. "\r\n" })))
		assert.is_true((asleep_after({ HEADER, "<![CDATA[x]]>" })))
		local awake = {
			{ "a feed ending inside the header", { HEADER:sub(1, 50) } },
			{ "a stanza open", { HEADER, "<message><body>" } },
			{ "a partial tag", { HEADER, "<mess" } },
			{ "a trailing CR", { HEADER, MSG .. "\r" } },
			{ "a trailing ]", { HEADER, MSG .. "]" } },
			{ "a split character", { HEADER, "\195" } },
			{ "an open CDATA section", { HEADER, "<![CDATA[abc" } },
			{ "a parse error", { HEADER, "</foo>" } },
			{ "the stream closed", { HEADER, MSG, "</stream:stream>" } },
			{ "a restricted-xml stop", { HEADER, "<!-- c -->" } },
			{ "no stream header", { MSG } },
		}
		for _, c in ipairs(awake) do
			assert.is_false((asleep_after(c[2])), c[1])
		end
		-- a raising handlestanza keeps its stanza open, as stock does
		local asleep = asleep_after({ HEADER, MSG }, { on_stanza = function () error("no") end })
		assert.is_false(asleep)
	end)

	it("never hibernates what it could not rebuild exactly", function ()
		local doctype = "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY e 'entity!'>]>"
			.. HEADER:gsub("^<%?xml[^>]*>", "")
		local latin1 = "<?xml version='1.0' encoding='ISO-8859-1'?>" .. HEADER:gsub("^<%?xml[^>]*>", "")
		local v11 = "<?xml version='1.1'?>" .. HEADER:gsub("^<%?xml[^>]*>", "")
		local long = HEADER:gsub(">$", " x='" .. ("z"):rep(5000) .. "'>")
		-- the error callback raises, so the parse goes on past the refusal
		for _, h in ipairs({ doctype, latin1, v11 }) do
			local asleep, rec = asleep_after({ h, MSG }, { raise_on_error = true })
			assert.is_false(asleep, h)
			assert.truthy(#rec.errors > 0)
		end
		assert.is_false((asleep_after({ long, MSG })))
		-- UTF-16 (a byte order mark, then every character in two bytes)
		local function utf16le(s) return "\255\254" .. s:gsub(".", "%0\0") end
		local u16 = utf16le(HEADER:gsub("^<%?xml[^>]*>", "") .. MSG)
		assert.is_false((asleep_after({ u16 })))
		-- and all of them behave as stock does, hibernation attempted
		for _, h in ipairs({ doctype, latin1, v11, long }) do
			same_as_stock({ h, MSG, "<message><body>&e;</body></message>", "</stream:stream>" }, {})
		end
		same_as_stock({ u16, utf16le(MSG), utf16le("</stream:stream>") }, {})
	end)

	it("wakes with the stream's namespaces, language and root element", function ()
		local chunks = { HEADER, MSG,
			"<foo:x xmlns='jabber:client'/>",                  -- a stanza in a prefix from the header
			"<message><foo:y a='1' foo:b='2'/><stream:z/></message>", -- header prefixes inside a stanza
			"<iq type='get' id='1' xml:lang='fr'><query xmlns='jabber:iq:roster'/></iq>",
			"<presence/>", "</stream:stream>" }
		assert.truthy(same_as_stock(chunks, {}) >= 10)
		-- every tag end a feed end; once with a stream header spread over feeds
		local data = table.concat(chunks)
		assert.truthy(same_as_stock(harness.tag_chunks(nil, data), {}) > 10)
		local cut = {}
		for i = 1, #data, 7 do cut[#cut + 1] = data:sub(i, i + 6) end
		same_as_stock(cut, {})
		-- other profiles: s2s with a dialback prefix, BOSH's body, no default namespace
		same_as_stock({ "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
			.. " xmlns:db='jabber:server:dialback'>", "<db:result from='a' to='b'>key</db:result>",
			"<message from='a@a' to='b@b'/>", "</stream:stream>" }, { profile = "s2s" })
		same_as_stock({ "<body xmlns='http://jabber.org/protocol/httpbind' rid='1' xml:lang='fr'>", MSG, "</body>" },
			{ profile = "bosh" })
		same_as_stock({ "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", MSG,
			"<message xmlns='jabber:client'/>" }, { profile = "nodefault" })
		-- odd but valid header spellings: both quotes, white space around =,
		-- > inside a value, entities, a namespace declared twice over
		same_as_stock({ "<stream:stream  xmlns = \"jabber:client\"\n\txmlns:stream='http://etherx.jabber.org/streams'"
			.. " to='a>b' from=\"&amp;&#x41;\" xmlns:p='urn:&amp;'  >", MSG, "<p:q xmlns='jabber:client'/>",
			"</stream:stream>" }, {})
	end)

	it("keeps the byte accounting, size limit and child quota across hibernation", function ()
		-- without streamopened the header's bytes are never credited
		-- (stock's quirk), so they stay outstanding across every wake
		local stanzas = {}
		for i = 1, 12 do stanzas[i] = MSG end
		for _, opts in ipairs({ { no_open = true, limit = 900 }, { limit = 300 }, { no_open = true, limit = 2000 },
			{ set_limit = { 100000, 3 } }, { set_limit = { 500, 2 }, no_open = true } }) do
			same_as_stock({ HEADER, table.unpack(stanzas) }, opts)
			same_as_stock({ HEADER, MSG, "<message><a/><b/><c/><d/></message>", MSG }, opts)
		end
	end)

	it("handles reset() on a hibernating stream and stream restarts", function ()
		local auth = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAGE=</auth>"
		local chunks = { HEADER, auth, HEADER, MSG, "<iq type='set' id='b'/>", "</stream:stream>" }
		same_as_stock(chunks, { reset_after = "auth" })
		same_as_stock(chunks, { finish = true })
		same_as_stock({ HEADER, MSG }, { finish = true })
		-- reset() straight on a sleeping stream, then a new stream
		local rec = open()
		assert(rec.stream:feed(HEADER))
		brisk.hibernate(0)
		assert.is_true(mem(rec).hibernating)
		rec.restart()
		assert.is_false(mem(rec).hibernating)
		assert.equal(0, mem(rec).buffers) -- the old header's copy is gone
		assert(rec.stream:feed(HEADER .. MSG))
		assert.equal(1, #rec.stanzas)
	end)

	it("behaves as stock after errors and raising callbacks", function ()
		same_as_stock({ HEADER, MSG, "</wrong>", MSG, "" }, {})
		same_as_stock({ HEADER, MSG, MSG, MSG, MSG }, { raise_at = 2 })
		same_as_stock({ HEADER, MSG, "<!-- c -->", MSG }, {})
		same_as_stock({ HEADER, MSG, "<stream:error><x/></stream:error>", MSG }, {})
		same_as_stock({ HEADER, "<foo/>", MSG, "<bar xmlns='urn:x'/>", MSG }, {})
		-- hibernate() called from inside a callback leaves the stream being fed alone
		local rec
		rec = open({ on_stanza = function ()
			local n = brisk.hibernate(0)
			assert.is_false(mem(rec).hibernating)
			return n
		end })
		assert(rec.stream:feed(HEADER))
		assert(rec.stream:feed(MSG .. MSG))
		assert.equal(2, #rec.stanzas)
	end)

	it("hibernates through hibernate(idle) only streams idle that long", function ()
		local a, b = open(), open()
		assert(a.stream:feed(HEADER))
		assert(b.stream:feed(HEADER))
		assert(b.stream:feed(MSG:sub(1, 20))) -- b is inside a stanza
		assert.equal(0, (brisk.hibernate(30)))
		assert.is_false(mem(a).hibernating)
		assert.has_error(function () brisk.hibernate(-1) end)
		require "socket".sleep(1.2) -- (hibernate's clock is monotonic, with fractions of seconds)
		local n, hibernating, streams = brisk.hibernate(1)
		assert.truthy(n >= 1)
		assert.truthy(hibernating >= 1 and streams >= 2)
		assert.is_true(mem(a).hibernating)
		assert.is_false(mem(b).hibernating)
		-- a feed makes it young again
		assert(a.stream:feed(MSG))
		assert.equal(0, select(1, brisk.hibernate(1)) - (mem(a).hibernating and 1 or 0))
		assert.is_false(mem(a).hibernating)
	end)

	it("counts what it freed until release_memory() hands free pages back", function ()
		-- the collector would free other specs' streams in between, adding to the count
		collectgarbage()
		collectgarbage("stop")
		finally(function () collectgarbage("restart") end)
		local released = brisk.release_memory()
		assert.truthy(released == true or released == false) -- glibc: malloc_trim's answer
		assert.equal(0, select(4, brisk.hibernate(30)))
		local a = open()
		assert(a.stream:feed(HEADER))
		local held = mem(a).bytes
		assert.truthy(held > 8192)
		local n, _, _, freed = brisk.hibernate(0)
		assert.truthy(n >= 1)
		-- the parser's slab at least, less what the hibernating stream keeps
		assert.truthy(freed >= held - mem(a).bytes, freed)
		-- waking allocates, it frees nothing: the count stays
		assert(a.stream:feed(MSG))
		assert.equal(freed, select(4, brisk.hibernate(30)))
		brisk.release_memory()
		assert.equal(0, select(4, brisk.hibernate(30)))
	end)

	it("frees a hibernating stream when it is collected", function ()
		collectgarbage()
		collectgarbage()
		local before = brisk.memory()
		local rec = open()
		assert(rec.stream:feed(HEADER))
		brisk.hibernate(0)
		assert.equal(before.hibernating + 1, brisk.memory().hibernating)
		rec = nil
		collectgarbage()
		collectgarbage()
		assert.same(before, brisk.memory())
	end)

	it("fails a wake that runs out of memory as expat fails, until reset()", function ()
		local woke, failed = false, 0
		for k = 1, 200 do
			local rec = open()
			assert(rec.stream:feed(HEADER))
			brisk.hibernate(0)
			local asleep = mem(rec).bytes
			fail_alloc(k)
			local done, ok, err = pcall(rec.stream.feed, rec.stream, MSG)
			local left = fail_alloc(0)
			if left > 0 then -- the k-th allocation was never made: everything succeeded
				assert.truthy(done and ok, err)
				assert.equal(1, #rec.stanzas)
				woke = true
				break
			end
			if not done then
				-- woke, then Brisk's own text buffer could not grow (an
				-- internal error: the stream is unusable until reset())
				assert.matches("not enough memory", ok)
				assert.is_false(mem(rec).hibernating)
			elseif mem(rec).hibernating then
				-- waking failed: nothing of the new parser is left, and every
				-- feed fails the same way until reset()
				failed = failed + 1
				assert.same({ nil, "out of memory" }, { ok, err })
				assert.equal(asleep, mem(rec).bytes)
				assert.same({ nil, "out of memory" }, { rec.stream:feed(MSG) })
				assert.same({ nil, "out of memory" }, { rec.stream:feed("") })
			end
			rec.restart()
			assert(rec.stream:feed(HEADER .. MSG))
			assert.truthy(#rec.stanzas >= 1)
		end
		assert.is_true(woke)
		assert.truthy(failed >= 10, failed) -- every allocation of a wake failed once
	end)

	it("survives running out of memory at every allocation of a parse", function ()
		collectgarbage()
		collectgarbage()
		local before = brisk.memory()
		local data = HEADER .. MSG .. "<message><body>" .. ("z"):rep(3000) .. "</body><x xmlns='urn:x' a='1'/></message>"
		for k = 1, 80 do
			local rec = open()
			fail_alloc(k)
			local done, ok, err = pcall(rec.stream.feed, rec.stream, data)
			fail_alloc(0)
			if done then
				if not ok then
					-- expat ran out of memory: final until reset()
					assert.equal("out of memory", err)
					assert.same({ nil, "out of memory" }, { rec.stream:feed(MSG) })
				end
				brisk.hibernate(0)
				pcall(rec.stream.feed, rec.stream, MSG)
			end
			rec.restart()
			assert(rec.stream:feed(HEADER .. MSG))
		end
		collectgarbage()
		collectgarbage()
		assert.same(before, brisk.memory())
	end)
end)
