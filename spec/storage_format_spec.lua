-- The on-disk format stays readable and byte-identical: databases written by
-- an earlier build (spec/fixtures/storage/v1-*.sqlite, schema 1, format 1;
-- see make_v1.lua there) open and read back exactly what was written, plain
-- and encrypted, rows from before encryption included; the values whose
-- encoding is deterministic come out as the very same bytes when written
-- again; and the examples of docs/storage-format.md encode as documented.

local st = require "util.stanza";
local data = require "spec.fixtures.storage.data";
local R = require "brisk.store";

local host = data.host;

-- As brisk.storage_db opens databases: with util.stanza's metatable.
local function open(path, key)
	return R.open(path, { key = key, stanza_mt = st.stanza_mt });
end
local fixtures = "spec/fixtures/storage";
local dir = assert(io.popen("mktemp -d /tmp/brisk-storage-format-XXXXXX")):read("l");

local function sh(cmd)
	local f = assert(io.popen(cmd.." 2>&1"));
	local out = f:read("a");
	f:close();
	return out;
end

-- A copy to work on: opening a WAL database creates files beside it, and
-- the specs write to it.
local function copy(name)
	local path = dir.."/"..name;
	assert(os.execute(("cp '%s/%s' '%s'"):format(fixtures, name, path)));
	return path;
end

-- Deep equality that tells integers from floats and stanzas from tables
-- (a stored stanza has no builder cursor, last_add).
local function same(a, b, path)
	path = path or "value";
	if type(a) ~= type(b) then return false, path..": "..type(a).." vs "..type(b); end
	if type(a) == "number" then
		if math.type(a) ~= math.type(b) or (a ~= b and a == a) or 1 / a ~= 1 / b then
			return false, ("%s: %s %s vs %s %s"):format(path, math.type(a), a, math.type(b), b);
		end
		return true;
	end
	if type(a) ~= "table" then
		if a ~= b then return false, path..": "..tostring(a).." vs "..tostring(b); end
		return true;
	end
	local stanza = getmetatable(a) == st.stanza_mt;
	if stanza ~= (getmetatable(b) == st.stanza_mt) then return false, path..": stanza vs plain table"; end
	for k, v in pairs(a) do
		if not (stanza and k == "last_add") then
			local ok, why = same(v, rawget(b, k), path.."["..tostring(k).."]");
			if not ok then return false, why; end
		end
	end
	for k in pairs(b) do
		if rawget(a, k) == nil and not (stanza and k == "last_add") then
			return false, path.."["..tostring(k).."]: missing on the left";
		end
	end
	return true;
end

local function assert_same(want, got, what)
	local ok, why = same(want, got);
	assert(ok, what..": "..tostring(why));
end

local function read_all(db, user, stores, what)
	for store, want in pairs(stores) do
		local got, err = db:get(host, user, store, store == "roster");
		assert(got, what.." "..store..": "..tostring(err));
		assert_same(want, got, what.." "..store);
	end
end

-- Every row of alice and of the host-level data, as hex, in key order.
local function dump(path)
	return sh(("sqlite3 %s \"SELECT h.name, coalesce(u.name, '-'), s.name, hex(i.key), hex(i.value)"
		.." FROM items i JOIN names h ON h.id=i.host LEFT JOIN names u ON u.id=i.user JOIN names s ON s.id=i.store"
		.." WHERE i.user=0 OR u.name='alice' ORDER BY 1, 2, 3, 4\""):format(path));
end

local function hex(s)
	return (s:gsub(".", function (c) return ("%02x "):format(c:byte()); end):gsub(" $", ""));
end

describe("storage format 1", function ()
	teardown(function () os.execute("rm -rf '"..dir.."'"); end);

	it("reads a plain database written by an earlier build", function ()
		local path = copy("v1-plain.sqlite");
		local db = assert(open(path));
		local alice, host_level = data.deterministic(st);
		read_all(db, "alice", alice, "alice");
		read_all(db, nil, host_level, "host");
		read_all(db, "carol", data.carol(st), "carol");
		-- one key at a time, and one key of every user
		assert_same(alice.roster["bob@example.com"], db:get_key(host, "alice", "roster", true, "bob@example.com"), "get_key");
		assert_same(alice.roster[false], db:get_key(host, "alice", "roster", true, false), "get_key [false]");
		assert_same({ alice = alice.roster["bob@example.com"] }, db:get_all(host, "roster", true, "bob@example.com"), "get_all");
		-- and it can be written to
		assert(db:set_keys(host, "alice", "roster", true, { ["new@example.com"] = { subscription = "to", groups = { New = true } } }, {}));
		assert_same({ subscription = "to", groups = { New = true } }, db:get_key(host, "alice", "roster", true, "new@example.com"), "new contact");
		assert.equal("ok", db:pragma("integrity_check"));
		db:close();
	end);

	it("writes the same bytes again", function ()
		local path = dir.."/again.sqlite";
		local db = assert(open(path));
		local alice, host_level = data.deterministic(st);
		for store, value in pairs(alice) do assert(db:set(host, "alice", store, store == "roster", value)); end
		for store, value in pairs(host_level) do assert(db:set(host, nil, store, false, value)); end
		assert(db:checkpoint());
		db:close();
		local want = dump(fixtures.."/v1-plain.sqlite");
		assert.truthy(#want > 1000, want);
		assert.equal(want, dump(path));
	end);

	it("reads an encrypted database written by an earlier build, rows from before encryption included", function ()
		local path = copy("v1-encrypted.sqlite");
		local none, err = open(path);
		assert.is_nil(none);
		assert.matches("encrypted but no key", err);
		none, err = open(path, ("\1"):rep(32));
		assert.is_nil(none);
		assert.matches("key does not match", err);
		local db = assert(open(path, data.key));
		local alice, host_level = data.deterministic(st);
		local legacy = data.legacy();
		for jid, item in pairs(legacy.roster) do alice.roster[jid] = item; end
		alice.notes = legacy.notes;
		read_all(db, "alice", alice, "alice");
		read_all(db, nil, host_level, "host");
		read_all(db, "carol", data.carol(st), "carol");
		assert_same(legacy.roster["legacy@example.com"], db:get_key(host, "alice", "roster", true, "legacy@example.com"), "legacy get_key");
		assert_same({ carol = data.carol(st).roster["a@example.com"] }, db:get_all(host, "roster", true, "a@example.com"), "get_all");
		-- a legacy row written again becomes a hashed one, and stays readable
		assert(db:set_keys(host, "alice", "roster", true, { ["legacy@example.com"] = { subscription = "none" } }, {}));
		assert_same({ subscription = "none" }, db:get_key(host, "alice", "roster", true, "legacy@example.com"), "rewritten legacy row");
		assert.equal("ok", db:pragma("integrity_check"));
		db:close();
		assert.equal("0", sh(("sqlite3 %s \"SELECT count(*) FROM items WHERE key='legacy@example.com'\""):format(path)):match("%d+"));
	end);

	it("encodes the examples of docs/storage-format.md as documented", function ()
		assert.equal("05 00 01 04 07 76 65 72 73 69 6f 6e 02 06", hex(assert(R.encode_raw("value", { version = 3 }))));
		local names = { "Friends" };
		assert.equal("44 03 42 6f 62 02 00",
			hex(assert(R.encode_raw("item", { subscription = "both", name = "Bob", groups = { Friends = true } }, names))));
	end);
end);
