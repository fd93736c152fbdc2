-- brisk.xml's parser API against util.xmppstream's: the stream object's
-- shape, session.open_stream's output, set_session, set_stanza_size_limit,
-- the fallback to stock, the exports, install() and its undo.
local harness = require "spec.fixtures.xml.harness"
local st = require "util.stanza"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"

local HEADER = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"

local function callbacks(log)
	return {
		default_ns = "jabber:client",
		streamopened = function (s, attr) log[#log + 1] = { "open", s, attr }; s.notopen = nil end,
		handlestanza = function (s, stanza) log[#log + 1] = { "stanza", s, stanza } end,
		error = function (s, e) log[#log + 1] = { "error", s, e } end,
	}
end

describe("brisk.xml.new", function ()
	it("returns a stream object shaped like stock's", function ()
		local a = stock.new({}, callbacks({}))
		local b = brisk.new({}, callbacks({}))
		assert.equal("table", type(b))
		local ka, kb = {}, {}
		for k, v in pairs(a) do ka[#ka + 1] = k .. ":" .. type(v) end
		for k, v in pairs(b) do kb[#kb + 1] = k .. ":" .. type(v) end
		table.sort(ka)
		table.sort(kb)
		assert.same(ka, kb)
		assert.is_nil(getmetatable(b))
	end)

	it("sets session.open_stream, which sends what stock's sends", function ()
		local variants = {
			{ {}, { "example.com" } },
			{ { version = 1, streamid = "abc", host = "h.example" }, {} },
			{ { version = 0, streamid = false }, { "f", "t" } },
			{ { version = false, host = "h" }, { nil, "to.example" } },
			{ { version = 1, stream_attrs = function (_, from, to, attr) attr.extra = (from or "") .. (to or ""); attr.id = nil end }, { "a", "b" } },
			{ { sends2s = true, host = "s2s.example" }, { nil, "remote.example" } },
		}
		for i, v in ipairs(variants) do
			local out = {}
			local function session()
				local s = {}
				for k, val in pairs(v[1]) do s[k] = val end
				local function send(data) out[#out + 1] = data end
				if s.sends2s then s.sends2s = send else s.send = send end
				return s
			end
			for _, profile in ipairs({ "c2s", "s2s", "nodefault" }) do
				local cbs = {}
				for k, val in pairs(harness.profiles[profile]) do cbs[k] = val end
				cbs.handlestanza, cbs.error = function () end, function () end
				local sa, sb = session(), session()
				stock.new(sa, cbs)
				brisk.new(sb, cbs)
				out = {}
				local oka, ra = pcall(sa.open_stream, sa, v[2][1], v[2][2])
				local okb, rb = pcall(sb.open_stream, sb, v[2][1], v[2][2])
				assert.equal(oka, okb)
				assert.equal(ra, rb) -- true, or the same error from util.stanza
				-- attribute order follows the same table construction
				assert.equal(out[1], out[2], "variant " .. i .. " " .. profile)
			end
		end
	end)

	it("delivers to the session given by set_session", function ()
		local logs = { {}, {} }
		local firsts, seconds = { { notopen = true }, { notopen = true } }, { { name = "s1" }, { name = "s2" } }
		for i, new in ipairs({ stock.new, brisk.new }) do
			local stream = new(firsts[i], callbacks(logs[i]))
			stream:feed(HEADER .. "<message/>")
			stream:set_session(seconds[i])
			stream:feed("<presence/>")
			stream.set_session(nil, firsts[i]) -- stock ignores its first argument
			stream:feed("<iq/>")
		end
		for i = 1, 2 do
			assert.equal(firsts[i], logs[i][2][2])
			assert.equal(seconds[i], logs[i][3][2])
			assert.equal(firsts[i], logs[i][4][2])
		end
	end)

	it("changes limits with set_stanza_size_limit as stock does", function ()
		local data = HEADER .. "<message><body>" .. ("z"):rep(300) .. "</body></message>"
		for _, limit in ipairs({ { 100 }, { 100000, 2 }, { 100000, 5 }, { 100000 } }) do
			local a = harness.run(stock.new, { data:sub(1, 200), data:sub(201) }, { set_limit = limit })
			local b = harness.run(brisk.new, { data:sub(1, 200), data:sub(201) }, { set_limit = limit })
			assert.is_nil(harness.diff(a, b))
		end
		-- a nil limit makes the next feed fail in both (stock compares nil)
		for _, new in ipairs({ stock.new, brisk.new }) do
			local stream = new({ notopen = true }, callbacks({}))
			stream:set_stanza_size_limit(nil)
			local ok, err = pcall(stream.feed, stream, HEADER)
			assert.is_false(ok)
			assert.matches("attempt to compare", err)
		end
	end)

	it("returns what stock's feed returns", function ()
		for _, input in ipairs({ HEADER, "<bad", "</x>", "" }) do
			local ra = table.pack(stock.new({ notopen = true }, callbacks({})):feed(input))
			local rb = table.pack(brisk.new({ notopen = true }, callbacks({})):feed(input))
			assert.equal(ra.n, rb.n)
			assert.equal(type(ra[1]), type(rb[1]))
			assert.equal(ra[2], rb[2])
		end
		assert.has_error(function () brisk.new({}, callbacks({})):feed({}) end)
	end)

	it("falls back to stock for streams without error or handlestanza callbacks", function ()
		for _, cbs in ipairs({ { handlestanza = function () end }, { error = function () end }, {} }) do
			local a = stock.new({ notopen = true }, cbs)
			local b = brisk.new({ notopen = true }, cbs)
			-- stock's raising default error handler, message included
			local oka, ea = pcall(a.feed, a, "<notstream/>")
			local okb, eb = pcall(b.feed, b, "<notstream/>")
			assert.equal(oka, okb)
			if oka then assert.equal(type(ea), type(eb)) else assert.equal(ea, eb) end
		end
		assert.has_error(function () brisk.new({}, nil) end)
	end)

	it("exports stock's helpers", function ()
		assert.equal(stock.ns_separator, brisk.ns_separator)
		assert.equal(stock.ns_pattern, brisk.ns_pattern)
		assert.equal(stock.new_sax_handlers, brisk.new_sax_handlers)
	end)

	it("offers libexpat's no-op parse for benchmarks", function ()
		assert.same({ true, nil }, { brisk._expat_noop_parse("<a><b/>text</a>") })
		assert.same({ true, nil }, { brisk._expat_noop_parse({ "<a><b", "/>text</a>" }) })
		local ok, err = brisk._expat_noop_parse("<a></b>")
		assert.is_nil(ok)
		assert.equal("mismatched tag", err)
		assert.has_error(function () brisk._expat_noop_parse({ "<a>", {} }) end)
	end)
end)

describe("brisk.xml.install", function ()
	it("patches util.xmppstream.new and undoes it", function ()
		local original = stock.new
		local undo, what = brisk.install({ serialize = false })
		assert.equal(brisk.new, stock.new)
		assert.same({ "util.xmppstream.new" }, what)
		-- code that looks the function up now gets Brisk's
		local log = {}
		local stream = require "util.xmppstream".new({ notopen = true }, callbacks(log))
		stream:feed(HEADER .. "<message/>")
		assert.equal(st.stanza_mt, getmetatable(log[2][3]))
		undo()
		assert.equal(original, stock.new)
		undo() -- twice is harmless
		assert.equal(original, stock.new)
	end)

	it("leaves util.xmppstream alone with parse = false", function ()
		local original = stock.new
		local undo, what = brisk.install({ parse = false, serialize = false })
		assert.equal(original, stock.new)
		assert.same({}, what)
		undo()
	end)

	it("patches both names of util.xmppstream", function ()
		local original = stock.new
		local other = { new = function () end }
		package.loaded["prosody.util.xmppstream"] = other
		local other_new = other.new
		local undo = brisk.install({ serialize = false })
		assert.equal(brisk.new, stock.new)
		assert.equal(brisk.new, other.new)
		undo()
		assert.equal(original, stock.new)
		assert.equal(other_new, other.new)
		package.loaded["prosody.util.xmppstream"] = stock
		undo = brisk.install({ serialize = false })
		assert.equal(brisk.new, stock.new)
		undo()
		assert.equal(original, stock.new)
		package.loaded["prosody.util.xmppstream"] = nil
	end)

	it("patches once when installed twice, and leaves later patches alone", function ()
		local original = stock.new
		local undo1 = brisk.install({ serialize = false })
		local undo2, what2 = brisk.install({ serialize = false })
		assert.same({}, what2)
		undo2()
		assert.equal(brisk.new, stock.new)
		undo1()
		assert.equal(original, stock.new)
		local undo = brisk.install({ serialize = false })
		local someone_else = function () end
		stock.new = someone_else
		undo()
		assert.equal(someone_else, stock.new)
		stock.new = original
	end)

	it("rejects bad options", function ()
		assert.has_error(function () brisk.install("yes") end)
	end)
end)
