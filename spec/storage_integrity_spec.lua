-- Integrity and privacy of mod_storage_brisk: damaged rows (bytes flipped,
-- blobs swapped, truncated or replaced with the sqlite3 CLI) are reported as
-- nil, err with an error logged, never an exception or wrong data; encryption
-- at rest keeps plaintext off the disk and a wrong or missing key is a clear
-- error.

local th = require "spec.helpers.storage_host";

local dir = assert(io.popen("mktemp -d /tmp/brisk-storage-int-XXXXXX")):read("l");
local keyhex = ("0123456789abcdef"):rep(4);
do
	local f = assert(io.open(dir.."/key.hex", "w"));
	f:write(keyhex, "\n");
	f:close();
end
local sm = th.setup(dir, {
	["plain.test"] = { storage = "brisk", brisk_storage_path = dir.."/plain.sqlite" };
	["enc.test"] = { storage = "brisk", brisk_storage_path = dir.."/enc.sqlite", brisk_storage_key_file = dir.."/key.hex" };
});
local rm = require "core.rostermanager";
local um = require "core.usermanager";
local R = require "brisk.store";

local function sh(cmd)
	local f = assert(io.popen(cmd.." 2>&1"));
	local out = f:read("a");
	f:close();
	return out;
end

local function q(s) return "'"..s:gsub("'", "''").."'"; end

-- Read, change and write back one stored blob with the sqlite3 CLI.
local function blob_of(db, user, key)
	local tmp = dir.."/blob.bin";
	os.remove(tmp);
	sh(("sqlite3 %s \"SELECT writefile(%s, value) FROM items i JOIN names n ON n.id=i.user WHERE n.name=%s AND i.key=%s\"")
		:format(db, q(tmp), q(user), q(key)));
	local f = assert(io.open(tmp, "rb"), "no such row");
	local data = f:read("a");
	f:close();
	return data;
end

local function set_blob(db, user, key, data)
	local tmp = dir.."/blob.bin";
	local f = assert(io.open(tmp, "wb"));
	f:write(data);
	f:close();
	local out = sh(("sqlite3 %s \"UPDATE items SET value=readfile(%s) WHERE user=(SELECT id FROM names WHERE name=%s) AND key=%s\"")
		:format(db, q(tmp), q(user), q(key)));
	assert(out == "", out);
end

-- In an encrypted database rows are keyed by a keyed hash: address them by
-- the hash, found as the rows of a user whose key is a BLOB.
local function hashed_rows(db, user)
	local rows = {};
	local out = sh(("sqlite3 %s \"SELECT hex(i.key) FROM items i JOIN names n ON n.id=i.user WHERE n.name=%s AND typeof(i.key)='blob' AND i.store=(SELECT id FROM names WHERE name='roster') ORDER BY i.key\"")
		:format(db, q(user)));
	for hex in out:gmatch("%x+") do rows[#rows + 1] = hex; end
	return rows;
end

local function blob_at(db, hexkey)
	local tmp = dir.."/blob.bin";
	os.remove(tmp);
	sh(("sqlite3 %s \"SELECT writefile(%s, value) FROM items WHERE key=X'%s'\""):format(db, q(tmp), hexkey));
	local f = assert(io.open(tmp, "rb"), "no such row");
	local data = f:read("a");
	f:close();
	return data;
end

local function set_blob_at(db, hexkey, data)
	local tmp = dir.."/blob.bin";
	local f = assert(io.open(tmp, "wb"));
	f:write(data);
	f:close();
	local out = sh(("sqlite3 %s \"UPDATE items SET value=readfile(%s) WHERE key=X'%s'\""):format(db, q(tmp), hexkey));
	assert(out == "", out);
end

local function flip(data, pos)
	local b = data:byte(pos) ~ 0x5a;
	return data:sub(1, pos - 1)..string.char(b)..data:sub(pos + 1);
end

local function roster_of(n)
	local r = { [false] = { version = 7, pending = { ["p@x"] = true } } };
	for i = 1, n do
		r["c"..i.."@example.com"] = { subscription = "both", name = "Contact "..i, groups = { G = true, ["H"..(i % 3)] = true } };
	end
	return r;
end

describe("mod_storage_brisk integrity", function ()
	local db = dir.."/plain.sqlite";
	local store = sm.open("plain.test", "roster");
	local map = sm.open("plain.test", "roster", "map");

	before_each(function ()
		assert(store:set("alice", roster_of(5)));
		th.take_logs();
	end);

	it("detects every flipped byte of a contact row", function ()
		local good = blob_of(db, "alice", "c2@example.com");
		for pos = 1, #good do
			set_blob(db, "alice", "c2@example.com", flip(good, pos));
			local data, err = store:get("alice");
			assert.is_nil(data);
			assert.is_string(err);
			local v, err2 = map:get("alice", "c2@example.com");
			assert.is_nil(v);
			assert.is_string(err2);
			-- the other contacts are still readable one by one
			assert.same({ subscription = "both", name = "Contact 3", groups = { G = true, H0 = true } },
				map:get("alice", "c3@example.com"));
		end
		local logs = th.take_logs("error");
		assert.truthy(#logs >= #good);
		assert.matches("Unable to read", logs[1].message);
		set_blob(db, "alice", "c2@example.com", good);
		assert.same(roster_of(5), store:get("alice"));
	end);

	it("detects damage to the metadata row, and refuses to write over it", function ()
		local good = blob_of(db, "alice", "");
		for pos = 1, #good, 3 do
			set_blob(db, "alice", "", flip(good, pos));
			local data, err = store:get("alice");
			assert.is_nil(data);
			assert.is_string(err);
			local ok, err2 = map:set_keys("alice", { [false] = { version = 8 }, ["new@x"] = { subscription = "none", groups = { N = true } } });
			assert.is_nil(ok);
			assert.is_string(err2);
		end
		set_blob(db, "alice", "", good);
		assert.same(roster_of(5), store:get("alice"));
		th.take_logs();
	end);

	it("detects blobs moved between contacts, truncated, replaced or of an unknown version", function ()
		local a, b = blob_of(db, "alice", "c1@example.com"), blob_of(db, "alice", "c2@example.com");
		local cases = {
			{ "c1@example.com", b }, -- swapped: valid blob, wrong row
			{ "c1@example.com", a:sub(1, #a - 1) },
			{ "c1@example.com", "" },
			{ "c1@example.com", "garbage" },
			{ "c1@example.com", "\2"..a:sub(2) },
			{ "c1@example.com", a.."x" },
		};
		for i, case in ipairs(cases) do
			set_blob(db, "alice", case[1], case[2]);
			local data, err = store:get("alice");
			assert.is_nil(data, "case "..i);
			assert.is_string(err, "case "..i);
			set_blob(db, "alice", case[1], a);
		end
		-- a row renamed to another contact's key is detected too
		sh(("sqlite3 %s \"UPDATE items SET key='renamed@example.com' WHERE key='c1@example.com'\""):format(db));
		local data, err = store:get("alice");
		assert.is_nil(data);
		assert.matches("checksum", err);
		th.take_logs();
	end);

	it("makes rostermanager keep a damaged roster instead of replacing it", function ()
		assert(um.create_user("bob", "pw", "plain.test"));
		assert(store:set("bob", roster_of(3)));
		local good = blob_of(db, "bob", "c1@example.com");
		set_blob(db, "bob", "c1@example.com", flip(good, 5));
		local roster, err = rm.load_roster("bob", "plain.test");
		assert.is_string(err);
		assert.truthy(roster[false].broken);
		local ok, serr = rm.save_roster("bob", "plain.test", roster, "c2@example.com");
		assert.falsy(ok);
		assert.matches("broken", serr);
		set_blob(db, "bob", "c1@example.com", good);
		assert.same(roster_of(3), store:get("bob"));
		th.take_logs();
	end);
end);

describe("mod_storage_brisk encryption at rest", function ()
	teardown(function () os.execute("rm -rf '"..dir.."'"); end);
	local db = dir.."/enc.sqlite";
	local store = sm.open("enc.test", "roster");

	it("round-trips data and keeps it off the disk in plaintext", function ()
		local r = roster_of(20);
		r["secret@example.com"] = { subscription = "both", name = "VerySecretName", groups = { SecretGroup = true } };
		assert(store:set("carol", r));
		assert.same(r, store:get("carol"));
		local vcard = sm.open("enc.test", "vcard");
		assert(vcard:set("carol", { fn = "PrivateFullName" }));
		assert.same({ fn = "PrivateFullName" }, vcard:get("carol"));
		-- Searched from another process: opening and closing the database file
		-- here would drop this process's POSIX locks on it (an SQLite caveat).
		for _, word in ipairs { "VerySecretName", "SecretGroup", "PrivateFullName", "secret@example.com" } do
			local out = sh(("cat %s %s-wal 2>/dev/null | grep -a -c %s"):format(db, db, word));
			assert.equal("0", out:match("%d+"), word);
		end
		-- the same words do reach the disk without encryption, so the check can see them
		assert(sm.open("plain.test", "vcard"):set("carol", { fn = "PrivateFullName" }));
		local out = sh(("cat %s %s-wal 2>/dev/null | grep -a -c PrivateFullName"):format(dir.."/plain.sqlite", dir.."/plain.sqlite"));
		assert.not_equal("0", out:match("%d+"));
	end);

	it("reports tampered encrypted rows as nil, err", function ()
		local rows = hashed_rows(db, "carol");
		assert.equal(21, #rows);
		local hexkey = rows[7];
		local good = blob_at(db, hexkey);
		for _, pos in ipairs { 2, 5, 30, #good - 3 } do
			set_blob_at(db, hexkey, flip(good, pos));
			local data, err = store:get("carol");
			assert.is_nil(data);
			assert.is_string(err);
		end
		-- a valid blob moved to another contact's row is refused too
		set_blob_at(db, hexkey, blob_at(db, rows[8]));
		local data, err = store:get("carol");
		assert.is_nil(data);
		assert.is_string(err);
		set_blob_at(db, hexkey, good);
		assert.truthy(store:get("carol"));
		th.take_logs();
	end);

	it("finds, replaces and removes contacts by key without storing the key in clear", function ()
		local map = sm.open("enc.test", "roster", "map");
		assert.same({ subscription = "both", name = "VerySecretName", groups = { SecretGroup = true } },
			map:get("carol", "secret@example.com"));
		assert(map:set_keys("carol", { [false] = { version = 8 }, ["secret@example.com"] = map.remove,
			["new@example.com"] = { subscription = "to", groups = {} } }));
		assert.is_nil(map:get("carol", "secret@example.com"));
		assert.same({ carol = { subscription = "to", groups = {} } }, map:get_all("new@example.com"));
		assert(map:delete_all("new@example.com"));
		assert.is_nil(map:get_all("new@example.com"));
		assert.equal(20, #hashed_rows(db, "carol"));
		assert.equal("0", sh(("cat %s %s-wal 2>/dev/null | grep -a -c new@example"):format(db, db)):match("%d+"));
	end);

	it("refuses a wrong key and a missing key with a clear error", function ()
		local wrong = ("\1"):rep(32);
		local h, err = R.open(db, { key = wrong });
		assert.is_nil(h);
		assert.matches("key does not match", err);
		h, err = R.open(db);
		assert.is_nil(h);
		assert.matches("encrypted but no key", err);
		local right = keyhex:gsub("%x%x", function (x) return string.char(tonumber(x, 16)); end);
		h = assert(R.open(db, { key = right }));
		assert.truthy(h:get("enc.test", "carol", "roster", true));
		h:close();
	end);

	it("encrypts an existing plain database from the first write with a key", function ()
		local path = dir.."/later.sqlite";
		local h = assert(R.open(path));
		assert(h:set("x.test", "u", "roster", true, { ["old@x"] = { subscription = "both", name = "OldName" } }));
		h:close();
		local key = ("\7"):rep(32);
		h = assert(R.open(path, { key = key }));
		assert(h:set_keys("x.test", "u", "roster", true, { ["new@x"] = { subscription = "to", name = "NewName" } }, {}));
		assert.same({ ["old@x"] = { subscription = "both", name = "OldName" }, ["new@x"] = { subscription = "to", name = "NewName" } },
			h:get("x.test", "u", "roster", true));
		assert.equal("ok", h:pragma("integrity_check"));
		h:close();
		-- from now on the key is required
		local none, err = R.open(path);
		assert.is_nil(none);
		assert.matches("no key", err);
		assert.equal("0", sh(("sqlite3 %s \"SELECT count(*) FROM items WHERE instr(value, 'NewName') > 0\""):format(path)):match("%d+"));
		assert.equal("1", sh(("sqlite3 %s \"SELECT count(*) FROM items WHERE instr(value, 'OldName') > 0\""):format(path)):match("%d+"));
	end);

	it("rejects a malformed key file when the driver loads", function ()
		local dbs = require "brisk.storage_db";
		local f = assert(io.open(dir.."/bad.key", "w"));
		f:write("not a key\n");
		f:close();
		local key, err = dbs.read_key_file(dir.."/bad.key");
		assert.is_nil(key);
		assert.matches("64 hexadecimal", err);
		key, err = dbs.read_key_file(dir.."/missing.key");
		assert.is_nil(key);
		assert.matches("cannot read key file", err);
		local config = require "core.configmanager";
		local hm = require "core.hostmanager";
		local mm = require "core.modulemanager";
		config.set("badkey.test", "storage", "brisk");
		config.set("badkey.test", "brisk_storage_path", dir.."/badkey.sqlite");
		config.set("badkey.test", "brisk_storage_key_file", dir.."/bad.key");
		assert(hm.activate("badkey.test", {}));
		local ok, lerr = mm.load("badkey.test", "storage_brisk");
		assert.falsy(ok);
		assert.matches("64 hexadecimal", tostring(lerr));
		th.take_logs();
	end);
end);
