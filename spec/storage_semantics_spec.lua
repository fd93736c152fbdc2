-- Differential semantics of mod_storage_brisk's keyval and map stores
-- (rosters, with their compact encoding, and every other store): the same
-- sequences of driver calls go to stock mod_storage_internal (and
-- mod_storage_sql on SQLite) and to brisk, loaded by Prosody's real
-- modulemanager in this process; every result must match, value types
-- included.

local th = require "spec.helpers.storage_host";

local dir = assert(io.popen("mktemp -d /tmp/brisk-storage-sem-XXXXXX")):read("l");
do -- encryption key for the encrypted brisk host
	local f = assert(io.open(dir.."/key", "wb"));
	f:write(("\42"):rep(32));
	f:close();
end
local sm = th.setup(dir, {
	["internal.test"] = { storage = "internal" };
	["sql.test"] = { storage = "sql", sql = { driver = "SQLite3", database = dir.."/prosody.sqlite" } };
	["brisk.test"] = { storage = "brisk", brisk_storage_path = dir.."/brisk.sqlite" };
	["enc.test"] = { storage = "brisk", brisk_storage_path = dir.."/enc.sqlite", brisk_storage_key_file = dir.."/key" };
});
local st = require "util.stanza";
local rm = require "core.rostermanager";

-- Deep equality that tells integers from floats and stanzas from tables.
local function same(a, b, path)
	path = path or "value";
	if type(a) ~= type(b) then return false, path..": "..type(a).." vs "..type(b); end
	if type(a) == "number" then
		if math.type(a) ~= math.type(b) or a ~= b then
			return false, ("%s: %s %s vs %s %s"):format(path, math.type(a), a, math.type(b), b);
		end
		return true;
	end
	if type(a) ~= "table" then
		if a ~= b then return false, path..": "..tostring(a).." vs "..tostring(b); end
		return true;
	end
	if (getmetatable(a) == st.stanza_mt) ~= (getmetatable(b) == st.stanza_mt) then
		return false, path..": stanza vs plain table";
	end
	local stanza = getmetatable(a) == st.stanza_mt;
	for k, v in pairs(a) do
		-- last_add is util.stanza's builder cursor, not content: a parsed or
		-- deserialized stanza (sql, brisk) has none.
		if stanza and k == "last_add" then goto continue; end
		local ok, why = same(v, rawget(b, k), path.."["..tostring(k).."]");
		if not ok then return false, why; end
		::continue::
	end
	for k in pairs(b) do
		if rawget(a, k) == nil and not (stanza and k == "last_add") then return false, path.."["..tostring(k).."]: missing on the left"; end
	end
	return true;
end

local function assert_same(a, b, what)
	local ok, why = same(a, b);
	assert(ok, (what or "")..": "..tostring(why));
end

-- A deterministic generator, so a failure can be replayed.
local seed = tonumber(os.getenv("BRISK_SEED") or "") or 20261125;
local rand = math.random;
math.randomseed(seed);

local function gen_string()
	local r = rand(1, 6);
	if r == 1 then return ""; end
	if r == 2 then return "grüße ☃ "..rand(1, 99); end
	if r == 3 then
		local t = {};
		for i = 1, rand(1, 12) do t[i] = string.char(rand(0, 255)); end
		return table.concat(t);
	end
	return ("s"):rep(rand(1, 3))..rand(1, 1e6);
end

-- internal keeps integral floats as integers (its serializer writes 1.0 as 1),
-- so values compared against it use non-integral floats only.
local function gen_number()
	local r = rand(1, 6);
	if r == 1 then return rand(-5, 5); end
	if r == 2 then return math.maxinteger - rand(0, 3); end
	if r == 3 then return math.mininteger + rand(1, 3); end -- internal reads mininteger back as a float
	if r == 4 then return rand(1, 1e6) + 0.5; end
	if r == 5 then return -1.25e-300 * rand(1, 9); end
	return rand(0, 1e9);
end

local gen_value;
local function gen_table(depth)
	local t = {};
	for i = 1, rand(0, 3) do t[i] = gen_value(depth + 1); end
	for _ = 1, rand(0, 4) do
		local kr = rand(1, 4);
		local k = kr == 1 and rand(10, 20) or kr == 2 and (rand(0, 1) == 1) or gen_string();
		t[k] = gen_value(depth + 1);
	end
	return t;
end
function gen_value(depth)
	depth = depth or 0;
	local r = rand(1, depth > 3 and 4 or 6);
	if r == 1 then return gen_string(); end
	if r == 2 then return gen_number(); end
	if r == 3 then return rand(0, 1) == 1; end
	if r == 4 then return gen_string(); end
	return gen_table(depth);
end

local group_pool = { "Friends", "Work", "Family", "Sensors", "Floor 1", "ünïcödé", "" };
local function gen_item()
	local item = { groups = {} };
	local subs = { "none", "to", "from", "both" };
	if rand(1, 10) > 1 then item.subscription = subs[rand(1, 4)]; else item.subscription = "odd"..rand(1, 9); end
	if rand(1, 3) == 1 then item.ask = rand(1, 8) > 1 and "subscribe" or "unsubscribe"; end
	if rand(1, 2) == 1 then item.name = gen_string(); end
	for _ = 1, rand(0, 3) do item.groups[group_pool[rand(1, #group_pool)]] = true; end
	if rand(1, 12) == 1 then item.groups = nil; end
	if rand(1, 4) == 1 then item.approved = "true"; end
	if rand(1, 5) == 1 then item.persist = rand(1, 2) == 1; end
	if rand(1, 6) == 1 then item["x-"..rand(1, 3)] = gen_value(1); end
	if rand(1, 15) == 1 then item.groups = { Weird = "yes" }; end
	return item;
end

local function gen_meta()
	local meta = {};
	local r = rand(1, 3);
	if r == 1 then meta.version = rand(0, 1e6); elseif r == 2 then meta.version = true; end
	if rand(1, 2) == 1 then
		meta.pending = {};
		for _ = 1, rand(1, 3) do
			local jid = "p"..rand(1, 9).."@example.com";
			if rand(1, 2) == 1 then
				meta.pending[jid] = true;
			else
				meta.pending[jid] = st.preserialize(st.presence({ from = jid, type = "subscribe" })
					:tag("status"):text("status "..rand(1, 99)):up());
			end
		end
	end
	return meta;
end

local jids = { "a@example.com", "b@example.com", "c@example.net", "d@example.org", "sensor-1@iot.example" };
local function gen_roster()
	local roster = { [false] = gen_meta() };
	for _ = 1, rand(0, #jids) do roster[jids[rand(1, #jids)]] = gen_item(); end
	return roster;
end

local users = { "alice", "bob", "carol", nil --[[ host data ]] };
local function pick_user()
	local i = rand(1, 4);
	return users[i];
end

local keys_for = {
	roster = function () local r = rand(1, 8); if r == 1 then return false; end return jids[rand(1, #jids)]; end;
	private = function ()
		local r = rand(1, 10);
		if r == 1 then return 1; elseif r == 2 then return true; elseif r == 3 then return ""; end
		return "jabber:iq:"..rand(1, 5);
	end;
};
local values_for = {
	roster = function (key) if key == false then return gen_meta(); end return gen_item(); end;
	private = function () return gen_value(); end;
};
local whole_for = {
	roster = gen_roster;
	private = function () return gen_table(0); end;
};

-- Run op on every host; compare the results of brisk with those of internal.
local function run_sequence(store_name, n, brisk_host)
	brisk_host = brisk_host or "brisk.test";
	local hosts = { "internal.test", brisk_host };
	local kv, map = {}, {};
	for _, h in ipairs(hosts) do
		kv[h] = assert(sm.open(h, store_name, "keyval"));
		map[h] = assert(sm.open(h, store_name, "map"));
	end
	local log = {};
	for step = 1, n do
		local op = rand(1, 11);
		local user = pick_user();
		local key = keys_for[store_name]();
		local args;
		local results = {};
		if op <= 2 then
			local data = rand(1, 8) == 1 and (rand(1, 2) == 1 and {} or nil) or whole_for[store_name]();
			args = { "set", user };
			for _, h in ipairs(hosts) do results[h] = { kv[h]:set(user, data) }; end
		elseif op == 3 then
			args = { "get", user };
			for _, h in ipairs(hosts) do results[h] = { kv[h]:get(user) }; end
		elseif op == 4 then
			args = { "map:get", user, key };
			for _, h in ipairs(hosts) do results[h] = { map[h]:get(user, key) }; end
		elseif op <= 6 then
			local value = rand(1, 4) > 1 and values_for[store_name](key) or nil;
			args = { "map:set", user, key };
			for _, h in ipairs(hosts) do results[h] = { map[h]:set(user, key, value) }; end
		elseif op <= 8 then
			local changes = {};
			for _ = 1, rand(1, 3) do
				local k = keys_for[store_name]();
				changes[k] = rand(1, 4) > 1 and values_for[store_name](k) or "REMOVE";
			end
			args = { "map:set_keys", user };
			for _, h in ipairs(hosts) do
				local c = {};
				for k, v in pairs(changes) do c[k] = v == "REMOVE" and map[h].remove or v; end
				results[h] = { map[h]:set_keys(user, c) };
			end
		elseif op == 9 then
			local k = jids[rand(1, #jids)];
			if store_name == "private" then k = "jabber:iq:"..rand(1, 5); end
			args = { "map:get_all", k };
			for _, h in ipairs(hosts) do results[h] = { map[h]:get_all(k) }; end
		elseif op == 10 then
			args = { "users" };
			for _, h in ipairs(hosts) do
				local list = {};
				for u in kv[h]:users() do list[#list + 1] = u; end
				table.sort(list);
				results[h] = { list };
			end
		else
			local k = jids[rand(1, #jids)];
			if store_name == "private" then k = "jabber:iq:"..rand(1, 5); end
			args = { "map:delete_all", k };
			for _, h in ipairs(hosts) do results[h] = { map[h]:delete_all(k) }; end
		end
		log[#log + 1] = table.concat((function () local t = {}; for i, a in ipairs(args) do t[i] = tostring(a); end return t; end)(), " ");
		local a, b = results["internal.test"], results[brisk_host];
		-- Success is compared as truthiness (stock returns true or other truthy values).
		if args[1] == "set" or args[1]:match("^map:set") or args[1] == "map:delete_all" then
			a, b = { not not a[1], a[2] }, { not not b[1], b[2] };
		end
		local ok, why = same(a, b);
		if not ok then
			local ser = require "util.serialization".serialize;
			local detail = {};
			for i = 1, 4 do
				local u = users[i];
				detail[#detail + 1] = tostring(u)..": internal="..ser({ kv["internal.test"]:get(u) }, "oneline")
					.." brisk="..ser({ kv[brisk_host]:get(u) }, "oneline");
			end
			error(("seed %d step %d (%s): %s\nresults: %s vs %s\nlast ops: %s\n%s"):format(seed, step, log[#log], why,
				ser(a, "oneline"), ser(b, "oneline"),
				table.concat(log, "; ", math.max(1, #log - 6)), table.concat(detail, "\n")), 0);
		end
		-- After every step, both views of every user agree.
		if step % 10 == 0 then
			for i = 1, 4 do
				local u = users[i];
				assert_same({ kv["internal.test"]:get(u) }, { kv[brisk_host]:get(u) },
					("seed %d step %d full compare of %s"):format(seed, step, tostring(u)));
			end
		end
	end
end

-- Against mod_storage_sql: the roster operations rostermanager and mod_roster
-- perform (whole-roster set/get, one contact plus [false] at a time, get_all,
-- users), on named users, with values JSON represents exactly.
local function run_sql_sequence(n)
	local hosts = { "sql.test", "brisk.test" };
	local kv, map = {}, {};
	for _, h in ipairs(hosts) do
		kv[h] = assert(sm.open(h, "roster", "keyval"));
		map[h] = assert(sm.open(h, "roster", "map"));
	end
	local named = { "sqlu1", "sqlu2", "sqlu3" };
	local function plain_meta()
		local meta = { version = rand(1, 3) == 1 and true or rand(0, 1e6) };
		if rand(1, 2) == 1 then meta.pending = { ["p"..rand(1, 5).."@example.com"] = true }; end
		return meta;
	end
	local function plain_item()
		local item = gen_item();
		for k, v in pairs(item) do
			if type(v) == "table" and k ~= "groups" then item[k] = nil; end
			if type(v) == "number" and math.type(v) == "float" then item[k] = nil; end
		end
		if item.groups and item.groups.Weird then item.groups = {}; end
		return item;
	end
	for step = 1, n do
		local user = named[rand(1, #named)];
		local op = rand(1, 7);
		local results, what = {}, nil;
		if op == 1 then
			local roster = { [false] = plain_meta() };
			for _ = 1, rand(0, #jids) do roster[jids[rand(1, #jids)]] = plain_item(); end
			what = "set";
			for _, h in ipairs(hosts) do results[h] = { not not kv[h]:set(user, roster) }; end
		elseif op == 2 then
			what = "get";
			for _, h in ipairs(hosts) do results[h] = { kv[h]:get(user) }; end
		elseif op == 3 then
			local key = rand(1, 4) == 1 and false or jids[rand(1, #jids)];
			what = "map:get";
			for _, h in ipairs(hosts) do results[h] = { map[h]:get(user, key) }; end
		elseif op <= 5 then
			local jid = jids[rand(1, #jids)];
			local item = rand(1, 4) > 1 and plain_item() or nil;
			local meta = plain_meta();
			what = "map:set_keys";
			for _, h in ipairs(hosts) do
				results[h] = { not not map[h]:set_keys(user, { [false] = meta, [jid] = item or map[h].remove }) };
			end
		elseif op == 6 then
			local jid = jids[rand(1, #jids)];
			what = "map:get_all";
			for _, h in ipairs(hosts) do results[h] = { map[h]:get_all(jid) }; end
		else
			what = "users";
			for _, h in ipairs(hosts) do
				local list = {};
				for u in kv[h]:users() do list[#list + 1] = u; end
				table.sort(list);
				results[h] = { list };
			end
		end
		assert_same(results["sql.test"], results["brisk.test"], ("sql seed %d step %d (%s %s)"):format(seed, step, what, user));
	end
	-- leave the shared roster store as found, for the comparisons with internal
	for _, h in ipairs(hosts) do
		for _, u in ipairs(named) do assert(kv[h]:set(u, nil)); end
	end
end

describe("mod_storage_brisk semantics", function ()
	it("matches mod_storage_sql on random roster operations", function ()
		run_sql_sequence(300);
	end);

	teardown(function () os.execute("rm -rf '"..dir.."'"); end);
	it("matches mod_storage_internal on random roster operations", function ()
		run_sequence("roster", 400);
	end);

	it("matches mod_storage_internal on random operations on a general store", function ()
		run_sequence("private", 400);
	end);

	it("matches mod_storage_internal with encryption at rest on", function ()
		-- internal's data is left as the earlier sequences made it: start both afresh
		for _, h in ipairs { "internal.test", "enc.test" } do
			for _, store in ipairs { "roster", "private" } do
				for i = 1, 4 do assert(sm.open(h, store):set(users[i], nil)); end
			end
		end
		run_sequence("roster", 300, "enc.test");
		run_sequence("private", 300, "enc.test");
	end);

	it("keeps integers, floats, stanzas and odd keys exactly", function ()
		local store = sm.open("brisk.test", "exact");
		local s = st.message({ to = "a@b", type = "chat" }):tag("body"):text("hi"):up()
			:tag("x", { xmlns = "urn:x" }):text("1"):tag("y"):up():up();
		local data = {
			int = 1, float = 1.0, neg0 = -0.0, big = math.maxinteger, small = math.mininteger,
			inf = math.huge, ninf = -math.huge, tiny = 5e-324,
			[1] = "one", [2] = "two", [10] = "ten", [-1] = "minus", [true] = "yes", [false] = "no", [""] = "empty",
			[2.5] = "float key", stanza = s, nested = { { s } }, bin = "\0\1\255",
		};
		assert(store:set("u", data));
		local got = assert(store:get("u"));
		assert_same(data, got, "exact");
		assert.equal("float", math.type(got.float));
		assert.equal("integer", math.type(got.int));
		assert.equal(1/-0.0, 1/got.neg0);
		assert.equal(st.stanza_mt, getmetatable(got.stanza));
		assert.equal(st.stanza_mt, getmetatable(got.nested[1][1]));
		assert.equal(#tostring(s), #tostring(got.stanza)); -- attribute order may differ
		assert.equal(2, #got.stanza.tags);
		assert.equal("y", got.stanza.tags[2].tags[1].name);
		-- the util.stanza methods work on what comes back
		assert.equal("hi", got.stanza:get_child_text("body"));
	end);

	it("returns stanzas like mod_storage_sql does for map values", function ()
		local s = st.presence({ from = "x@y/z" }):tag("status"):text("away"):up();
		for _, h in ipairs { "sql.test", "brisk.test" } do
			local m = sm.open(h, "stanzas", "map");
			assert(m:set("u", "p", s));
		end
		local a = sm.open("sql.test", "stanzas", "map"):get("u", "p");
		local b = sm.open("brisk.test", "stanzas", "map"):get("u", "p");
		assert.equal(st.stanza_mt, getmetatable(a));
		assert.equal(st.stanza_mt, getmetatable(b));
		assert.equal(tostring(a), tostring(b));
	end);

	it("gives rostermanager the same rosters as internal and sql", function ()
		local hosts = { "internal.test", "sql.test", "brisk.test" };
		local pres = st.presence({ from = "x@example.com", type = "subscribe" }):tag("status"):text("hi"):up();
		for _, h in ipairs(hosts) do
			assert(require "core.usermanager".create_user("rm", "pw", h));
			local roster = rm.load_roster("rm", h);
			roster["x@example.com"] = { subscription = "none", groups = { Friends = true }, name = "X" };
			roster[false].version = 1;
			assert(rm.save_roster("rm", h, roster));
			assert(rm.set_contact_pending_in("rm", h, "x@example.com", pres));
			assert(rm.subscribed("rm", h, "x@example.com"));
			assert(rm.set_contact_pending_out("rm", h, "y@example.com"));
			assert(rm.process_inbound_subscription_approval("rm", h, "y@example.com"));
			assert(rm.set_contact_pending_in("rm", h, "z@example.com"));
			assert(rm.unsubscribed("rm", h, "z@example.com"));
			local r = rm.load_roster("rm", h);
			r["y@example.com"].groups = { Work = true, Friends = true };
			r["y@example.com"].name = "Why";
			assert(rm.save_roster("rm", h, r, "y@example.com"));
		end
		local stored = {};
		for _, h in ipairs(hosts) do
			stored[h] = assert(sm.open(h, "roster"):get("rm"));
		end
		assert_same(stored["internal.test"], stored["brisk.test"], "internal vs brisk");
		assert_same(stored["sql.test"], stored["brisk.test"], "sql vs brisk");
		assert.equal("integer", math.type(stored["brisk.test"][false].version));
		assert.equal("from", stored["brisk.test"]["x@example.com"].subscription);
	end);

	it("keeps version = true and pending stanzas in the metadata", function ()
		local meta = { version = true, pending = { ["a@b"] = true,
			["c@d"] = st.preserialize(st.presence({ from = "c@d", type = "subscribe" })) } };
		for _, h in ipairs { "internal.test", "brisk.test" } do
			assert(sm.open(h, "roster", "map"):set_keys("v", { [false] = meta, ["c@d"] = { subscription = "none", groups = {} } }));
		end
		assert_same(sm.open("internal.test", "roster"):get("v"), sm.open("brisk.test", "roster"):get("v"));
		assert.equal(true, sm.open("brisk.test", "roster", "map"):get("v", false).version);
	end);

	it("answers archive stores with an error naming drivers that have them", function ()
		local store, err = sm.open("brisk.test", "archive2", "archive");
		assert.is_nil(store);
		assert.matches("internal", err);
		assert.matches("sql", err);
		th.take_logs();
	end);

	it("implements stores() and purge() like the stock drivers", function ()
		for _, h in ipairs { "internal.test", "brisk.test" } do
			assert(sm.open(h, "roster"):set("purgeme", { ["a@b"] = { subscription = "both", groups = {} } }));
			assert(sm.open(h, "vcard"):set("purgeme", { name = "x" }));
			assert(sm.open(h, "vcard"):set(nil, { host = "data" }));
		end
		local found = {};
		for s in sm.get_driver("brisk.test"):stores("purgeme") do found[s] = true; end
		assert.same({ roster = true, vcard = true }, found);
		assert(sm.get_driver("brisk.test"):purge("purgeme"));
		assert(sm.get_driver("internal.test"):purge("purgeme"));
		for _, h in ipairs { "internal.test", "brisk.test" } do
			assert.is_nil(sm.open(h, "roster"):get("purgeme"));
			assert.is_nil(sm.open(h, "vcard"):get("purgeme"));
			assert.same({ host = "data" }, sm.open(h, "vcard"):get(nil));
		end
	end);

	it("refuses values it cannot store with nil, err and keeps the old data", function ()
		local store = sm.open("brisk.test", "bad");
		assert(store:set("u", { a = 1 }));
		local ok, err = store:set("u", { a = 2, f = function () end });
		assert.is_nil(ok);
		assert.matches("function", err);
		local cyc = {}; cyc.self = cyc;
		ok, err = store:set("u", { cyc = cyc });
		assert.is_nil(ok);
		assert.matches("deep", err);
		assert.same({ a = 1 }, store:get("u"));
		ok, err = sm.open("brisk.test", "bad", "map"):set_keys("u", { b = 3, [{}] = 1 });
		assert.is_nil(ok);
		assert.same({ a = 1 }, store:get("u"));
		th.take_logs();
	end);

	it("costs one row per contact and keeps single updates to one row", function ()
		local m = sm.open("brisk.test", "roster", "map");
		local roster = { [false] = { version = 1 } };
		for i = 1, 200 do roster["c"..i.."@example.com"] = { subscription = "both", groups = { G = true } }; end
		assert(sm.open("brisk.test", "roster"):set("big", roster));
		local f = io.popen(("sqlite3 %q \"SELECT count(*) FROM items i JOIN names n ON n.id=i.user WHERE n.name='big'\""):format(dir.."/brisk.sqlite"));
		assert.equal("201", f:read("l"));
		f:close();
		assert(m:set_keys("big", { [false] = { version = 2 }, ["c5@example.com"] = { subscription = "to", groups = { H = true } } }));
		local r = sm.open("brisk.test", "roster"):get("big");
		assert.same({ H = true }, r["c5@example.com"].groups);
		assert.same({ G = true }, r["c6@example.com"].groups);
		assert.equal(2, r[false].version);
	end);
end);
