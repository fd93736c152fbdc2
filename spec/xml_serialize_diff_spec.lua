-- Differential specs for brisk.xml's stanza serializer: stock util.stanza
-- and Brisk serialize the same stanzas in the same Lua state, and every
-- result (or error message) must be byte-identical.
--
-- Stanzas come from the parser corpus (parsed with stock util.xmppstream,
-- never the C parser), from a seeded random builder (BRISK_FUZZ_ITER sets
-- how many; default 1500), and from in-place edits of both.
local st = require "util.stanza"
local xmppstream = require "util.xmppstream"
local bx = require "brisk.xml"
-- Brisk's serializer for this util.stanza (not installed: both are called directly)
local brisk_fns = require "brisk.patch.stanza".functions(bx)

local stock_tostring = st.stanza_mt.__tostring
local stock_top_tag = st.stanza_mt.top_tag

local ITER = tonumber(os.getenv("BRISK_FUZZ_ITER")) or 1500

-- "ok\0<result>" or "err\0<message>": what a caller can observe.
local function outcome(f, s)
	local ok, res = pcall(f, s)
	if ok then return "ok\0" .. tostring(res) end
	return "err\0" .. tostring(res)
end

local function check(s, label)
	local a, b = outcome(stock_tostring, s), outcome(brisk_fns.__tostring, s)
	if a ~= b then
		error(("%s: tostring differs\n stock: %q\n brisk: %q"):format(label or "?", a, b), 2)
	end
	if getmetatable(s) == st.stanza_mt then
		local c, d = outcome(stock_top_tag, s), outcome(brisk_fns.top_tag, s)
		if c ~= d then
			error(("%s: top_tag differs\n stock: %q\n brisk: %q"):format(label or "?", c, d), 2)
		end
	end
	return a
end

-- Deterministic generator, independent of math.random's global state.
local function rng(seed)
	local x = seed * 2654435761 % 4294967296 + 1
	return function(n)
		x = (x * 1103515245 + 12345) % 2147483648
		return x % n + 1
	end
end

local function pick(r, list) return list[r(#list)] end

-- Parse a whole stream with stock util.xmppstream; returns its stanzas.
local function parse_stream(data, default_ns)
	local out = {}
	local session = { notopen = true }
	local cbs = {
		default_ns = default_ns,
		streamopened = function (s) s.notopen = nil end,
		handlestanza = function (_, stanza) out[#out + 1] = stanza end,
		error = function () end,
	}
	local stream = xmppstream.new(session, cbs)
	stream:feed(data)
	return out
end

-- The parser corpus, read by the differential harness.
local fixtures = require "spec.helpers.xml_harness".corpus

-- Random building blocks: names and text needing escaping, multibyte
-- UTF-8, namespaces that nest, repeat or change.
local names = { "message", "presence", "iq", "body", "x", "query", "item", "a", "b",
	"stream:error", "db:result", "foo-bar", "café", "日本", "é", "n1", "_u" }
local attr_names = { "to", "from", "id", "type", "xml:lang", "xmlns", "xmlns", "a", "b", "c",
	"d", "e", "f", "g", "h", "jid", "node", "ver", "ünï" }
local namespaces = { "jabber:client", "jabber:server", "urn:xmpp:receipts", "urn:x", "",
	"http://jabber.org/protocol/muc#user", "urn:ns'q\"<&>" }
local pieces = { "hello", " ", "\n", "\t", "<", ">", "&", "'", "\"", "&amp;", "]]>", "é",
	"日本語", "🎉", "Ελληνικά", "a", "b", "12", "\r", "x'y\"z", "" }

local function rand_text(r, n)
	local out = {}
	for i = 1, r(n) do out[i] = pick(r, pieces) end
	return table.concat(out)
end

local function rand_attrs(r, parent_ns)
	local attr = {}
	for _ = 1, r(9) - 1 do
		local k = pick(r, attr_names)
		if k == "xmlns" then
			-- Often the parent's namespace, to exercise the elision.
			attr.xmlns = (r(2) == 1 and parent_ns) or pick(r, namespaces)
		else
			attr[k] = rand_text(r, 3)
		end
	end
	return attr
end

-- Namespaced attributes, as the parser produces them ("ns\1name"); added
-- after the stanza is built, since st.stanza rejects such names.
local function add_ns_attrs(r, attr)
	if r(4) == 1 then
		for _ = 1, r(3) do
			attr[pick(r, namespaces) .. "\1" .. pick(r, { "a", "lang", "z", "q" })] = rand_text(r, 2)
		end
	end
end

local function rand_stanza(r, depth)
	local attr = rand_attrs(r, nil)
	local s = st.stanza(pick(r, names), attr)
	add_ns_attrs(r, attr)
	local function fill(ns, d)
		for _ = 1, r(5) - 1 do
			local k = r(4)
			if k == 1 then
				s:text(rand_text(r, 4))
			elseif d < depth then
				local a = rand_attrs(r, ns)
				s:tag(pick(r, names), a)
				add_ns_attrs(r, a)
				fill(a.xmlns or ns, d + 1)
				s:up()
			else
				s:tag(pick(r, names), rand_attrs(r, ns)):up()
			end
		end
	end
	fill(attr.xmlns, 1)
	return s:reset()
end

-- In-place edits other modules make to stanzas.
local function mutate(r, s)
	local function all_tags(t, acc)
		acc[#acc + 1] = t
		for _, c in ipairs(t.tags) do all_tags(c, acc) end
		return acc
	end
	local list = all_tags(s, {})
	local function edit(t, k)
		if k == 1 then
			t:maptags(function (c) if r(2) == 1 then return nil end return c end)
		elseif k == 2 then
			t:remove_children(t.tags[1] and t.tags[1].name, t.tags[1] and t.tags[1].attr.xmlns)
		elseif k == 3 then
			t:maptags(function (c) return st.clone(c) end)
		elseif k == 4 then
			t.attr[pick(r, attr_names)] = rand_text(r, 3)
		elseif k == 5 then
			t.attr[next(t.attr) or "x"] = nil
		elseif k == 6 then
			-- Direct edit: children changed without keeping tags in step.
			if #t > 0 then table.remove(t, r(#t)) end
		elseif k == 7 then
			t[#t + 1] = rand_text(r, 3)
		elseif k == 8 then
			t.attr.xmlns = pick(r, namespaces)
		elseif k == 9 then
			t:tag("added", { xmlns = pick(r, namespaces) }):text(rand_text(r, 2)):up()
		else
			local c = st.stanza(pick(r, names), rand_attrs(r, t.attr.xmlns))
			t:add_direct_child(c)
		end
	end
	for _ = 1, r(4) do
		-- util.stanza itself may refuse an edit of an already inconsistent
		-- stanza (maptags: "Invalid stanza state!"); that is not ours.
		pcall(edit, pick(r, list), r(10))
	end
	return s
end

describe("brisk.xml serializer (differential)", function ()
	it("is not installed while these specs compare", function ()
		-- (If an earlier spec left Brisk installed, these would compare
		-- Brisk with itself.)
		assert.equal("Lua", debug.getinfo(stock_tostring, "S").what)
		assert.equal("Lua", debug.getinfo(stock_top_tag, "S").what)
		assert.is_function(brisk_fns.__tostring)
		assert.is_function(brisk_fns.top_tag)
	end)

	it("matches stock on every stanza of the parser corpus", function ()
		local n = 0
		for _, fx in ipairs(fixtures()) do
			for _, ns in ipairs({ "jabber:client", "jabber:server" }) do
				for i, s in ipairs(parse_stream(fx.data, ns)) do
					check(s, fx.name .. "#" .. i)
					n = n + 1
				end
			end
		end
		assert.is_true(n > 0, "no stanza parsed from spec/fixtures/xml")
	end)

	it("matches stock on hand-built stanzas", function ()
		local s = st.message({ to = "juliet@example.com", from = "romeo@example.net/orchard", type = "chat",
			id = "a'b\"c<d>e&f" }, "Wherefore art thou? <3 & 'so' \"on\"")
			:tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up()
			:tag("x", { xmlns = "jabber:x:data", type = "form" })
				:tag("field", { var = "a" }):text_tag("value", "1"):up()
				:tag("field", { var = "b", ["urn:x\1lang"] = "en", ["urn:y\1q\1r"] = "z" }):up()
			:up()
			:tag("empty", {}):up()
			:text("tail")
		check(s, "message")
		check(st.iq({ type = "get", id = "1" }):query("jabber:iq:roster"), "iq")
		check(st.presence(), "presence")
		check(st.stanza("a", { xmlns = "u" }):tag("b", { xmlns = "u" }):tag("c", { xmlns = "v" })
			:tag("d", { xmlns = "u" }):up():up():up(), "elision")
		check(st.error_reply(st.message({ from = "a@b", to = "c@d", id = "x" }), "cancel",
			"item-not-found", "Gone <now>", "c@d"), "error_reply")
		local e = st.stanza("a"):text("")
		e:add_direct_child("")
		check(e, "empty text child")
		check(st.stanza("多"):text("🎉 Ελληνικά"), "multibyte")
	end)

	it("matches stock on random stanzas", function ()
		local r = rng(4)
		for i = 1, ITER do
			local s = rand_stanza(r, r(6))
			check(s, "random #" .. i)
		end
	end)

	it("matches stock on stanzas mutated after parsing or building", function ()
		local r = rng(5)
		local parsed = {}
		for _, fx in ipairs(fixtures()) do
			for _, s in ipairs(parse_stream(fx.data, "jabber:client")) do parsed[#parsed + 1] = s end
		end
		for i = 1, ITER do
			local s
			if #parsed > 0 and r(2) == 1 then
				s = st.clone(pick(r, parsed))
			else
				s = rand_stanza(r, r(4))
			end
			check(mutate(r, s), "mutated #" .. i)
		end
	end)

	it("keeps pairs order for large and edited attribute tables", function ()
		local r = rng(6)
		for i = 1, 200 do
			local attr = {}
			for j = 1, r(40) do attr["k" .. r(60)] = tostring(j) end
			for _ = 1, r(10) do attr["k" .. r(60)] = nil end
			if r(2) == 1 then attr.xmlns = "urn:x" end
			local s = st.stanza("a", attr):tag("b", attr):up()
			check(s, "attrs #" .. i)
		end
	end)

	it("top_tag matches stock when its order cache is hit, missed and evicted", function ()
		-- Attribute tables whose own pairs order differs from their copy's
		-- (keys deleted from a larger table, re-added, inserted in other
		-- orders), each top_tag'd several times: the first call learns the
		-- copy's order, later ones take it from the cache.
		local r = rng(7)
		local differ = 0
		for round = 1, 300 do
			local attr = {}
			local n = r(24)
			for i = 1, n do attr["k" .. r(40)] = "v" .. i end
			for _ = 1, r(n) do attr["k" .. r(40)] = nil end
			if r(3) == 1 then attr["k" .. r(40)] = "again" end
			if r(5) == 1 then attr["urn:x\1k" .. r(9)] = "ns" end
			if r(7) == 1 then attr.xmlns = "urn:top" end
			if r(11) == 1 then attr[r(3)] = "numkey" end
			local s = st.stanza("t"); s.attr = attr
			local copy = {}
			for k, v in pairs(attr) do copy[k] = v end
			local a, b = {}, {}
			for k in pairs(attr) do a[#a + 1] = tostring(k) end
			for k in pairs(copy) do b[#b + 1] = tostring(k) end
			if table.concat(a, ",") ~= table.concat(b, ",") then differ = differ + 1 end
			for i = 1, 3 do
				check(s, ("cache round %d call %d"):format(round, i))
				-- Same keys, other values: still this stanza's values.
				for k in pairs(attr) do attr[k] = "w" .. i .. round end
			end
		end
		assert.is_true(differ > 0, "no table iterated differently from its copy")
		-- Fresh key strings, dropped and collected, then other fresh keys
		-- (maybe at the same addresses): the cache keeps its keys alive, so
		-- no stale entry can match.
		for round = 1, 40 do
			local s = st.stanza("g")
			for i = 1, 1 + round % 9 do s.attr[("fresh%d_%d"):format(round, i)] = tostring(i) end
			check(s, "fresh keys " .. round)
			s = nil
			collectgarbage()
			collectgarbage()
		end
		-- More distinct sequences than the cache has ways, cycled twice.
		for pass = 1, 2 do
			for i = 1, 600 do
				local s = st.stanza("e", { a = "1", ["b" .. i] = "2", c = "3" })
				check(s, ("eviction pass %d seq %d"):format(pass, i))
			end
		end
		-- Keys too long to be kept in the cache, next to short ones.
		for n = 60, 70 do
			local s = st.stanza("l", { a = "1", [("k"):rep(n)] = "2", z = "3" })
			check(s, "key of " .. n .. " bytes")
			check(s, "key of " .. n .. " bytes again")
		end
		-- Up to and past the cache's key limit.
		for n = 10, 14 do
			local s = st.stanza("m")
			for i = 1, n do s.attr["a" .. i] = tostring(i) end
			check(s, n .. " keys")
			check(s, n .. " keys again")
		end
	end)

	it("serializes by the children array, whatever tags says", function ()
		local s = st.stanza("a"):tag("b"):up():text("t"):tag("c"):up()
		s.tags = {}
		check(s, "tags emptied")
		s.tags = nil
		check(s, "tags gone")
		local t = st.stanza("a"):tag("b"):up()
		t.tags[2] = st.stanza("ghost")
		check(t, "extra tag not in children")
	end)

	it("matches stock on odd but valid shapes", function ()
		local plain = { name = "plain", attr = { q = "1" }, "txt", { name = "in", attr = {} } }
		check(plain, "plain tables, no metatable")
		local s = st.stanza("a")
		s[1] = plain
		check(s, "plain child")
		check(setmetatable({ name = 5, attr = { [7] = 8.5, x = 3 } }, st.stanza_mt), "numbers")
		check(setmetatable({ name = 1.5, attr = {} , "x" }, st.stanza_mt), "float name")
		local viaindex = setmetatable({ attr = {} }, { __index = { name = "z" } })
		s = st.stanza("a"); s[1] = viaindex
		check(s, "name through __index")
		local lenmt = setmetatable({ name = "l", attr = {}, "a", "b", "c" }, { __len = function () return 2 end })
		s = st.stanza("a"); s[1] = lenmt
		check(s, "__len")
		local holes = st.stanza("h"); holes[1] = "a"; holes[3] = "c"
		check(holes, "hole")
		-- xmlns equal to the parent's, in a number form: elided or not as stock.
		s = st.stanza("a"); s.attr.xmlns = 1; s[1] = setmetatable({ name = "b", attr = { xmlns = 1.0 } }, st.stanza_mt)
		check(s, "numeric xmlns")
		-- An attr table with a metatable (stock's pairs/__index semantics).
		s = st.stanza("a"); s.attr = setmetatable({ x = "1" }, { __index = { xmlns = "u" } })
		s:tag("b", { xmlns = "u" }):up()
		check(s, "attr metatable")
		s = st.stanza("a"); s.attr = setmetatable({}, { __pairs = function ()
			return function (_, k) if not k then return "p", "v" end end, nil, nil end })
		check(s, "__pairs")
		-- A parent xmlns that is a table, equal to the child's by identity.
		local ns = {}
		s = st.stanza("a"); s.attr.xmlns = "u"; s[1] = setmetatable({ name = "b", attr = { xmlns = ns } }, st.stanza_mt)
		check(s, "table xmlns value")
		local p = setmetatable({ name = "p", attr = { xmlns = ns } }, st.stanza_mt)
		p[1] = setmetatable({ name = "c", attr = { xmlns = ns } }, st.stanza_mt)
		check(p, "table xmlns elided")
		-- Equal namespaces in distinct string objects (long strings are not
		-- interned): compared by content, as stock's == does.
		local long = ("urn:example:a-namespace-longer-than-forty-bytes:"):rep(2)
		local a1, a2 = long .. "x", long .. "x"
		s = st.stanza("a", { xmlns = a1 }):tag("b", { xmlns = a2 }):tag("c", { xmlns = long .. "y" })
			:tag("d", { xmlns = long .. "y" }):up():up():up()
		check(s, "long equal namespaces")
		-- A string and a number are never equal, whichever is the parent's.
		s = st.stanza("a", { xmlns = "1" }); s[1] = setmetatable({ name = "b", attr = { xmlns = 1 } }, st.stanza_mt)
		s[2] = setmetatable({ name = "c", attr = { xmlns = "1" } }, st.stanza_mt)
		s[1][1] = setmetatable({ name = "d", attr = { xmlns = "1" } }, st.stanza_mt)
		s[2][1] = setmetatable({ name = "e", attr = { xmlns = 1 } }, st.stanza_mt)
		check(s, "string and number xmlns")
		-- A namespace only on the grandparent: the child compares with nil.
		s = st.stanza("a", { xmlns = "u" }):tag("b"):tag("c", { xmlns = "u" }):up():up()
		check(s, "xmlns skips a level")
		-- #t from __len as a string or a float: stock's "len == 0" and for loop.
		for _, v in ipairs({ "0", "1", "2", " 2 ", "0x1", 0.0, 1.0, -1, "-1" }) do
			local e = setmetatable({ name = "x", attr = {}, "a", "b" }, { __len = function () return v end })
			s = st.stanza("a"); s[1] = e
			check(s, "__len returning " .. type(v) .. " " .. tostring(v))
		end
	end)

	it("matches stock at every length around the copy and scan boundaries", function ()
		-- Names, keys, values and text of 0 to 40 bytes, clean or with a
		-- byte to escape (or a namespace separator in a key) at the start,
		-- the middle or the end: the short-copy, word-scan and SSE paths.
		local function variants(n, special)
			local base = ("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"):sub(1, n)
			local list = { base }
			if n > 0 then
				for _, at in ipairs({ 1, (n + 1) // 2, n }) do
					list[#list + 1] = base:sub(1, at - 1) .. special .. base:sub(at + 1)
				end
			end
			return list
		end
		local count = 0
		for n = 0, 40 do
			for _, v in ipairs(variants(n, "&")) do
				for _, q in ipairs({ v, (v:gsub("&", "'")), (v:gsub("&", "<")) }) do
					local s = st.stanza(n > 0 and ("e"):rep(n) or "e", { v = q, x = "1" })
					s:text(q):tag("c", { [n > 0 and ("k"):rep(n) or "k"] = q }):text(q .. q):up()
					check(s, ("length %d %q"):format(n, q))
					count = count + 1
				end
			end
			for _, k in ipairs(variants(n, "\1")) do
				if k ~= "" then
					local s = st.stanza("a")
					s.attr[k] = "v" .. n
					s.attr["urn:x\1" .. k] = k
					check(s, ("key length %d %q"):format(n, k))
				end
			end
		end
		assert.is_true(count > 100)
		-- Every byte value, in the byte-loop, 4-7, 8-15 and 16-byte scans:
		-- only the five special ones are escaped.
		for b = 0, 255 do
			local c = string.char(b)
			for _, pad in ipairs({ { 0, 0 }, { 2, 2 }, { 5, 4 }, { 9, 11 }, { 20, 3 } }) do
				local v = ("a"):rep(pad[1]) .. c .. ("b"):rep(pad[2])
				-- Set directly: the builders refuse control bytes and bad UTF-8.
				local s = st.stanza("e"); s.attr.v = v; s[1] = v
				check(s, ("byte %d padded %d+%d"):format(b, pad[1], pad[2]))
			end
		end
	end)

	it("matches stock when stanza_mt, attr or children answer through metamethods", function ()
		local mt = st.stanza_mt
		-- stanza_mt gains an integer key: a hole in the children reads it.
		local ok, err = pcall(function ()
			mt[2] = "ghost"
			-- (A constructor sizes the array part so that #s is 3.)
			local s = setmetatable({ "a", nil, "c", name = "h", attr = {}, tags = {} }, mt)
			assert.equal("<h>aghostc</h>", check(s, "stanza_mt[2] through a hole"):sub(4))
			local p = st.stanza("p"):tag("q"):up()
			p[3] = "z"
			check(p, "stanza_mt[2] under an element")
		end)
		mt[2] = nil
		assert(ok, err)
		-- stanza_mt gains __len, name and attr defaults.
		ok, err = pcall(function ()
			mt.__len = function (t) return rawlen(t) > 0 and 1 or 0 end
			check(st.stanza("l"):text("one"):tag("two"):up(), "stanza_mt.__len")
		end)
		mt.__len = nil
		assert(ok, err)
		ok, err = pcall(function ()
			mt.attr = { shared = "yes" }
			mt.name = "dflt"
			local bare = setmetatable({}, mt)
			local s = st.stanza("a"); s[1] = bare; s[2] = setmetatable({ "t" }, mt)
			check(s, "stanza_mt name and attr defaults")
		end)
		mt.attr, mt.name = nil, nil
		assert(ok, err)
		-- A child whose name, attr and children all come from __index.
		local proto = { name = "proto", attr = { k = "v" }, "inherited text" }
		local child = setmetatable({}, { __index = proto, __len = function () return 1 end })
		local s = st.stanza("a"); s[1] = child
		check(s, "child through __index")
		-- Raw fields win over __index, which must not even be asked.
		local asked = 0
		local shadow = setmetatable({ name = "raw", attr = { a = "1" }, "text" },
			{ __index = function () asked = asked + 1; return "idx" end })
		s = st.stanza("a"); s[1] = shadow
		check(s, "raw fields before __index")
		assert.equal(0, asked)
		-- attr with a metatable but no metamethods that matter.
		s = st.stanza("a"); s.attr = setmetatable({ x = "1" }, {})
		check(s, "attr with an empty metatable")
		-- Stock's behaviour was not changed by any of this.
		assert.equal("<a x='1'/>", stock_tostring(s))
	end)

	it("raises stock's errors on malformed stanzas", function ()
		local cases = {
			function (s) s[1] = 5 end,
			function (s) s[1] = true end,
			function (s) s[1] = {} end,
			function (s) s[1] = { name = false } end,
			function (s) s[1] = function () end end,
			function (s) s[2] = "x" ; s[1] = nil end,
			function (s) s.attr = nil end,
			function (s) s.attr = "x" end,
			function (s) s.name = nil end,
			function (s) s.name = {} end,
			function (s) s.attr.x = {} end,
			function (s) s.attr.x = true end,
			function (s) s.attr["u\1x"] = {} end,
			function (s) s.attr[true] = "x" end,
			function (s) s.attr[{}] = "x" end,
			function (s) s:tag("b"); s.tags[1].attr = nil end,
			function (s) s:tag("b"); s.tags[1].attr.v = false end,
			function (s) s:tag("b"):tag("c"); s.tags[1].tags[1].name = true end,
			function (s) s[1] = { name = "x" } end,
			function (s) s[1] = setmetatable({ name = "x", attr = {} }, { __len = function () return "n" end }) end,
			function (s) s[1] = setmetatable({ name = "x", attr = {} }, { __len = function () return 1.5 end }) end,
		}
		for i, f in ipairs(cases) do
			local s = st.stanza("a", { id = "1" })
			f(s)
			local res = check(s, "malformed #" .. i)
			if i <= 5 then assert.truthy(res:match("^err"), "case " .. i .. " should fail") end
		end
		check("not a table", "string")
		check(nil, "nil")
		check(42, "number")
		assert.equal(outcome(stock_top_tag, {}), outcome(brisk_fns.top_tag, {}))
		assert.equal(outcome(stock_top_tag, nil), outcome(brisk_fns.top_tag, nil))
	end)

	it("handles deep nesting without using the C stack", function ()
		local function chain(depth)
			local root = setmetatable({ name = "d", attr = {} }, st.stanza_mt)
			local t = root
			for _ = 2, depth do
				local c = setmetatable({ name = "d", attr = {} }, st.stanza_mt)
				t[1] = c
				t = c
			end
			return root
		end
		local s = chain(1000)
		check(s, "depth 1000")
		-- Deeper than stock's Lua stack allows: Brisk still serializes it.
		local n = 120000
		local out = brisk_fns.__tostring(chain(n))
		assert.equal(("<d>"):rep(n - 1) .. "<d/>" .. ("</d>"):rep(n - 1), out)
		-- Deeper than Brisk's own stack: a Lua error, never a crash.
		local ok, err = pcall(brisk_fns.__tostring, chain(250000))
		assert.is_false(ok)
		assert.matches("nested too deeply", err)
	end)

	it("is re-entrant from metamethods", function ()
		local inner = st.stanza("inner", { k = "v" }):text("x")
		local child = setmetatable({ attr = {} }, { __index = function (_, k)
			if k == "name" then return "n" .. #brisk_fns.__tostring(inner) end
		end })
		local s = st.stanza("a"); s[1] = child; s[2] = "t"
		check(s, "reentrant")
		-- An error thrown from inside the walk loses nothing afterwards.
		local bad = setmetatable({ attr = {} }, { __index = function () error("boom") end })
		local b = st.stanza("a"); b[1] = bad
		check(b, "error in __index")
		check(s, "after error")
	end)
end)
