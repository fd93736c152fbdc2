-- Crash safety of mod_storage_brisk: a client streams roster changes, the
-- server is killed with SIGKILL partway; after a restart every change the
-- server had acknowledged is there, and SQLite's integrity_check says ok.

local prosody = require "spec.helpers.prosody";
local st = require "util.stanza";

local ROSTER = "jabber:iq:roster";

local function roster_of(c)
	local reply = assert(c:iq(st.iq({ type = "get", id = "get" }):tag("query", { xmlns = ROSTER })));
	local items = {};
	for item in reply:get_child("query", ROSTER):childtags("item") do
		items[item.attr.jid] = { name = item.attr.name, group = item:get_child_text("group") };
	end
	return items;
end

local function sqlite(db, sql)
	local f = assert(io.popen(("sqlite3 %s %s 2>&1"):format(prosody.shell_quote(db), prosody.shell_quote(sql))));
	local out = f:read("a");
	f:close();
	return (out:gsub("%s+$", ""));
end

describe("mod_storage_brisk under SIGKILL", function ()
	for _, mode in ipairs { "full", "normal" } do
		it("keeps every acknowledged roster change (synchronous = "..mode..")", function ()
			local srv = prosody.start {
				storage = { roster = "brisk" },
				config = { brisk_storage_synchronous = mode },
				accounts = { alice = "pw" },
				log_level = "info",
			};
			local c = srv:connect("alice", "pw", "crash");
			-- Change i sets contact ((i-1) % 250) + 1 to the name "v<i>": the first 250
			-- add contacts, later ones rename them. All are sent at once; the server is
			-- killed after 300 answers, with hundreds still in flight.
			local total, contacts, kill_after = 1000, 250, 300;
			local function jid_of(i) return ("dev%03d@iot.localhost"):format((i - 1) % contacts + 1); end
			local batch = {};
			for i = 1, total do
				batch[#batch + 1] = tostring(st.iq({ type = "set", id = "set"..i }):tag("query", { xmlns = ROSTER })
					:tag("item", { jid = jid_of(i), name = "v"..i }):text_tag("group", "G"..(i % 4)));
			end
			assert(c:send(table.concat(batch)));
			local expected, acked = {}, 0;
			while acked < kill_after do
				local r = c:receive(10, function (s) return s.name == "iq" and (s.attr.id or ""):match("^set"); end);
				assert(r, "server stopped answering");
				assert.equal("result", r.attr.type);
				local i = tonumber(r.attr.id:match("%d+"));
				-- acknowledged: this change, or a later one to the same contact, must survive
				expected[jid_of(i)] = math.max(expected[jid_of(i)] or 0, i);
				acked = acked + 1;
			end
			srv:kill("KILL");
			local db = srv.dir.."/data/brisk.sqlite";
			assert.equal("ok", sqlite(db, "PRAGMA integrity_check"));
			srv:restart();
			c = srv:connect("alice", "pw", "after");
			local items = roster_of(c);
			local max_v = 0;
			for _, item in pairs(items) do max_v = math.max(max_v, tonumber((item.name or ""):match("%d+")) or 0); end
			-- the kill must have cut the stream short, or this proves nothing
			assert.truthy(max_v < total, "the server finished every change before the kill");
			for jid, i in pairs(expected) do
				local item = items[jid];
				assert.truthy(item, jid.." lost");
				local v = tonumber((item.name or ""):match("^v(%d+)$"));
				assert.truthy(v and v >= i and jid_of(v) == jid, jid.." has "..tostring(item.name).." after v"..i.." was acknowledged");
				assert.equal("G"..(v % 4), item.group, jid);
			end
			c:close();
			srv:stop();
			assert.equal("ok", sqlite(db, "PRAGMA integrity_check"));
			assert.same({}, srv:errors());
		end);
	end
end);
