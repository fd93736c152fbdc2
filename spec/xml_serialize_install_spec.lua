-- brisk.patch's install of brisk.xml's serializer and its undo: what is
-- patched in util.stanza, that Prosody-style use of the patched stanza_mt
-- matches stock byte for byte, and that undo restores stock exactly. Every
-- test undoes its install, since all specs share one Lua state.
local st = require "util.stanza"
local bx = require "brisk.xml"
local patch = require "brisk.patch"
-- Brisk's functions for this util.stanza, as the install puts them in place
local functions = require "brisk.patch.stanza".functions(bx)

-- What mod_brisk_xml installs (only the serializer with parse = false).
local function install(names)
	return (patch.install(names or { "stanza", "xmppstream" }, { rebind = false }))
end

local mt = st.stanza_mt

-- A copy of every field of stanza_mt and util.stanza.
local function snapshot()
	local a, b = {}, {}
	for k, v in pairs(mt) do a[k] = v end
	for k, v in pairs(st) do b[k] = v end
	return { mt = a, st = b }
end

local function assert_same_snapshot(before, after)
	for _, part in ipairs({ "mt", "st" }) do
		for k, v in pairs(before[part]) do
			assert.equal(v, after[part][k], part .. "." .. tostring(k) .. " not restored")
		end
		for k in pairs(after[part]) do
			assert.is_not_nil(before[part][k], part .. "." .. tostring(k) .. " left behind")
		end
	end
end

local function sample()
	return st.message({ to = "juliet@example.com", from = "romeo@example.net/orchard", type = "chat",
		id = "x'<>&\"" }, "Wherefore <art> thou & 'why'")
		:tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up()
		:tag("x", { xmlns = "jabber:client" }):tag("y"):text("é🎉"):up():up()
end

describe("brisk.patch's stanza serializer install", function ()
	local stock_tostring, stock_top_tag, stock_escape = mt.__tostring, mt.top_tag, st.xml_escape

	it("patches __tostring, top_tag and xml_escape, and undo restores stock exactly", function ()
		local before = snapshot()
		local undo = install()
		finally(function () undo() end)
		assert.are_not.equal(stock_tostring, mt.__tostring)
		assert.are_not.equal(stock_top_tag, mt.top_tag)
		assert.equal(bx.xml_escape, st.xml_escape)
		assert.equal("C", debug.getinfo(mt.__tostring, "S").what)
		assert.equal("C", debug.getinfo(mt.top_tag, "S").what)
		undo()
		assert_same_snapshot(before, snapshot())
		undo() -- a second undo changes nothing
		assert_same_snapshot(before, snapshot())
	end)

	it("serializes like stock through tostring(), methods and pretty printing", function ()
		local s = sample()
		local want, want_top = stock_tostring(s), stock_top_tag(s)
		local want_pretty, want_pretty_top = s:pretty_print(), s:pretty_top_tag()
		local want_indent = stock_tostring(s:indent())
		local undo = install()
		finally(function () undo() end)
		assert.equal(want, tostring(s))
		assert.equal(want, s:__tostring())
		assert.equal(want_top, s:top_tag())
		assert.equal(want_pretty, s:pretty_print())
		assert.equal(want_pretty_top, s:pretty_top_tag())
		assert.equal(want_indent, tostring(s:indent()))
		assert.equal(stock_escape("a<'b'>&\"c\""), st.xml_escape("a<'b'>&\"c\""))
		-- The way Prosody's sessions send: tostring() of a stanza whose
		-- children were changed in place by other modules.
		s:maptags(function (c) if c.name == "active" then return nil end return c end)
		s.tags[#s.tags + 1] = st.stanza("not-a-child")
		undo()
		local want2 = tostring(s)
		undo = install()
		assert.equal(want2, tostring(s))
	end)

	it("raises stock's own errors, message and location included", function ()
		local undo = install()
		finally(function () undo() end)
		local s = st.stanza("a"); s[1] = 42
		local ok, err = pcall(tostring, s)
		assert.is_false(ok)
		local ok2, err2 = pcall(stock_tostring, s)
		assert.is_false(ok2)
		assert.equal(err2, err)
		ok, err = pcall(mt.top_tag, {})
		ok2, err2 = pcall(stock_top_tag, {})
		assert.is_false(ok)
		assert.equal(err2, err)
	end)

	it("installs once when installed twice; the first undo restores stock", function ()
		local before = snapshot()
		local undo1 = install()
		local patched = mt.__tostring
		local undo2 = install()
		finally(function () undo1(); undo2() end)
		assert.equal(patched, mt.__tostring)
		undo2()
		assert.equal(patched, mt.__tostring)
		undo1()
		assert_same_snapshot(before, snapshot())
		-- and in the other order
		undo1 = install()
		undo2 = install()
		undo1()
		assert_same_snapshot(before, snapshot())
		undo2()
		assert_same_snapshot(before, snapshot())
	end)

	it("leaves someone else's later patch alone", function ()
		local undo = install()
		finally(function () undo() end)
		local theirs = function (t) return "theirs" .. stock_tostring(t) end
		mt.__tostring = theirs
		undo()
		assert.equal(theirs, mt.__tostring)
		assert.equal(stock_top_tag, mt.top_tag)
		mt.__tostring = stock_tostring
	end)

	it("leaves util.stanza alone with serialize = false", function ()
		local before = snapshot()
		local undo = install({ "xmppstream" })
		finally(function () undo() end)
		assert_same_snapshot(before, snapshot())
		undo()
		assert_same_snapshot(before, snapshot())
	end)

	it("falls back to stock's own functions, never to itself, also while installed", function ()
		local undo = install()
		finally(function () undo() end)
		local s = st.stanza("a"); s[1] = true
		local _, err = pcall(functions.__tostring, s)
		local _, err2 = pcall(stock_tostring, s)
		assert.equal(err2, err)
		assert.equal(stock_top_tag(sample()), functions.top_tag(sample()))
	end)
end)
