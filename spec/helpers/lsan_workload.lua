-- spec/helpers/lsan_workload.lua — the soak's workload in miniature, driving Brisk's
-- C modules directly in one lua5.4 process, for LeakSanitizer.
--
--   lua5.4 spec/helpers/lsan_workload.lua [rounds]
--
-- Run it with LUA_CPATH pointing at an ASan build (build/asan/) and
-- libasan preloaded with detect_leaks=1 (scripts/soak.sh and
-- spec/reliability_soak_spec.lua do). Every brisk.* module that exists is
-- exercised the way the live server uses it: brisk.xml parses streams
-- (valid, hostile and cut short) and serializes stanzas through the stock
-- APIs it installs into; brisk.store writes, reads and purges rosters in a
-- SQLite file; brisk.presence turns presence churn into events and timers.
-- Errors are provoked on purpose (bad arguments, callbacks that raise, bad
-- XML) because every Lua error unwinding through C is a chance to leak.
-- The script ends by closing its Lua state (os.exit(true, true)), so that
-- everything still allocated at exit is a real leak.

-- Prosody 13's libraries need its loader first (see spec/helpers/init.lua).
if os.getenv("BRISK_PROSODY") == "13" then require "loader"; end

local rounds = tonumber(arg[1]) or 200;
local done = {};

-- BRISK_LSAN_ONLY="xml,store" limits the run to those modules (to bisect).
local only = os.getenv("BRISK_LSAN_ONLY");

local function have(name)
	if only and only ~= "" and not (("," .. only .. ","):find("," .. name:gsub("^brisk%.", "") .. ",", 1, true)) then
		return nil;
	end
	local ok, mod = pcall(require, name);
	if ok then return mod; end
	if not tostring(mod):match("module '" .. name:gsub("%.", "%%.") .. "' not found") then
		error(mod, 0); -- present but broken: that is a failure, not a skip
	end
	return nil;
end

------------------------------------------------------------------------
-- brisk.xml: streams and serialization through the stock APIs.

local bxml = have "brisk.xml";
if bxml then
	-- as mod_brisk_xml installs it (no Prosody to rebind in this process)
	local undo = require "brisk.patch".install({ "stanza", "xmppstream" }, { rebind = false });
	local xmppstream = require "util.xmppstream";
	local st = require "util.stanza";
	local header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
		.. "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
	local inputs = {
		"<message to='a@b' id='1'><body>hello &amp; &#x263A;</body></message>",
		"<presence><status>x</status><priority>5</priority><c xmlns='urn:x' a='1'/></presence>",
		"<iq type='get' id='q'><query xmlns='jabber:iq:roster'/></iq>",
		"<message><body>\255</body></message>",        -- invalid UTF-8
		"<message><body>a\0b</body></message>",        -- NUL
		"<!-- c --><message/>",                         -- restricted XML
		"<message><x:y/></message>",                    -- unbound prefix
		string.rep("<a>", 300) .. string.rep("</a>", 300), -- nesting
		"<message " .. string.rep("a='1' ", 2) .. "/>",  -- duplicate attribute
		"<message><body>" .. string.rep("z", 3000) .. "</body></message>",
		"<message><body>cut in the mid",               -- left unfinished
		"</stream:stream>",
	};
	local stanzas = 0;
	for r = 1, rounds do
		local session = { notopen = true };
		local raise = r % 7 == 0;
		local stream = xmppstream.new(session, {
			stream_ns = "http://etherx.jabber.org/streams";
			stream_tag = "stream";
			default_ns = "jabber:client";
			streamopened = function (s) s.notopen = nil; end;
			streamclosed = function () end;
			handlestanza = function (_, stanza)
				stanzas = stanzas + 1;
				-- Serialize what was parsed, and a copy with a child added.
				local text = tostring(stanza);
				local copy = st.clone(stanza):tag("added", { xmlns = "urn:brisk:soak", n = tostring(r) }):up();
				assert(#tostring(copy) > #text);
				if raise then error("a callback that raises"); end
			end;
			error = function () end;
		}, 64 * 1024);
		pcall(stream.feed, stream, header);
		for i = 1 + r % 3, #inputs do
			local data = inputs[i];
			-- Byte-sized and whole feeds alike.
			if r % 5 == 0 then
				for j = 1, #data, 7 do pcall(stream.feed, stream, data:sub(j, j + 6)); end
			else
				pcall(stream.feed, stream, data);
			end
		end
		if r % 4 == 0 then stream:reset(); pcall(stream.feed, stream, header .. inputs[1]); end
		-- Over the size limit.
		if r % 11 == 0 then pcall(stream.feed, stream, "<message><body>" .. string.rep("y", 70000)); end
	end
	-- Serializer inputs that must raise, not leak.
	for _ = 1, rounds do
		pcall(tostring, setmetatable({ name = "x", attr = { a = {} }, tags = {} }, st.stanza_mt));
		pcall(tostring, setmetatable({ name = {}, attr = {}, tags = {} }, st.stanza_mt));
		pcall(st.xml_escape, {});
	end
	undo();
	done[#done + 1] = ("brisk.xml: %d rounds, %d stanzas"):format(rounds, stanzas);
end

------------------------------------------------------------------------
-- brisk.store: rosters in SQLite, written, read, rewritten and purged.

local store = have "brisk.store";
if store then
	local path = os.tmpname();
	os.remove(path);
	local db = assert(store.open(path, { synchronous = "normal" }));
	local ops = 0;
	for r = 1, rounds do
		local user = "u" .. (r % 17);
		local items = { [false] = { version = r } };
		for k = 1, 1 + r % 9 do
			items["c" .. k .. "@example.com"] = {
				subscription = ({ "none", "to", "from", "both" })[1 + k % 4],
				name = (k % 2 == 0) and ("Contact " .. k) or nil,
				groups = { ["G" .. (k % 3)] = true },
				ask = (k % 5 == 0) and "subscribe" or nil,
			};
		end
		assert(db:set("localhost", user, "roster", true, items));
		local back = assert(db:get("localhost", user, "roster", true));
		assert(back[false].version == r);
		assert(db:set("localhost", user, "private", false, { ["urn:x"] = "<x/>", n = r }));
		db:get_key("localhost", user, "roster", true, "c1@example.com");
		db:set_keys("localhost", user, "roster", true, { ["c2@example.com"] = { subscription = "both", groups = {} } }, {});
		if r % 13 == 0 then db:purge("localhost", user); end
		-- Wrong argument types must raise cleanly.
		pcall(db.set, db, "localhost", user, "roster", true, "not a table");
		pcall(db.set, db, "localhost", user, "roster", true, { [false] = { version = {} }, ["j@x"] = { groups = 5 } });
		pcall(store.unpack, "\0\1garbage" .. r);
		pcall(store.decode_raw, string.rep("\255", r % 40));
		ops = ops + 8;
	end
	db:users("localhost", "roster");
	db:stores("localhost", "u1");
	db:close();
	-- A database left for the garbage collector, not closed.
	local db2 = assert(store.open(path, {}));
	db2:get("localhost", "u2", "roster", true);
	db2 = nil; -- luacheck: ignore 311
	collectgarbage();
	for _, suffix in ipairs{ "", "-wal", "-shm" } do os.remove(path .. suffix); end
	done[#done + 1] = ("brisk.store: %d rounds, %d operations"):format(rounds, ops);
end

------------------------------------------------------------------------
-- brisk.presence: presence churn, timers and webhook signatures.

local presence = have "brisk.presence";
if presence then
	local e = presence.new{ now = 0 };
	local events, now = 0, 0;
	for r = 1, rounds * 5 do
		now = now + 0.25;
		local jid = "dev" .. (r % 50) .. "@localhost";
		local available = r % 4 ~= 0;
		e:update(jid, now, available, (r % 3 == 0) and "away" or nil, "status " .. r, r % 10,
			(r % 6 == 0) and "<x xmlns='urn:x'/>" or nil);
		if r % 10 == 0 then e:tick(now); end
		while true do
			local ev = e:pop();
			if not ev then break; end
			events = events + 1;
		end
		if presence.hmac_sha256 then
			presence.base64_encode(presence.hmac_sha256(string.rep("k", 32), "id." .. r .. ".body"));
		end
		pcall(e.update, e, {}, now);
	end
	e:stats();
	e = nil; -- luacheck: ignore 311
	collectgarbage();
	done[#done + 1] = ("brisk.presence: %d updates, %d events"):format(rounds * 5, events);
end

for _, line in ipairs(done) do print(line); end
if #done == 0 then print("no brisk.* C module found on LUA_CPATH"); end
collectgarbage();
os.exit(true, true);
