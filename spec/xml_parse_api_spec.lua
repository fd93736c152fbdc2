-- brisk.xml's parser API against util.xmppstream's: the stream object's
-- shape, session.open_stream's output, set_session, set_stanza_size_limit,
-- the fallback to stock, the C core's exports, and brisk.patch's install
-- of util.xmppstream.new, its rebinding and its undo.
local harness = require "spec.helpers.xml_harness"
local st = require "util.stanza"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"
-- Brisk's util.xmppstream.new for this Prosody, as brisk.patch installs it
local brisk_new = require "brisk.patch.xmppstream".new(brisk)

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
		local b = brisk_new({}, callbacks({}))
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
				brisk_new(sb, cbs)
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
		for i, new in ipairs({ stock.new, brisk_new }) do
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
			local b = harness.run(brisk_new, { data:sub(1, 200), data:sub(201) }, { set_limit = limit })
			assert.is_nil(harness.diff(a, b))
		end
		-- a nil limit makes the next feed fail in both (stock compares nil)
		for _, new in ipairs({ stock.new, brisk_new }) do
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
			local rb = table.pack(brisk_new({ notopen = true }, callbacks({})):feed(input))
			assert.equal(ra.n, rb.n)
			assert.equal(type(ra[1]), type(rb[1]))
			assert.equal(ra[2], rb[2])
		end
		assert.has_error(function () brisk_new({}, callbacks({})):feed({}) end)
	end)

	it("falls back to stock for streams without error or handlestanza callbacks", function ()
		for _, cbs in ipairs({ { handlestanza = function () end }, { error = function () end }, {} }) do
			local a = stock.new({ notopen = true }, cbs)
			local b = brisk_new({ notopen = true }, cbs)
			-- stock's raising default error handler, message included
			local oka, ea = pcall(a.feed, a, "<notstream/>")
			local okb, eb = pcall(b.feed, b, "<notstream/>")
			assert.equal(oka, okb)
			if oka then assert.equal(type(ea), type(eb)) else assert.equal(ea, eb) end
		end
		assert.has_error(function () brisk_new({}, nil) end)
	end)

	it("is made by brisk.xml.parser, which brisk.xml exports with its other factories", function ()
		assert.is_function(brisk.parser)
		local keys = {}
		for k in pairs(brisk) do keys[#keys + 1] = k end
		table.sort(keys)
		assert.same({ "_VERSION", "hibernate", "memory", "parser", "release_memory", "serializer", "set_limits", "xml_escape" }, keys)
		-- a C constructor per call, sharing the module's state
		assert.is_function(brisk.parser(st.stanza_mt, false))
		assert.has_error(function () brisk.parser(nil) end)
		-- the C core itself refuses streams it cannot serve; brisk.patch
		-- sends those to stock
		local c_new = brisk.parser(st.stanza_mt, false)
		assert.has_error(function () c_new({}, {}) end, "brisk.xml: stream needs error and handlestanza callbacks")
	end)

	it("loads without requiring anything (Prosody's libraries come from the Lua side)", function ()
		local loaded = {}
		local real = require
		local so = assert(package.searchpath("brisk.xml", package.cpath))
		_G.require = function (name) loaded[#loaded + 1] = name; return real(name) end
		local ok, err = pcall(function () return assert(package.loadlib(so, "luaopen_brisk_xml"))() end)
		_G.require = real
		assert(ok, err)
		assert.same({}, loaded)
	end)
end)

describe("brisk.patch's xmppstream", function ()
	local patch = require "brisk.patch"
	local function install() return patch.install({ "xmppstream" }, { rebind = false }) end

	it("patches util.xmppstream.new and undoes it", function ()
		local original = stock.new
		local undo, report = install()
		assert.equal(brisk_new, stock.new)
		assert.same({ "util.xmppstream.new" }, report.replaced)
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

	it("patches once when installed twice, and leaves later patches alone", function ()
		local original = stock.new
		local undo1 = install()
		local undo2, report2 = install()
		assert.same({}, report2.replaced)
		undo2()
		assert.equal(brisk_new, stock.new)
		undo1()
		assert.equal(original, stock.new)
		local undo = install()
		local someone_else = function () end
		stock.new = someone_else
		undo()
		assert.equal(someone_else, stock.new)
		stock.new = original
	end)

	it("rebinds copies taken before it, and back", function ()
		local original = stock.new
		local holder = { new = original }
		local function user() return holder end
		local copy = original
		local function uses_copy() return copy end
		-- reachable as a library is (the walk starts from package.loaded)
		package.loaded["brisk_spec_holder"] = { uses_copy = uses_copy, user = user }
		finally(function () package.loaded["brisk_spec_holder"] = nil end)
		local undo, report = patch.install({ "xmppstream" })
		assert.equal(brisk_new, uses_copy())
		assert.equal(brisk_new, stock.new)
		assert.truthy(report.rebound >= 1)
		undo()
		assert.equal(original, uses_copy())
		assert.equal(original, stock.new)
		assert.equal(original, user().new) -- table fields are not rebound
	end)

	it("rejects a name it does not know", function ()
		assert.has_error(function () patch.install({ "nosuchlibrary" }) end)
	end)
end)
