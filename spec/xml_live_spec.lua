-- spec/xml_live_spec.lua — a real Prosody parsing every client stream with
-- brisk.xml: mod_brisk_xml listed first and last in modules_enabled (Prosody
-- loads them in no fixed order, so both placements must rebind mod_c2s),
-- real clients log in (SASL, stream restart, bind), fetch the roster,
-- exchange presence and messages, and the log shows no errors.
--
-- brisk_xml_max_depth is set low so that one stanza tells the two parsers
-- apart: stock accepts it, Brisk closes the stream as not-well-formed. That
-- proves the sessions really run on the C parser. brisk_xml_hibernate_after
-- is 1 s, so idle clients' parsers are freed and rebuilt under real traffic.
local prosody = require "spec.helpers.prosody";
local st = require "util.stanza";

local function nested(depth)
	return ("<x xmlns='urn:deep'>"):rep(depth) .. ("</x>"):rep(depth);
end

local function scenario(modules)
	local srv;
	setup(function ()
		srv = prosody.start{
			modules = modules;
			config = { brisk_xml_max_depth = 40, brisk_xml_hibernate_after = 1 };
			accounts = { alice = "alicepw", bob = "bobpw" };
		};
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	it("logs what it replaced", function ()
		local log = srv:log_text();
		assert.truthy(log:match("brisk%.xml [^\n]*installed: replaced [^\n]*util%.xmppstream%.new"), log);
	end);

	it("serves logins, roster, presence and messages", function ()
		local alice = srv:connect("alice", "alicepw", "phone");
		local bob = srv:connect("bob", "bobpw", "laptop");

		local roster = alice:iq(st.iq({ type = "get", id = "r" .. math.random(1e9) }):tag("query", { xmlns = "jabber:iq:roster" }));
		assert.truthy(roster and roster.attr.type == "result", tostring(roster));
		local set = alice:iq(st.iq({ type = "set", id = "s" .. math.random(1e9) }):tag("query", { xmlns = "jabber:iq:roster" })
			:tag("item", { jid = "bob@localhost", name = "Bob" }):tag("group"):text("Friends & <family>"));
		assert.truthy(set and set.attr.type == "result", tostring(set));
		roster = alice:iq(st.iq({ type = "get", id = "r" .. math.random(1e9) }):tag("query", { xmlns = "jabber:iq:roster" }));
		local item = roster:get_child("query", "jabber:iq:roster"):get_child("item");
		assert.equal("bob@localhost", item.attr.jid);
		assert.equal("Friends & <family>", item:get_child_text("group"));

		bob:send(st.presence():tag("status"):text("héllo ✓"):up());
		alice:send(st.presence());
		alice:send(st.message({ to = "bob@localhost/laptop", type = "chat", id = "m1", ["xml:lang"] = "de" })
			:text_tag("body", "<hi & 'there'> 日本 🎉"):tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up());
		local msg = bob:receive(5, function (s) return s.name == "message"; end);
		assert.truthy(msg, "bob got no message");
		assert.equal("<hi & 'there'> 日本 🎉", msg:get_child_text("body"));
		assert.equal("alice@localhost/phone", msg.attr.from);
		assert.equal("de", msg.attr["xml:lang"]);

		-- raw bytes split mid-character and mid-tag, CDATA and entities
		local raw = "<message to='alice@localhost/phone' type='chat' id='m2'><body>a&amp;b <![CDATA[<c>]]> é</body></message>";
		local cut = raw:find("é", 1, true) + 1;
		bob:send(raw:sub(1, 20));
		bob:send(raw:sub(21, cut - 1));
		bob:send(raw:sub(cut));
		local m2 = alice:receive(5, function (s) return s.name == "message" and s.attr.id == "m2"; end);
		assert.truthy(m2, "alice got no message");
		assert.equal("a&b <c> é", m2:get_child_text("body"));

		local ping = alice:iq(st.iq({ type = "get", to = "localhost", id = "p1" }):tag("ping", { xmlns = "urn:xmpp:ping" }));
		assert.truthy(ping and ping.attr.type == "result");
		alice:close();
		bob:close();
	end);

	it("parses client streams with the C parser (depth limit applies)", function ()
		local c = srv:connect("alice", "alicepw", "deep");
		c:send("<message to='bob@localhost' id='deep'>" .. nested(60) .. "</message>");
		local err = c:receive(5, function (s) return s.name == "error"; end);
		assert.truthy(err, "no stream error for a stanza deeper than brisk_xml_max_depth");
		assert.truthy(err:get_child("not-well-formed", "urn:ietf:params:xml:ns:xmpp-streams"), tostring(err));
		c:kill();
		-- within the limit, a nested payload goes through
		local a = srv:connect("alice", "alicepw", "ok");
		local b = srv:connect("bob", "bobpw", "ok");
		a:send("<message to='bob@localhost/ok' id='n'><body>n</body>" .. nested(20) .. "</message>");
		local m = b:receive(5, function (s) return s.name == "message" and s.attr.id == "n"; end);
		assert.truthy(m);
		local depth, node = 0, m:get_child("x", "urn:deep");
		while node do depth = depth + 1; node = node:get_child("x", "urn:deep"); end
		assert.equal(20, depth);
		a:close();
		b:close();
	end);

	it("hibernates idle clients' parsers and wakes them on their next stanza", function ()
		local a = srv:connect("alice", "alicepw", "idle");
		local b = srv:connect("bob", "bobpw", "idle");
		a:send(st.presence());
		b:send(st.presence());
		-- idle for over 1 s, and the sweep runs every second: both asleep by 2.2 s
		local function idle() prosody.wait_for(function () return false; end, 2.2, 0.2); end
		assert.truthy(prosody.wait_for(function ()
			return srv:log_text():match("hibernated %d+ idle stream parsers %(%d+ of %d+ streams hibernating%)");
		end, 10, 0.1), "no hibernation logged");
		idle();
		a:send(st.message({ to = "bob@localhost/idle", type = "chat", id = "w1" }):text_tag("body", "wake up ✓"));
		local m = b:receive(5, function (s) return s.name == "message" and s.attr.id == "w1"; end);
		assert.truthy(m, "bob got no message after alice's parser woke");
		assert.equal("wake up ✓", m:get_child_text("body"));
		assert.equal("en", m.attr["xml:lang"]); -- the stream's language, kept while asleep
		idle();
		b:send(st.iq({ type = "get", to = "localhost", id = "p2" }):tag("ping", { xmlns = "urn:xmpp:ping" }));
		assert.truthy(b:receive(5, function (s) return s.name == "iq" and s.attr.id == "p2"; end));
		-- </stream:stream> closes a stream that was asleep (alice's) and a woken one
		a:close();
		b:close();
	end);

	it("closes a malformed stream cleanly", function ()
		local c = srv:connect("bob", "bobpw", "bad");
		c:send("<message><body>unclosed</bod></message>");
		assert.truthy(c:wait_closed(5));
		c:kill();
	end);

	it("logs no errors", function ()
		assert.same({}, srv:errors());
	end);
end

describe("mod_brisk_xml listed first", function ()
	scenario({ "brisk_xml", "pep", "carbons" });
end);

describe("mod_brisk_xml listed last", function ()
	scenario({ "pep", "carbons", "brisk_xml" });
end);

-- Loaded at run time, after mod_c2s captured stock util.xmppstream.new:
-- mod_brisk_xml must rebind it; unloaded, stock must come back.
describe("mod_brisk_xml loaded and unloaded at run time", function ()
	local srv;
	setup(function ()
		srv = prosody.start{
			modules = { "pep" };
			config = { brisk_xml_max_depth = 40 };
			accounts = { alice = "alicepw", bob = "bobpw" };
		};
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	local function deep_message_accepted()
		local a = srv:connect("alice", "alicepw", "rt");
		local b = srv:connect("bob", "bobpw", "rt");
		a:send("<message to='bob@localhost/rt' id='d'>" .. nested(60) .. "</message>");
		-- Brisk answers with a stream error at once; stock delivers the message
		local result;
		for _ = 1, 30 do
			if a:receive(0.05, function (s) return s.name == "error"; end) then result = false; break; end
			if b:receive(0.05, function (s) return s.name == "message" and s.attr.id == "d"; end) then
				result = true;
				break;
			end
		end
		a:kill();
		b:kill();
		return result;
	end

	it("uses stock before it is loaded", function ()
		assert.is_true(deep_message_accepted());
	end);

	it("rebinds mod_c2s when loaded later", function ()
		local out, ok = srv:prosodyctl("shell", "module:load('brisk_xml')");
		assert.truthy(ok, out);
		local pattern = "rebound util%.xmppstream%.new in already loaded modules: [^\n]*c2s";
		assert.truthy(prosody.wait_for(function () return srv:log_text():match(pattern); end, 10, 0.05),
			srv:log_text():match("[^\n]*mod_brisk_xml[^\n]*") or "no line from mod_brisk_xml");
		assert.is_false(deep_message_accepted());
	end);

	it("restores stock when unloaded", function ()
		local out, ok = srv:prosodyctl("shell", "module:unload('brisk_xml')");
		assert.truthy(ok, out);
		assert.is_true(deep_message_accepted());
	end);

	it("logs no errors", function ()
		assert.same({}, srv:errors());
	end);
end);

describe("mod_brisk_xml with brisk_xml_parse = false", function ()
	local srv;
	setup(function ()
		srv = prosody.start{
			modules = { "brisk_xml" };
			config = { brisk_xml_parse = false, brisk_xml_max_depth = 40 };
			accounts = { alice = "alicepw", bob = "bobpw" };
		};
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	it("leaves stream parsing to stock", function ()
		local replaced = srv:log_text():match("installed: replaced ([^;\n]*);");
		assert.truthy(replaced);
		assert.falsy(replaced:match("xmppstream"), replaced);
		local a = srv:connect("alice", "alicepw", "p");
		local b = srv:connect("bob", "bobpw", "p");
		a:send("<message to='bob@localhost/p' id='d'>" .. nested(60) .. "</message>");
		assert.truthy(b:receive(5, function (s) return s.name == "message" and s.attr.id == "d"; end));
		a:close();
		b:close();
		assert.same({}, srv:errors());
	end);
end);
