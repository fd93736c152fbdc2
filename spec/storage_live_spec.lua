-- A real Prosody with storage = { roster = "brisk", accounts = "brisk" }:
-- real clients add contacts, subscribe, approve, pre-approve, rename, set
-- groups, remove, and use roster versioning; after a restart everything is
-- intact, and prosodyctl works on the database while the server runs.

local prosody = require "spec.helpers.prosody";
local st = require "util.stanza";
local R = require "brisk.store";

local ROSTER = "jabber:iq:roster";
local ids = 0;
local function new_id() ids = ids + 1; return "r"..ids; end

local function roster_of(c, ver)
	local reply = assert(c:iq(st.iq({ type = "get", id = new_id() }):tag("query", { xmlns = ROSTER, ver = ver })), "no roster reply");
	assert.equal("result", reply.attr.type);
	local q = reply:get_child("query", ROSTER);
	if not q then return nil; end
	local items = {};
	for item in q:childtags("item") do
		local groups = {};
		for g in item:childtags("group") do groups[#groups + 1] = g:get_text(); end
		table.sort(groups);
		items[item.attr.jid] = { name = item.attr.name, subscription = item.attr.subscription,
			ask = item.attr.ask, groups = groups };
	end
	return items, q.attr.ver;
end

local function set_item(c, jid, name, groups, subscription)
	local iq = st.iq({ type = "set", id = new_id() }):tag("query", { xmlns = ROSTER })
		:tag("item", { jid = jid, name = name, subscription = subscription });
	for _, g in ipairs(groups or {}) do iq:text_tag("group", g); end
	local reply = assert(c:iq(iq), "no reply to roster set");
	assert.equal("result", reply.attr.type, tostring(reply));
end

local function presence_from(c, from, typ)
	return assert(c:receive(10, function (s)
		return s.name == "presence" and s.attr.type == typ and (s.attr.from or ""):match("^"..from:gsub("%p", "%%%0"));
	end), ("no %s presence from %s"):format(typ, from));
end

-- Wait until c's roster has jid with the given subscription (pushes are asynchronous).
local function wait_roster(c, jid, subscription)
	local items;
	prosody.wait_for(function ()
		items = roster_of(c);
		return items[jid] and items[jid].subscription == subscription;
	end, 10, 0.05);
	assert.equal(subscription, items[jid] and items[jid].subscription, jid);
	return items;
end

describe("mod_storage_brisk in a live server", function ()
	local srv;
	teardown(function () if srv then srv:stop(); end end);

	it("keeps rosters through subscriptions, edits, versioning and a restart", function ()
		srv = prosody.start {
			storage = { roster = "brisk", accounts = "brisk" },
			accounts = { alice = "pw", bob = "pw", dave = "pw" },
		};
		local a = srv:connect("alice", "pw", "a");
		local b = srv:connect("bob", "pw", "b");
		a:send(st.presence());
		b:send(st.presence());

		-- alice adds bob with a name and groups, then asks to subscribe
		set_item(a, "bob@localhost", "Bobby", { "Friends", "Work" });
		a:send(st.presence({ to = "bob@localhost", type = "subscribe" }));
		presence_from(b, "alice@localhost", "subscribe");
		-- bob approves and subscribes back; alice approves
		b:send(st.presence({ to = "alice@localhost", type = "subscribed" }));
		wait_roster(a, "bob@localhost", "to");
		b:send(st.presence({ to = "alice@localhost", type = "subscribe" }));
		presence_from(a, "bob@localhost", "subscribe");
		a:send(st.presence({ to = "bob@localhost", type = "subscribed" }));
		wait_roster(a, "bob@localhost", "both");
		wait_roster(b, "alice@localhost", "both");

		-- alice pre-approves dave, asks carol (no reply: a pending "ask")
		a:send(st.presence({ to = "dave@localhost", type = "subscribed" }));
		a:send(st.presence({ to = "carol@localhost", type = "subscribe" }));
		local items = wait_roster(a, "carol@localhost", "none");
		assert.equal("subscribe", items["carol@localhost"].ask);

		-- rename, regroup, add and remove contacts
		set_item(a, "bob@localhost", "Robert", { "Family" });
		for i = 1, 20 do set_item(a, ("device%02d@iot.localhost"):format(i), "Device "..i, { "Sensors", "Floor "..(i % 3) }); end
		set_item(a, "device07@iot.localhost", nil, nil, "remove");

		-- roster versioning: an unchanged roster is not sent again
		local before, ver = roster_of(a);
		assert.truthy(ver);
		assert.is_nil((roster_of(a, ver)));
		local again = roster_of(a, "0");
		assert.same(before, again);
		set_item(a, "device08@iot.localhost", "Eight", { "Sensors" });
		local after, ver2 = roster_of(a, ver);
		assert.truthy(after);
		assert.not_equal(ver, ver2);
		assert.equal("Eight", after["device08@iot.localhost"].name);
		before, ver = roster_of(a);
		assert.equal("Robert", before["bob@localhost"].name);
		assert.same({ "Family" }, before["bob@localhost"].groups);
		assert.is_nil(before["device07@iot.localhost"]);
		-- bob, carol, dave and 19 devices
		assert.equal(22, (function () local n = 0; for _ in pairs(before) do n = n + 1; end return n; end)());
		local bob_before = roster_of(b);

		-- A second connection reads the same database while the server runs.
		local db = assert(R.open(srv.dir.."/data/brisk.sqlite"));
		local stored = assert(db:get("localhost", "alice", "roster", true));
		assert.equal("true", stored["dave@localhost"] and stored["dave@localhost"].approved);
		assert.equal("integer", math.type(stored[false].version));
		assert.equal("ok", db:pragma("integrity_check"));
		db:close();

		-- prosodyctl opens the database while the server has it open
		local out, ok = srv:prosodyctl("register", "carol", "localhost", "pw");
		assert(ok, out);
		local c = srv:connect("carol", "pw", "c");
		c:close();

		a:close(); b:close();
		srv:restart();
		a = srv:connect("alice", "pw", "a2");
		b = srv:connect("bob", "pw", "b2");
		local a_after, a_ver = roster_of(a);
		assert.same(before, a_after);
		assert.equal(ver, a_ver);
		assert.same(bob_before, (roster_of(b)));
		-- the pending subscription request from bob is gone, dave's pre-approval stays
		a:send(st.presence());
		a:close(); b:close();
		assert.same({}, srv:errors());
	end);
end);
