-- spec/util_live_spec.lua — a real Prosody with mod_brisk_util: listed
-- first and last in modules_enabled, with each library switched on and off,
-- and loaded and unloaded at run time. Real clients log in, use the roster,
-- presence and messages; the admin shell looks inside the server to see
-- that util.jid's functions, the copies core and modules took (the stanza
-- router's), server_epoll's timer heap and the events objects are Brisk's
-- C code, that timers still fire, and that unloading hands everything back
-- (the timer heap with its timers); the log has no errors.
local prosody = require "spec.helpers.prosody";
local st = require "util.stanza";

-- Evaluate a Lua expression in the server (admin shell); returns its printed result.
local function eval(srv, expr)
	local out, ok = srv:prosodyctl("shell", ">" .. expr);
	assert(ok, out);
	return out:match("Result: ([^\n]*)") or out;
end

local WHAT = "(function(f) return f and debug.getinfo(f,'S').what or 'none' end)";

local function jid_what(srv)
	return eval(srv, WHAT .. "(require'util.jid'.prepped_split)");
end

-- The stanza router's copy of util.jid.prepped_split, taken when it loaded.
local function router_copy_what(srv)
	return eval(srv, WHAT .. "((function() for i = 1, 99 do local n, v = debug.getupvalue(prosody.core_process_stanza, i);"
		.. " if n == 'jid_prepped_split' then return v end end end)())");
end

-- What server_epoll's timer heap's pop is: C (a Brisk heap), or none (stock's, from its metatable).
local function heap_what(srv)
	return eval(srv, WHAT .. "((function() local s = require'net.server'; for i = 1, 99 do"
		.. " local n, v = debug.getupvalue(s.add_task, i); if n == 'timers' then return rawget(v, 'pop') end end end)())");
end

local function events_what(srv)
	return eval(srv, WHAT .. "(prosody.events.fire_event) .. ' ' .. " .. WHAT .. "(prosody.hosts.localhost.events.fire_event)");
end

local function timer_fires(srv, name)
	eval(srv, ("require'util.timer'.add_task(0.2, function() prosody.%s = true end) and 'set'"):format(name));
	return prosody.wait_for(function () return eval(srv, "prosody." .. name) == "true"; end, 5, 0.1);
end

local function traffic(srv)
	local alice = srv:connect("alice", "alicepw", "phone");
	local bob = srv:connect("bob", "bobpw", "laptop");
	local roster = alice:iq(st.iq({ type = "set", id = "s" .. math.random(1e9) }):tag("query", { xmlns = "jabber:iq:roster" })
		:tag("item", { jid = "Bob@LocalHost", name = "Bob" }));
	assert.truthy(roster and roster.attr.type == "result", tostring(roster));
	roster = alice:iq(st.iq({ type = "get", id = "r" .. math.random(1e9) }):tag("query", { xmlns = "jabber:iq:roster" }));
	assert.equal("bob@localhost", roster:get_child("query", "jabber:iq:roster"):get_child("item").attr.jid);
	bob:send(st.presence());
	alice:send(st.presence());
	alice:send(st.message({ to = "BOB@localhost/laptop", type = "chat", id = "m1" }):text_tag("body", "hi ✓"));
	local msg = bob:receive(5, function (s) return s.name == "message" and s.attr.id == "m1"; end);
	assert.truthy(msg, "bob got no message");
	assert.equal("alice@localhost/phone", msg.attr.from);
	-- to a bare JID, to the server, to an unknown user, to an invalid JID
	alice:send(st.message({ to = "bob@localhost", type = "chat", id = "m2" }):text_tag("body", "bare"));
	assert.truthy(bob:receive(5, function (s) return s.name == "message" and s.attr.id == "m2"; end));
	local ping = alice:iq(st.iq({ type = "get", to = "localhost", id = "p1" }):tag("ping", { xmlns = "urn:xmpp:ping" }));
	assert.truthy(ping and ping.attr.type == "result");
	local bad = alice:iq(st.iq({ type = "get", to = "nobody@localhost/x", id = "u1" }):tag("ping", { xmlns = "urn:xmpp:ping" }));
	assert.truthy(bad and bad.attr.type == "error");
	alice:send("<message to='a@@b' id='inv' type='chat'><body>x</body></message>");
	local err = alice:receive(5, function (s) return s.attr.id == "inv"; end);
	assert.truthy(err and err.attr.type == "error", tostring(err));
	alice:close();
	bob:close();
end

local function scenario(modules, config, expect)
	local srv;
	setup(function ()
		srv = prosody.start{
			modules = modules;
			config = config;
			accounts = { alice = "alicepw", bob = "bobpw" };
		};
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	it("logs what it replaced and converted", function ()
		local line = srv:log_text():match("[^\n]*brisk%.util [^\n]*installed[^\n]*");
		assert.truthy(line, srv:log_text():sub(-3000));
		for _, lib in ipairs(expect.replaced) do assert.truthy(line:find(lib, 1, true), line); end
		for _, lib in ipairs(expect.not_replaced) do assert.falsy(line:match("replaced [^;]*" .. lib:gsub("%.", "%%.")), line); end
		if expect.heap then assert.truthy(line:match("util%.indexedbheap: [^;]*net%.server"), line); end
	end);

	it("serves logins, roster, presence and messages", function ()
		traffic(srv);
	end);

	it("runs Brisk's C code where switched on, stock's elsewhere", function ()
		assert.equal(expect.jid and "C" or "Lua", jid_what(srv));
		assert.equal(expect.jid and "C" or "Lua", router_copy_what(srv));
		assert.equal(expect.heap and "C" or "none", heap_what(srv));
		assert.equal(expect.events and "C C" or "Lua Lua", events_what(srv));
	end);

	it("fires timers", function ()
		assert.truthy(timer_fires(srv, "brisk_spec_timer"));
	end);

	it("logs no errors", function ()
		assert.same({}, srv:errors());
	end);
end

describe("mod_brisk_util listed first, every library on", function ()
	scenario({ "brisk_util", "pep", "carbons" }, { brisk_util_events = true },
		{ jid = true, heap = true, events = true, replaced = { "util.jid", "util.indexedbheap", "util.events" }, not_replaced = {} });
end);

describe("mod_brisk_util listed last, default switches", function ()
	scenario({ "pep", "carbons", "brisk_util" }, {},
		{ jid = true, heap = true, events = false, replaced = { "util.jid", "util.indexedbheap" }, not_replaced = { "util.events" } });
end);

describe("mod_brisk_util with only util.events", function ()
	scenario({ "brisk_util" }, { brisk_util_jid = false, brisk_util_indexedbheap = false, brisk_util_events = true },
		{ jid = false, heap = false, events = true, replaced = { "util.events" }, not_replaced = { "util.jid", "util.indexedbheap" } });
end);

describe("mod_brisk_util loaded and unloaded at run time", function ()
	local srv;
	setup(function ()
		srv = prosody.start{
			modules = { "pep", "carbons" };
			config = { brisk_util_events = true };
			accounts = { alice = "alicepw", bob = "bobpw" };
		};
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	it("is stock before it is loaded", function ()
		assert.equal("Lua", jid_what(srv));
		assert.equal("none", heap_what(srv));
		traffic(srv);
	end);

	it("converts and rebinds what already runs when loaded", function ()
		-- a timer set before, to fire after the heap is converted
		eval(srv, "require'util.timer'.add_task(1.5, function() prosody.brisk_before_load = true end) and 'set'");
		local out, ok = srv:prosodyctl("shell", "module:load('brisk_util')");
		assert.truthy(ok, out);
		assert.truthy(prosody.wait_for(function () return srv:log_text():match("brisk%.util [^\n]*installed"); end, 10, 0.05));
		assert.equal("C", jid_what(srv));
		assert.equal("C", router_copy_what(srv));
		assert.equal("C", heap_what(srv));
		assert.equal("C C", events_what(srv));
		traffic(srv);
		assert.truthy(prosody.wait_for(function () return eval(srv, "prosody.brisk_before_load") == "true"; end, 5, 0.1));
	end);

	it("hands everything back when unloaded", function ()
		eval(srv, "require'util.timer'.add_task(1.5, function() prosody.brisk_across_unload = true end) and 'set'");
		local out, ok = srv:prosodyctl("shell", "module:unload('brisk_util')");
		assert.truthy(ok, out);
		assert.truthy(srv:log_text():match("brisk%.util uninstalled"));
		assert.equal("Lua", jid_what(srv));
		assert.equal("Lua", router_copy_what(srv));
		assert.equal("none", heap_what(srv));
		assert.equal("Lua Lua", events_what(srv));
		traffic(srv);
		assert.truthy(prosody.wait_for(function () return eval(srv, "prosody.brisk_across_unload") == "true"; end, 5, 0.1));
		assert.truthy(timer_fires(srv, "brisk_after_unload"));
	end);

	it("can be loaded again", function ()
		local out, ok = srv:prosodyctl("shell", "module:load('brisk_util')");
		assert.truthy(ok, out);
		assert.equal("C", jid_what(srv));
		assert.equal("C", heap_what(srv));
		traffic(srv);
	end);

	it("logs no errors", function ()
		assert.same({}, srv:errors());
	end);
end);
