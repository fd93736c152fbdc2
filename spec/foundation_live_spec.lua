-- spec/foundation_live_spec.lua — the pipeline end to end: a real Prosody
-- loads Brisk's glue module from lualib/, real clients log in and talk.
local prosody = require "spec.helpers.prosody";
local st = require "util.stanza";

describe("a live Prosody with Brisk", function ()
	local srv;
	setup(function ()
		srv = prosody.start{
			modules = { "brisk_xml" };
			accounts = { alice = "alicepw", bob = "bobpw" };
		};
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	it("loads mod_brisk_xml and its C core", function ()
		local log = srv:log_text();
		assert.truthy(log:match("brisk_xml[^\n]*info[^\n]*brisk%.xml"), "no startup line from mod_brisk_xml");
	end);

	it("routes a message between two real clients", function ()
		local alice = srv:connect("alice", "alicepw", "phone");
		local bob = srv:connect("bob", "bobpw", "laptop");
		bob:send(st.presence());
		alice:send(st.message({ to = "bob@localhost/laptop", type = "chat", id = "m1" })
			:text_tag("body", "<hi & 'there'>"));
		local msg = bob:receive(5, function (s) return s.name == "message"; end);
		assert.truthy(msg, "bob got no message");
		assert.equal("<hi & 'there'>", msg:get_child_text("body"));
		assert.equal("alice@localhost/phone", msg.attr.from);
		alice:close();
		bob:close();
	end);

	it("rejects a wrong password", function ()
		local c = srv:open_stream();
		local ok = c:auth("alice", "wrong");
		assert.falsy(ok);
		c:kill();
	end);

	it("logs no errors", function ()
		assert.same({}, srv:errors());
	end);
end);
