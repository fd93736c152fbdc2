-- Migration with Debian's prosody-migrator: rosters and other keyval stores
-- go internal -> brisk -> internal and sql -> brisk -> sql, and come back
-- identical. The stock drivers write the source data and read the results in
-- this process; the migrator runs as its own process, finding
-- mod_storage_brisk through brisk.storage_migrator.
local helper = require "spec.helpers.prosody";
local write = helper.write_file;

local th = require "spec.helpers.storage_host";

local dir = assert(io.popen("mktemp -d /tmp/brisk-storage-mig-XXXXXX")):read("l");
-- The migrator may drop root privileges to Prosody's user.
os.execute("chmod 0777 '"..dir.."'");
local sm = th.setup(dir, {
	["mig.test"] = { storage = "internal" };
	["sqlsrc.test"] = { storage = "sql", sql = { driver = "SQLite3", database = dir.."/src.sqlite" } };
});
local st = require "util.stanza";
local json = require "util.json";
local R = require "brisk.store";

local stores = { "roster", "accounts", "vcard", "private" };

local function sample(user)
	return {
		roster = {
			[false] = { version = 42, pending = { ["p@example.com"] = true,
				["q@example.com"] = st.preserialize(st.presence({ from = "q@example.com", type = "subscribe" })
					:tag("status"):text("let me in"):up()) } },
			["a@example.com"] = { subscription = "both", name = "A "..user, groups = { Friends = true, Work = true } },
			["b@example.com"] = { subscription = "from", groups = {}, approved = "true" },
			["c@example.com"] = { subscription = "none", ask = "subscribe", groups = { Friends = true }, persist = true },
		},
		accounts = { password = "pw-"..user, iteration_count = 4096, salt = "s" },
		vcard = { name = "vCard", attr = { xmlns = "vcard-temp" }, { name = "FN", attr = {}, "Full "..user } },
		private = { ["storage:bookmarks"] = { name = "query", attr = { xmlns = "jabber:iq:private" } } },
	};
end

local function same(a, b, path)
	path = path or "";
	if type(a) ~= type(b) then return false, path..": "..type(a).." vs "..type(b); end
	if type(a) == "number" and math.type(a) ~= math.type(b) then return false, path..": number subtype"; end
	if type(a) ~= "table" then return a == b, path..": "..tostring(a).." vs "..tostring(b); end
	for k, v in pairs(a) do
		local ok, why = same(v, b[k], path.."/"..tostring(k));
		if not ok then return false, why; end
	end
	for k in pairs(b) do if a[k] == nil then return false, path.."/"..tostring(k)..": extra"; end end
	return true;
end


-- Every user's every store in internal storage under dir/<back> must equal
-- the source data the stock driver wrote under dir.
local function same_as_source(dm, users, back)
	for _, u in ipairs(users) do
		for _, store in ipairs(stores) do
			dm.set_data_path(dir);
			local want = assert(dm.load(u, "mig.test", store));
			dm.set_data_path(dir.."/"..back);
			local got = dm.load(u, "mig.test", store);
			local ok, why = same(want, got, u.."/"..store);
			assert(ok, why);
		end
	end
end

local function migrate(config_text)
	local cfg = dir.."/migrator.cfg.lua";
	write(cfg, config_text);
	-- Under make test-asan the migrator's lua5.4 needs the sanitizer runtime
	-- first, as the servers do (spec/helpers/init.lua).
	local preload = os.getenv("BRISK_ASAN_PRELOAD");
	local env = (preload and preload ~= "") and ("env LD_PRELOAD='"..preload.."' ") or "";
	local cmd = ("%slua5.4 -l brisk.storage_migrator %s --config %s input output 2>&1"):format(env, helper.bin("prosody-migrator"), cfg);
	local f = assert(io.popen(cmd));
	local out = f:read("a");
	local ok = f:close();
	assert(ok and out:match("Done!"), "migrator failed:\n"..out);
	os.execute("chmod -R a+rwX '"..dir.."'");
	return out;
end

local function hosts_line(host)
	local parts = {};
	for _, s in ipairs(stores) do parts[#parts + 1] = ("%q"):format(s); end
	return ("hosts = { [%q] = { %s } }"):format(host, table.concat(parts, ", "));
end

-- Every row of a mod_storage_sql database, values decoded, keyed by host/user/store/key.
local function sql_rows(db)
	local rows = {};
	local f = assert(io.popen(("sqlite3 -separator '|' %s \"SELECT host, user, store, key, type, hex(value) FROM prosody\""):format(db)));
	for line in f:lines() do
		local host, user, store, key, typ, hex = line:match("^(.-)|(.-)|(.-)|(.-)|(.-)|(.*)$");
		local value = hex:gsub("%x%x", function (x) return string.char(tonumber(x, 16)); end);
		if typ == "json" then value = json.decode(value); end
		rows[table.concat({ host, user, store, key }, "|")] = { typ, value };
	end
	f:close();
	return rows;
end

describe("prosody-migrator with mod_storage_brisk", function ()
	local users = { "alice", "bob", "eve" };

	it("moves internal data to brisk and back unchanged", function ()
		for _, u in ipairs(users) do
			for store, data in pairs(sample(u)) do assert(sm.open("mig.test", store):set(u, data)); end
		end
		assert(sm.open("mig.test", "private"):set(nil, { ["host:data"] = { 1, 2, 3 } }));
		migrate(([[
input { type = "internal"; path = %q; %s }
output { type = "brisk"; path = %q }
]]):format(dir, hosts_line("mig.test"), dir.."/m1.sqlite"));
		local db = assert(R.open(dir.."/m1.sqlite", { stanza_mt = st.stanza_mt }));
		for _, u in ipairs(users) do
			for _, store in ipairs(stores) do
				local want = assert(sm.open("mig.test", store):get(u));
				local got = db:get("mig.test", u, store, store == "roster");
				assert(same(want, got, u.."/"..store));
			end
		end
		assert.same({ ["host:data"] = { 1, 2, 3 } }, db:get("mig.test", nil, "private", false));
		db:close();

		-- back to internal, into a fresh data folder
		os.execute("mkdir -p '"..dir.."/back' && chmod 0777 '"..dir.."/back'");
		migrate(([[
input { type = "brisk"; path = %q; %s }
output { type = "internal"; path = %q }
]]):format(dir.."/m1.sqlite", hosts_line("mig.test"), dir.."/back"));
		local dm = require "core.storagemanager".olddm;
		same_as_source(dm, users, "back");
		assert.same({ ["host:data"] = { 1, 2, 3 } }, dm.load(nil, "mig.test", "private"));
		dm.set_data_path(dir);
	end);

	it("moves sql data to brisk and back unchanged", function ()
		for _, u in ipairs(users) do
			for store, data in pairs(sample(u)) do
				if store == "vcard" or store == "private" then data = { v = data }; end
				assert(sm.open("sqlsrc.test", store):set(u, data));
			end
		end
		migrate(([[
input { type = "sql"; driver = "SQLite3"; database = %q; %s }
output { type = "brisk"; path = %q }
]]):format(dir.."/src.sqlite", hosts_line("sqlsrc.test"), dir.."/m2.sqlite"));
		local db = assert(R.open(dir.."/m2.sqlite", { stanza_mt = st.stanza_mt }));
		for _, u in ipairs(users) do
			for _, store in ipairs(stores) do
				local want = assert(sm.open("sqlsrc.test", store):get(u));
				local got = db:get("sqlsrc.test", u, store, store == "roster");
				local ok, why = same(want, got, u.."/"..store);
				assert(ok, why);
			end
		end
		db:close();
		migrate(([[
input { type = "brisk"; path = %q; %s }
output { type = "sql"; driver = "SQLite3"; database = %q }
]]):format(dir.."/m2.sqlite", hosts_line("sqlsrc.test"), dir.."/back.sqlite"));
		local want, got = sql_rows(dir.."/src.sqlite"), sql_rows(dir.."/back.sqlite");
		local ok, why = same(want, got);
		assert(ok, why);
		assert.truthy(next(want));
	end);

	it("migrates into an encrypted brisk database and out again", function ()
		write(dir.."/mig.key", ("ab"):rep(32).."\n");
		migrate(([[
input { type = "internal"; path = %q; %s }
output { type = "brisk"; path = %q; key_file = %q }
]]):format(dir, hosts_line("mig.test"), dir.."/enc.sqlite", dir.."/mig.key"));
		-- the contacts' JIDs and names are not in the file
		local f = assert(io.popen(("cat %s %s-wal 2>/dev/null | grep -a -c -e a@example.com -e 'A alice'"):format(dir.."/enc.sqlite", dir.."/enc.sqlite")));
		assert.equal("0", f:read("a"):match("%d+"));
		f:close();
		assert.is_nil(R.open(dir.."/enc.sqlite"));
		os.execute("mkdir -p '"..dir.."/back2' && chmod 0777 '"..dir.."/back2'");
		migrate(([[
input { type = "brisk"; path = %q; key_file = %q; %s }
output { type = "internal"; path = %q }
]]):format(dir.."/enc.sqlite", dir.."/mig.key", hosts_line("mig.test"), dir.."/back2"));
		local dm = require "core.storagemanager".olddm;
		same_as_source(dm, users, "back2");
		dm.set_data_path(dir);
	end);

	teardown(function () os.execute("rm -rf '"..dir.."'"); end);
end);
