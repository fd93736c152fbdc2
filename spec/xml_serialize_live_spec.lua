-- A live Prosody with mod_brisk_xml serializing: real clients exchange
-- stanzas that need escaping, carry namespaced attributes and nested
-- namespaces, and a probe module inside the server serializes every routed
-- stanza with a private, unpatched copy of stock util.stanza as well and
-- logs an error on any difference.
local prosody = require "spec.helpers.prosody"
local st = require "util.stanza"

-- The probe: loaded after mod_brisk_xml, it checks that __tostring really
-- is Brisk's C function, then compares C and stock output on each stanza.
local PROBE = [==[
local st = require "util.stanza";
local path = assert(package.searchpath("util.stanza", package.path));
local stock = dofile(path).stanza_mt.__tostring; -- a fresh, unpatched copy
-- Module load order is not fixed, so what serializes is looked at when
-- stanzas flow, not at load time.
local function what() return debug.getinfo(st.stanza_mt.__tostring, "S").what; end
local n = 0;
local function check(event)
	local s = event.stanza;
	local a, b = stock(s), tostring(s);
	n = n + 1;
	if a ~= b then
		module:log("error", "serialize probe: output differs\n stock: %q\n brisk: %q", a, b);
	end
end
for _, kind in ipairs({ "message", "presence", "iq" }) do
	for _, to in ipairs({ "full", "bare", "host" }) do
		module:hook(kind .. "/" .. to, check, 1000);
	end
end
module:hook("iq-get/host/urn:brisk:probe:count:count", function (event)
	event.origin.send(st.reply(event.stanza):tag("count", { xmlns = "urn:brisk:probe:count", what = what() })
		:text(tostring(n)):up());
	return true;
end);
]==]

describe("brisk.xml serializer in a live Prosody", function ()
	local srv
	setup(function ()
		srv = prosody.start{
			modules = { "brisk_xml", "serialize_probe" },
			plugin_paths = { "%{dir}/plugins" },
			prepare = function (s)
				os.execute("mkdir -p " .. prosody.shell_quote(s.dir .. "/plugins"))
				local f = assert(io.open(s.dir .. "/plugins/mod_serialize_probe.lua", "w"))
				f:write(PROBE)
				f:close()
			end,
			accounts = { alice = "alicepw", bob = "bobpw" },
		}
	end)
	teardown(function ()
		if srv then srv:stop() end
	end)

	local function probe(c, id)
		local res = c:iq(st.iq({ type = "get", id = id, to = "localhost" })
			:tag("count", { xmlns = "urn:brisk:probe:count" }):up())
		assert.equal("result", res.attr.type)
		return res:get_child("count", "urn:brisk:probe:count")
	end

	it("runs Brisk's C __tostring", function ()
		local alice = srv:connect("alice", "alicepw", "probe")
		local count = probe(alice, "w1")
		assert.equal("C", count.attr.what, "__tostring in the server is not Brisk's C function")
		alice:close()
	end)

	it("routes tricky stanzas between real clients, as stock would serialize them", function ()
		local alice = srv:connect("alice", "alicepw", "phone")
		local bob = srv:connect("bob", "bobpw", "laptop")
		bob:send(st.presence():tag("status"):text("é <here> & 'now' 🎉"):up())
		local texts = {
			"<hi & 'there'> \"quoted\"",
			"multibyte: héllo — ✓ 日本語 🎉 Ελληνικά",
			"]]> &amp; &lt;already&gt;",
			("long & <text> "):rep(300),
		}
		for i, text in ipairs(texts) do
			alice:send(st.message({ to = "bob@localhost/laptop", type = "chat", id = "m" .. i })
				:text_tag("body", text)
				:tag("x", { xmlns = "urn:x'\"<&>" }):tag("y", { xmlns = "urn:x'\"<&>", a = "'\"<&>" }):up():up()
				:tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up())
			local msg = bob:receive(10, function (s) return s.name == "message" and s.attr.id == "m" .. i end)
			assert.truthy(msg, "bob got no message " .. i)
			assert.equal(text, msg:get_child_text("body"))
			local y = msg:get_child("x", "urn:x'\"<&>"):get_child("y")
			assert.equal("'\"<&>", y.attr.a)
			assert.equal("urn:x'\"<&>", y.attr.xmlns)
		end
		-- Namespaced attributes, sent raw so the server's parser makes the
		-- "ns\1name" keys that Brisk must write back with ns1/ns2 prefixes.
		alice:send("<message to='bob@localhost/laptop' type='chat' id='ns1' xmlns:p='urn:p' xmlns:q=\"urn:q'&amp;\">"
			.. "<body p:a='1' q:b='&lt;2&gt;'>ns</body></message>")
		local msg = bob:receive(10, function (s) return s.attr.id == "ns1" end)
		assert.truthy(msg, "bob got no namespaced-attribute message")
		local body = msg:get_child("body")
		assert.equal("1", body.attr["urn:p\1a"])
		assert.equal("<2>", body.attr["urn:q'&\1b"])
		-- A roster iq round trip and the probe's count.
		local res = alice:iq(st.iq({ type = "get", id = "r1" }):query("jabber:iq:roster"))
		assert.equal("result", res.attr.type)
		assert.truthy(tonumber(probe(alice, "c1"):get_text()) >= 6)
		alice:close()
		bob:close()
	end)

	it("found no difference and logged no errors", function ()
		assert.same({}, srv:errors())
	end)
end)
