-- Hostile input for brisk.xml's parser: deep nesting, huge attribute counts,
-- invalid and split UTF-8, entity tricks, oversized stanzas, byte-at-a-time
-- feeding, abuse of the API from callbacks. Never a crash or a hang, memory
-- stays bounded, errors are explicit; where stock has an answer (everything
-- but Brisk's own depth and attribute limits) Brisk gives the same one, also
-- with its streams hibernating at every feed end where they can.
local harness = require "spec.helpers.xml_harness"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"
-- Brisk's util.xmppstream.new for this Prosody, as brisk.patch installs it
local brisk_new = require "brisk.patch.xmppstream".new(brisk)

local HEADER = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en'>"

local function same_as_stock(chunks, opts)
	local a = harness.run(stock.new, chunks, opts)
	local b = harness.run(brisk_new, chunks, opts)
	local d = harness.diff(a, b)
	assert(d == nil, d)
	d = harness.diff(a, (harness.run_hibernating(brisk, chunks, opts, "eager")))
	assert(d == nil, d and "hibernating: " .. d)
	return harness.lines(b)
end

local function find(lines, pattern)
	for _, l in ipairs(lines) do
		if l:match(pattern) then return l end
	end
end

-- A stream with callbacks that record errors and stanzas only.
local function recorder(limit)
	local rec = { errors = {}, stanzas = 0 }
	local session = { notopen = true }
	rec.stream = brisk_new(session, {
		default_ns = "jabber:client",
		streamopened = function (s) s.notopen = nil end,
		handlestanza = function () rec.stanzas = rec.stanzas + 1 end,
		error = function (_, e, a, b) rec.errors[#rec.errors + 1] = { e, a, b } end,
	}, limit)
	rec.stream:feed(HEADER)
	return rec
end

local function kb() return collectgarbage("count") end

describe("brisk.xml parser under hostile input", function ()
	local saved
	before_each(function () saved = brisk.set_limits() end)
	after_each(function () brisk.set_limits(saved) end)

	it("stops a 1 MB stanza of nested tags at an operator's depth limit, in bounded memory", function ()
		brisk.set_limits({ max_depth = 256 })
		local deep = "<message>" .. ("<a>"):rep(350000) -- about 1 MB
		for _, chunked in ipairs({ false, true }) do
			collectgarbage()
			local before = kb()
			local rec = recorder(2 * 1024 * 1024)
			local ok, err
			if chunked then
				for i = 1, #deep, 4096 do
					ok, err = rec.stream:feed(deep:sub(i, i + 4095))
					if not ok then break end
				end
			else
				ok, err = rec.stream:feed(deep)
			end
			assert.is_nil(ok)
			assert.equal("parsing aborted", err)
			assert.same({ "parse-error", "resource-constraint", "Stanza nesting too deep" }, rec.errors[1])
			-- further input is refused, not parsed
			assert.same({ nil, "parsing finished" }, { rec.stream:feed("<b/>") })
			collectgarbage()
			assert.truthy(kb() - before < 2048, "memory grew by " .. (kb() - before) .. " KB")
		end
	end)

	it("has no depth or attribute limit by default, as stock: the size limit bounds a nested stanza", function ()
		assert.same({ max_depth = math.maxinteger, max_attributes = math.maxinteger, hibernate_eagerly = false },
			brisk.set_limits())
		local deep = "<message>" .. ("<a>"):rep(100000) -- 300 KB, over c2s's 256 KB
		local chunks = { HEADER }
		for i = 1, #deep, 4096 do chunks[#chunks + 1] = deep:sub(i, i + 4095) end
		-- (compared without same_as_stock's readable lines: dumping a stanza
		-- this deep, children reachable twice, would take forever)
		local function same_deep(input, opts)
			local a = harness.run(stock.new, input, opts)
			local d = harness.diff(a, harness.run(brisk_new, input, opts))
				or harness.diff(a, (harness.run_hibernating(brisk, input, opts, "eager")))
			assert(d == nil, d)
		end
		same_deep(chunks, { limit = 256 * 1024 })
		-- inside the limit, 20k levels are parsed as stock parses them
		same_deep({ HEADER, "<message>" .. ("<a>"):rep(20000) .. ("</a>"):rep(20000) .. "</message>" },
			{ limit = 1024 * 1024 })
	end)

	it("applies set_limits to streams created afterwards", function ()
		brisk.set_limits({ max_depth = 3 })
		local rec = recorder()
		assert.truthy(rec.stream:feed("<message><a><b/></a></message>"))
		assert.equal(1, rec.stanzas)
		local ok, err = rec.stream:feed("<message><a><b><c/></b></a></message>")
		assert.is_nil(ok)
		assert.equal("parsing aborted", err)
		assert.equal("Stanza nesting too deep", rec.errors[1][3])
		assert.has_error(function () brisk.set_limits({ max_depth = 0 }) end)
		assert.has_error(function () brisk.set_limits({ max_attributes = "many" }) end)
		local old = brisk.set_limits({ max_attributes = 7 })
		assert.same({ max_depth = 3, max_attributes = math.maxinteger, hibernate_eagerly = false }, old)
		assert.has_error(function () brisk.set_limits({ hibernate_eagerly = 1 }) end)
	end)

	it("stops an element with a huge attribute count at an operator's limit", function ()
		local attrs = {}
		for i = 1, 5000 do attrs[i] = ("a%d='%d'"):format(i, i) end
		-- by default, as stock: all of them
		same_as_stock({ HEADER, "<message " .. table.concat(attrs, " ") .. "/>" }, { limit = 10 * 1024 * 1024 })
		brisk.set_limits({ max_attributes = 1024 })
		local rec = recorder(10 * 1024 * 1024)
		local ok, err = rec.stream:feed("<message " .. table.concat(attrs, " ") .. "/>")
		assert.is_nil(ok)
		assert.equal("parsing aborted", err)
		assert.same({ "parse-error", "resource-constraint", "Too many attributes" }, rec.errors[1])
		-- within the limit, the same as stock
		local few = {}
		for i = 1, 1000 do few[i] = ("a%d='%d'"):format(i, i) end
		same_as_stock({ HEADER, "<message " .. table.concat(few, " ") .. "/>" }, { limit = 10 * 1024 * 1024 })
	end)

	it("rejects invalid UTF-8 like stock", function ()
		for _, bad in ipairs({ "\255", "\192\128", "\237\160\128", "\244\144\128\128", "\195", "a\0b", "\239\191\190" }) do
			local lines = same_as_stock({ HEADER, "<message><body>" .. bad .. "</body></message>" }, {})
			assert.truthy(find(lines, "^feed 3:nil") or find(lines, "^stanza"), bad)
		end
	end)

	it("handles multibyte characters split across feeds like stock", function ()
		local text = "<message><body>é€𝄞日本🎉</body></message>"
		for i = 1, #text - 1 do
			local lines = same_as_stock({ HEADER, text:sub(1, i), text:sub(i + 1) }, {})
			assert.truthy(find(lines, "^stanza"), "split at " .. i)
		end
		-- and a multibyte character split in a truncated stream
		same_as_stock({ HEADER, "<message><body>\240\159" }, {})
	end)

	it("treats entity tricks like stock", function ()
		local cases = {
			"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]><lolz>&lol2;</lolz>",
			HEADER .. "<message><body>&lol;</body></message>",
			HEADER .. "<message><body>&#0;</body></message>",
			HEADER .. "<message><body>&#xD800;&#x110000;</body></message>",
			HEADER .. "<message><body>&#x1F600;&#65;&amp;amp;</body></message>",
			HEADER .. "<message><body>&amp</body></message>",
			HEADER .. "<!DOCTYPE x SYSTEM 'file:///etc/passwd'><message/>",
			"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" .. HEADER,
			HEADER .. "<message><![CDATA[<x>&amp;]]></message>",
			HEADER .. "<message><![CDATA[unterminated",
		}
		for _, c in ipairs(cases) do
			same_as_stock({ c }, {})
			same_as_stock({ c:sub(1, 20), c:sub(21) }, {})
		end
	end)

	it("reports stanza-too-large like stock and keeps memory bounded", function ()
		local big = HEADER .. "<message><body>" .. ("x"):rep(64 * 1024) .. "</body></message>"
		local chunks = {}
		for i = 1, #big, 1000 do chunks[#chunks + 1] = big:sub(i, i + 999) end
		local lines = same_as_stock(chunks, { limit = 10000 })
		assert.truthy(find(lines, "stanza%-too%-large"))
	end)

	it("parses a long stream fed one byte at a time", function ()
		local data = HEADER .. ("<message to='a@b'><body>é &amp; ü</body></message>"):rep(40) .. "</stream:stream>"
		local chunks = {}
		for i = 1, #data do chunks[i] = data:sub(i, i) end
		local lines = same_as_stock(chunks, {})
		local n = 0
		for _, l in ipairs(lines) do if l:match("^stanza") then n = n + 1 end end
		assert.equal(40, n)
	end)

	it("keeps memory flat on a long-lived stream", function ()
		local rec = recorder()
		local stanza = "<message to='a@b' id='x'><body>hello there</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
		local batch = stanza:rep(100)
		for _ = 1, 20 do rec.stream:feed(batch) end
		collectgarbage()
		local before = kb()
		for _ = 1, 200 do rec.stream:feed(batch) end
		collectgarbage()
		assert.equal(22000, rec.stanzas)
		assert.truthy(kb() - before < 256, "memory grew by " .. (kb() - before) .. " KB")
	end)

	it("frees dropped streams", function ()
		collectgarbage()
		local before = kb()
		for _ = 1, 2000 do
			local rec = recorder()
			rec.stream:feed("<message><body>" .. ("y"):rep(500))
		end
		collectgarbage()
		collectgarbage()
		assert.truthy(kb() - before < 512, "memory grew by " .. (kb() - before) .. " KB")
	end)

	it("refuses feed() from inside a callback, and stays usable", function ()
		local session = { notopen = true }
		local stream
		local seen = 0
		stream = brisk_new(session, {
			default_ns = "jabber:client",
			streamopened = function (s) s.notopen = nil end,
			handlestanza = function (_, st)
				seen = seen + 1
				if st.name == "message" then stream:feed("<iq/>") end
			end,
			error = function () end,
		})
		stream:feed(HEADER)
		local ok, err = pcall(stream.feed, stream, "<message/>")
		assert.is_false(ok)
		assert.matches("feed%(%) called from inside a stream callback", err)
		-- as in stock after a callback raised, the parser goes on (the
		-- unfinished <message/> stays open, so <presence/> nests in it)
		assert.truthy(stream:feed("<presence/>"))
		assert.truthy(stream:feed("<iq/>"))
		assert.equal(1, seen)
	end)

	it("passes a callback's error object through, like stock", function ()
		for _, at in ipairs({ 1, 2 }) do
			same_as_stock({ HEADER .. "<message/><presence/><iq type='get' id='1'/>", "<message/>" }, { raise_at = at })
		end
	end)

	it("survives resets from inside callbacks at every point", function ()
		local data = HEADER .. "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>" .. HEADER .. "<message/><auth/><presence/>"
		for i = 0, #data do
			same_as_stock({ data:sub(1, i), data:sub(i + 1) }, { reset_after = "auth" })
			same_as_stock({ data:sub(1, i), data:sub(i + 1) }, { reset_after = "auth", keep_notopen = true })
		end
	end)
end)
