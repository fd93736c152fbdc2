-- spec/reliability_soak_spec.lua — a live Prosody with every Brisk module
-- that exists under mixed load for BRISK_SOAK_SECONDS (default 60): messages
-- between connected clients (every one numbered, so a loss, duplicate or
-- reordering is seen), presence churn, roster additions and removals, and
-- clients reconnecting. It fails if any stanza is lost, if any iq goes
-- unanswered, if the server's resident memory grows by more than a small
-- bound after warm-up, or if the log shows an error or a traceback.
-- Under `make test-asan` it also runs spec/helpers/lsan_workload.lua (the same
-- workload in miniature, straight on the C modules) under LeakSanitizer.
--
-- scripts/soak.sh runs this file for longer (SOAK_SECONDS) and the
-- LeakSanitizer run against build/asan/; docs/reliability.md has figures.
local prosody = require "spec.helpers.prosody";
local H = require "spec.helpers.hostile";
local st = require "util.stanza";
local socket = require "socket";

local SECONDS = tonumber(os.getenv("BRISK_SOAK_SECONDS")) or 60;
local USERS = tonumber(os.getenv("BRISK_SOAK_USERS")) or 8;
local asan = os.getenv("BRISK_ASAN") == "1";
-- Growth allowed from the end of warm-up to the end, after a full garbage
-- collection in the server at both points. Under ASan every allocation goes
-- through its allocator (quarantine, redzones), hence more room there.
local RSS_BOUND_KB = tonumber(os.getenv("BRISK_SOAK_RSS_KB")) or (asan and 24576 or 8192);
local report_path = os.getenv("BRISK_SOAK_REPORT");
local mods = H.brisk_modules();

local function log_figures(lines)
	local text = table.concat(lines, "\n") .. "\n";
	io.stdout:write("\n" .. text);
	if report_path and report_path ~= "" then
		local f = io.open(report_path, "a");
		if f then f:write(text); f:close(); end
	end
end

describe("soak (" .. SECONDS .. " s, Brisk modules: " .. H.describe_modules(mods) .. ")", function ()
	local srv;
	local accounts = {};
	for i = 1, USERS do accounts["u" .. i] = "pw"; end

	setup(function ()
		local opts = H.brisk_options({ accounts = accounts, log_level = "info",
			-- the GC docs/scaling.md and examples/prosody.cfg.lua recommend
			config = { gc = { mode = "incremental", threshold = 120, speed = 400 } } }, mods);
		if asan then
			-- A small quarantine, so that ASan's own holding of freed memory
			-- does not look like growth (the default holds up to 256 MB).
			opts.env = { ASAN_OPTIONS = (os.getenv("ASAN_OPTIONS") or "") .. ":quarantine_size_mb=16" };
		end
		srv = prosody.start(opts);
	end);
	teardown(function ()
		if srv then srv:stop(); end
	end);

	local function gc_rss()
		-- A full collection in the server first, so that the figure is live
		-- memory plus allocator slack, not garbage waiting for the collector.
		srv:prosodyctl("shell", "> collectgarbage('collect') collectgarbage('collect')");
		return srv:rss_kb();
	end

	it("loses nothing and does not grow", function ()
		local clients = {};
		local sent, received, next_expected = {}, 0, {}; -- next_expected[from][to]
		local counters = { messages = 0, presences = 0, roster = 0, reconnects = 0, iq_sent = 0, iq_answered = 0 };
		local pending_iq = {};
		local problems = {};
		local function problem(fmt, ...)
			if #problems < 20 then problems[#problems + 1] = fmt:format(...); end
		end

		local function connect(i)
			local c = srv:connect("u" .. i, "pw", "soak");
			c:send(st.presence());
			while c:receive(0.05) do end
			clients[i] = { v = H.victim(c), i = i, outstanding = 0 };
		end
		for i = 1, USERS do connect(i); end

		local function handle(i, stanza)
			if stanza.name == "message" and stanza.attr.type == "chat" then
				local from, seq = (stanza.attr.id or ""):match("^m(%d+)%-(%d+)$");
				from, seq = tonumber(from), tonumber(seq);
				if from then
					next_expected[from] = next_expected[from] or {};
					local want = next_expected[from][i] or 1;
					if seq ~= want then problem("u%d got message %d from u%d, expected %d", i, seq, from, want); end
					next_expected[from][i] = seq + 1;
					received = received + 1;
					clients[i].outstanding = clients[i].outstanding - 1;
				end
			elseif stanza.name == "iq" and (stanza.attr.type == "result" or stanza.attr.type == "error") then
				local id = stanza.attr.id;
				if pending_iq[id] then
					pending_iq[id] = nil;
					counters.iq_answered = counters.iq_answered + 1;
					if stanza.attr.type == "error" then problem("iq %s failed: %s", id, tostring(stanza)); end
				end
			elseif stanza.name == "iq" and stanza.attr.type == "set" then
				-- A roster push: answer it, as a client must.
				clients[i].v:send(tostring(st.reply(stanza)));
			end
		end
		local function pump_all()
			for i = 1, USERS do
				local c = clients[i];
				for _, s in ipairs(c.v:poll()) do handle(i, s); end
				if c.v.closed and not c.reconnecting then problem("u%d was disconnected", i); c.reconnecting = true; end
			end
		end

		local seq = {}; -- seq[from][to]
		local function send_message(from, to)
			seq[from] = seq[from] or {};
			local n = (seq[from][to] or 0) + 1;
			seq[from][to] = n;
			clients[to].outstanding = clients[to].outstanding + 1;
			clients[from].v:send(tostring(st.message({ to = "u" .. to .. "@localhost/soak", type = "chat",
				id = "m" .. from .. "-" .. n }):text_tag("body", ("soak %d %d"):format(n, counters.messages))));
			counters.messages = counters.messages + 1;
		end
		local iq_n = 0;
		local function send_iq(from, stanza)
			iq_n = iq_n + 1;
			stanza.attr.id = "q" .. iq_n;
			pending_iq[stanza.attr.id] = true;
			counters.iq_sent = counters.iq_sent + 1;
			clients[from].v:send(tostring(stanza));
		end

		local t0 = socket.gettime();
		local warm_until = t0 + math.max(5, SECONDS / 4);
		local stop_at = t0 + SECONDS;
		local rss_start = srv:rss_kb();
		local rss_warm, rss_peak = nil, rss_start;
		local round = 0;
		local roster_fifo = {};
		while socket.gettime() < stop_at do
			round = round + 1;
			-- Messages: every client to the next few (about 8 per client per second).
			for i = 1, USERS do
				local to = (i + round % (USERS - 1)) % USERS + 1;
				if to ~= i and not clients[i].reconnecting and not clients[to].reconnecting then
					send_message(i, to);
				end
			end
			-- Presence churn: two clients change status every round.
			for k = 0, 1 do
				local i = (round * 2 + k) % USERS + 1;
				if not clients[i].reconnecting then
					clients[i].v:send(tostring(st.presence():text_tag("status", "round " .. round)
						:text_tag("show", ({ "away", "chat", "dnd", "xa" })[round % 4 + 1])));
					counters.presences = counters.presences + 1;
				end
			end
			-- Roster changes: add a contact; past five, remove the oldest.
			if round % 2 == 0 then
				local i = round % USERS + 1;
				local c = clients[i];
				if not c.reconnecting then
					roster_fifo[i] = roster_fifo[i] or {};
					local fifo = roster_fifo[i];
					local jid = "contact" .. round .. "@example.com";
					send_iq(i, st.iq({ type = "set", id = "pending" }):tag("query", { xmlns = "jabber:iq:roster" })
						:tag("item", { jid = jid, name = "Contact " .. round }):tag("group"):text("soak"));
					fifo[#fifo + 1] = jid;
					counters.roster = counters.roster + 1;
					if #fifo > 5 then
						send_iq(i, st.iq({ type = "set", id = "pending" }):tag("query", { xmlns = "jabber:iq:roster" })
							:tag("item", { jid = table.remove(fifo, 1), subscription = "remove" }));
						counters.roster = counters.roster + 1;
					end
				end
			end
			-- Reconnects: one client every 40 rounds (about every 4 s), once
			-- everything addressed to it has arrived.
			if round % 40 == 0 then
				local i = (round // 40) % USERS + 1;
				local c = clients[i];
				c.reconnecting = true;
				local deadline = socket.gettime() + 10;
				while c.outstanding > 0 and socket.gettime() < deadline do
					pump_all();
					socket.sleep(0.01);
				end
				if c.outstanding > 0 then problem("u%d: %d messages never arrived", i, c.outstanding); end
				-- Answers to its iqs come before the stream closes.
				c.v:send("</stream:stream>");
				c.v:wait_closed(5);
				for _, s in ipairs(c.v:poll()) do handle(i, s); end
				c.v:close();
				connect(i);
				counters.reconnects = counters.reconnects + 1;
			end
			pump_all();
			socket.sleep(0.1);
			local rss = srv:rss_kb();
			if rss and rss > rss_peak then rss_peak = rss; end
			if not rss_warm and socket.gettime() >= warm_until then rss_warm = gc_rss(); end
			if not prosody.pid_alive(srv.pid) then problem("server died"); break; end
		end
		-- Let everything in flight arrive.
		local deadline = socket.gettime() + 15;
		while (received < counters.messages or next(pending_iq)) and socket.gettime() < deadline do
			pump_all();
			socket.sleep(0.02);
		end
		local elapsed = socket.gettime() - t0;
		local rss_end = gc_rss();
		rss_warm = rss_warm or rss_end;
		for i = 1, USERS do clients[i].v:close(); end

		log_figures{
			("soak: %.0f s, %d clients, Brisk modules: %s%s"):format(elapsed, USERS, H.describe_modules(mods),
				asan and " (ASan build)" or ""),
			("soak: %d messages sent, %d received (%.0f/s); %d presence changes; %d roster changes;"
				.. " %d reconnects; %d of %d iqs answered"):format(counters.messages, received,
				received / elapsed, counters.presences, counters.roster, counters.reconnects,
				counters.iq_answered, counters.iq_sent),
			("soak: server RSS %d kB at start, %d kB after warm-up, %d kB at the end (growth %d kB, bound %d kB),"
				.. " peak %d kB"):format(rss_start or 0, rss_warm or 0, rss_end or 0, (rss_end or 0) - (rss_warm or 0),
				RSS_BOUND_KB, rss_peak or 0),
		};
		assert.same({}, problems);
		assert.equal(counters.messages, received, "messages lost");
		assert.is_nil(next(pending_iq), "iqs never answered");
		assert.is_true(rss_end - rss_warm <= RSS_BOUND_KB, ("server RSS grew %d kB after warm-up (bound %d kB)")
			:format(rss_end - rss_warm, RSS_BOUND_KB));
		assert.same({}, srv:errors());
	end);

	local lsan_it = asan and it or pending;
	lsan_it("the workload in miniature leaks nothing under LeakSanitizer", function ()
		-- spec/helpers/init.lua took libasan out of this process's
		-- environment; the child gets it back, with leak detection on.
		-- Prosody's util.encodings is preloaded so that dlclose at exit
		-- cannot unmap ICU while its static caches still point at memory
		-- (LSan would report them; with the library kept mapped they are
		-- reachable, as they are in a running server).
		local preload = os.getenv("BRISK_ASAN_PRELOAD") .. ":" .. prosody.lib() .. "/util/encodings.so";
		local cmd = ("env LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 lua5.4 %s %d 2>&1")
			:format(prosody.shell_quote(preload), prosody.shell_quote(prosody.root .. "/spec/helpers/lsan_workload.lua"),
				tonumber(os.getenv("BRISK_LSAN_ROUNDS")) or 300);
		local f = assert(io.popen(cmd));
		local out = f:read("a");
		local ok = f:close();
		log_figures{ "lsan: " .. out:gsub("\n$", ""):gsub("\n", "\nlsan: ") };
		assert.is_nil(out:match("LeakSanitizer"), out);
		assert.is_nil(out:match("AddressSanitizer"), out);
		assert.is_true(ok, out);
	end);
end);
