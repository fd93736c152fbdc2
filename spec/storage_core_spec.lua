-- The C core brisk.store on its own, as mod_storage_brisk and tools use it:
-- it loads without requiring anything (util.stanza's metatable is handed to
-- open()), failures are fail plus a message, a miss is fail alone, misuse
-- raises, and values far larger than a roster row round-trip again and
-- again, plain and encrypted (its buffers grow and are given back).

local st = require "util.stanza";
local S = require "brisk.store";

local dir = assert(io.popen("mktemp -d /tmp/brisk-storage-core-XXXXXX")):read("l");
local n = 0;
local function new_path()
	n = n + 1;
	return ("%s/db%d.sqlite"):format(dir, n);
end

describe("brisk.store", function ()
	teardown(function () os.execute("rm -rf '"..dir.."'"); end);

	it("requires nothing when it loads", function ()
		-- In a fresh lua5.4: every require made while brisk.store loads is recorded.
		local script = [[
			local seen = {};
			local real = require;
			require = function (name) seen[#seen + 1] = name; return real(name); end;
			local S = real "brisk.store";
			assert(type(S.open) == "function");
			io.write(table.concat(seen, ","));
		]];
		-- Under ASan the child needs the runtime that spec/helpers/init.lua took
		-- out of this process's environment.
		local preload = os.getenv("BRISK_ASAN_PRELOAD");
		local env = preload and preload ~= "" and ("env LD_PRELOAD='"..preload.."' ") or "";
		local f = assert(io.popen(env.."lua5.4 -e '"..script:gsub("'", "'\\''").."' 2>&1"));
		local out = f:read("a");
		local ok = f:close();
		assert(ok, out);
		assert.equal("", out);
	end);

	it("keeps stanzas as stanzas only with the stanza_mt it is given", function ()
		local value = { v = st.stanza("query", { xmlns = "jabber:iq:private" }):text_tag("x", "1") };
		local with = assert(S.open(new_path(), { stanza_mt = st.stanza_mt }));
		assert(with:set("h", "u", "private", false, value));
		local got = with:get("h", "u", "private", false);
		assert.equal(st.stanza_mt, getmetatable(got.v));
		assert.equal(tostring(value.v), tostring(got.v));
		with:close();
		local without = assert(S.open(new_path()));
		assert(without:set("h", "u", "private", false, value));
		assert.is_nil(getmetatable(without:get("h", "u", "private", false).v));
		without:close();
		assert.has_error(function () S.open(new_path(), { stanza_mt = "no" }); end);
		-- the codec's bindings take it as their last argument
		local blob = assert(S.pack(value, st.stanza_mt));
		assert.equal(st.stanza_mt, getmetatable(assert(S.unpack(blob, st.stanza_mt)).v));
		assert.is_nil(getmetatable(assert(S.unpack(blob)).v));
	end);

	it("returns fail alone for a miss, fail and a message for a failure, and raises on misuse", function ()
		local db = assert(S.open(new_path()));
		assert.matches("^brisk%.store%.DB %(open%)$", tostring(db));
		local function count(...) return select("#", ...), ...; end
		-- misses
		assert.same({ 1 }, { (count(db:get("h", "nobody", "roster", true))) });
		assert.is_nil((db:get("h", "nobody", "roster", true)));
		assert(db:set("h", "u", "s", false, { a = 1 }));
		assert.same({ 1 }, { (count(db:get_key("h", "u", "s", false, "b"))) });
		assert.is_nil((db:get_key("h", "u", "s", false, "b")));
		assert.is_nil((db:get_all("h", "s", false, "b")));
		-- failures
		local ok, err = db:set("h", "u", "s", false, { a = print });
		assert.is_nil(ok);
		assert.matches("cannot store a function", err);
		ok, err = S.unpack("not a blob");
		assert.is_nil(ok);
		assert.is_string(err);
		local none, oerr = S.open(dir.."/missing-folder/db.sqlite");
		assert.is_nil(none);
		assert.matches("cannot open database", oerr);
		-- misuse
		assert.has_error(function () db:set("h", "u", "s", false, "not a table"); end);
		assert.has_error(function () db:get(42); end);
		assert.has_error(function () S.open(new_path(), { key = "short" }); end);
		db:close();
		assert.matches("closed", tostring(db));
		assert.has_error(function () db:get("h", "u", "s", false); end, "brisk.store: database is closed");
		db:close(); -- closing twice is harmless
	end);

	it("stores values far larger than a roster row, again and again", function ()
		for _, key in ipairs { false, ("k"):rep(32) } do
			local db = assert(S.open(new_path(), { key = key or nil }));
			for i = 1, 3 do
				local big = ("x"):rep(300000 + i);
				assert(db:set("h", "u", "s", false, { a = big, b = { big } }));
				local v = assert(db:get("h", "u", "s", false));
				assert.equal(big, v.a);
				assert.equal(big, v.b[1]);
				assert(db:set_keys("h", "u", "roster", true, { ["j@x"] = { name = big } }, {}));
				assert.equal(big, db:get_key("h", "u", "roster", true, "j@x").name);
				assert.equal(big, db:get_all("h", "roster", true, "j@x").u.name);
				-- and small ones in between
				assert(db:set("h", "u", "s", false, { a = "small" }));
				assert.same({ a = "small" }, db:get("h", "u", "s", false));
			end
			assert.equal("ok", db:pragma("integrity_check"));
			db:close();
		end
	end);
end);
