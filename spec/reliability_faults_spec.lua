-- spec/reliability_faults_spec.lua — faults around a live Prosody with every
-- Brisk module that exists, next to a stock one: configuration reload
-- (SIGHUP) and module reloads while clients are connected and stanzas are in
-- flight; the storage disk filling up or turning read-only during roster
-- writes (a real tmpfs, so root only); webhook endpoints that hang, refuse,
-- fail or crawl (with mod_brisk_iot).
local prosody = require "spec.helpers.prosody";
local H = require "spec.helpers.hostile";
local st = require "util.stanza";
local socket = require "socket";

local mods = H.brisk_modules();
local ACCOUNTS = { alice = "pw", bob = "pw" };
local verbose = os.getenv("BRISK_VERBOSE") == "1";

local function is_root()
	local f = io.popen("id -u");
	local id = f:read("a");
	f:close();
	return id:match("^0%s") ~= nil;
end

-- Send n messages alice -> bob in batches, run `action` halfway without
-- waiting for deliveries, then check bob got exactly 1..n in order.
local function flow(alice, bob, n, action, tag)
	local half = n // 2;
	for i = 1, n do
		alice:send(st.message({ to = "bob@localhost/flow", type = "chat", id = tag .. "-" .. i })
			:text_tag("body", tostring(i)));
		if i == half then action(); end
	end
	local got, last, in_order = 0, 0, true;
	while got < n do
		local m = bob:take(10, function (s) return s.name == "message"; end);
		if not m then break; end
		local id = m.attr.id or "";
		local k = id:sub(1, #tag + 1) == tag .. "-" and tonumber(id:sub(#tag + 2));
		if k then
			if k ~= last + 1 then in_order = false; end
			last, got = k, got + 1;
		end
	end
	return got, in_order;
end

local iq_ids = 0;
local function iq(attr)
	iq_ids = iq_ids + 1;
	attr.id = "fault-" .. iq_ids;
	return st.iq(attr);
end

local function still_talking(srv, alice, bob, tag)
	alice:send(st.message({ to = "bob@localhost/flow", type = "chat", id = tag }):text_tag("body", "x"));
	assert.truthy(bob:take(10, function (s) return s.attr.id == tag; end), "no message after " .. tag);
	local c = srv:connect("alice", "pw", "fresh-" .. tag);
	local roster = c:iq(iq({ type = "get" }):tag("query", { xmlns = "jabber:iq:roster" }), 10);
	assert.truthy(roster and roster.attr.type == "result", "roster get failed after " .. tag);
	c:close();
end

local function tracebacks(srv)
	local out = {};
	for _, e in ipairs(srv:errors()) do
		if e:match("[Tt]raceback") or e:match("[Ss]anitizer") or e:match("runtime error") then out[#out + 1] = e; end
	end
	return out;
end

describe("reloads with stanzas in flight (Brisk modules: " .. H.describe_modules(mods) .. ")", function ()
	local servers = {};
	setup(function ()
		servers.stock = { srv = prosody.start{ accounts = ACCOUNTS }, reload = { "roster" } };
		local reload = { "roster" };
		for _, m in ipairs{ "brisk_xml", "storage_brisk", "brisk_iot" } do
			if mods[m] then reload[#reload + 1] = m; end
		end
		servers.brisk = { srv = prosody.start(H.brisk_options({ accounts = ACCOUNTS }, mods)), reload = reload };
		for _, s in pairs(servers) do
			s.alice = s.srv:connect("alice", "pw", "flow");
			s.bob = s.srv:connect("bob", "pw", "flow");
			s.bob:send(st.presence());
			while s.bob:receive(0.2) do end
			s.bob = H.victim(s.bob);
		end
	end);
	teardown(function ()
		for _, s in pairs(servers) do s.srv:stop(); end
	end);

	for _, label in ipairs{ "stock", "brisk" } do
		it(label .. ": SIGHUP (configuration reload) loses no stanza", function ()
			local s = servers[label];
			local got, in_order = flow(s.alice, s.bob, 400, function ()
				s.srv:signal("HUP");
			end, "hup");
			assert.equal(400, got);
			assert.is_true(in_order);
			assert.truthy(prosody.wait_for(function ()
				return s.srv:log_text():match("Reloading configuration") ~= nil;
			end, 10), "Prosody never reloaded its configuration");
			still_talking(s.srv, s.alice, s.bob, "after-hup");
		end);

		it(label .. ": module reloads lose no stanza and keep sessions", function ()
			local s = servers[label];
			local function installs()
				local n = 0;
				for _ in s.srv:log_text():gmatch("brisk%.xml [^\n]*installed") do n = n + 1; end
				return n;
			end
			for _, name in ipairs(s.reload) do
				local out, ok;
				local installed = installs();
				local got, in_order = flow(s.alice, s.bob, 200, function ()
					out, ok = s.srv:prosodyctl("shell", "module", "reload", name);
				end, "reload-" .. name);
				if verbose then print(label, "reload", name, out); end
				assert.truthy(ok, "prosodyctl shell module:reload('" .. name .. "') failed: " .. tostring(out));
				assert.matches("Module reloaded", out);
				assert.equal(200, got, "messages lost around reloading " .. name);
				assert.is_true(in_order, "messages reordered around reloading " .. name);
				still_talking(s.srv, s.alice, s.bob, "after-reload-" .. name);
				if name == "brisk_xml" then
					-- Unloaded (stock code back) and loaded again (Brisk's again).
					assert.equal(installed + 1, installs(), "brisk.xml was not installed again by the reload");
				end
			end
		end);
	end

	it("no tracebacks, and no error Brisk logged that stock did not", function ()
		assert.same({}, tracebacks(servers.brisk.srv));
		assert.same({}, H.extra_errors(servers.brisk.srv, servers.stock.srv));
	end);
end);

------------------------------------------------------------------------
-- Storage faults. The server's data folder (rosters, and Brisk's SQLite
-- database) is a small ext4 file system of its own, loop-mounted: filling it
-- makes every write that needs new space fail with ENOSPC; marking every
-- file and folder on it immutable (chattr +i, which binds root too and even
-- descriptors already open) makes every write fail with EPERM, the closest
-- a root process gets to a read-only database. Needs root and loop devices
-- (CI runs as root); otherwise pending.

local function sh(cmd)
	local ok = os.execute(cmd);
	return ok;
end
local q = prosody.shell_quote;

local function mount_fs(image, dir)
	return sh("truncate -s 8M " .. q(image) .. " && mkfs.ext4 -q -m 0 " .. q(image) .. " >/dev/null 2>&1"
		.. " && mount -o loop " .. q(image) .. " " .. q(dir) .. " 2>/dev/null");
end

local function unmount_fs(image, dir)
	sh("chattr -R -i " .. q(dir) .. " 2>/dev/null; umount " .. q(dir) .. " 2>/dev/null || umount -l " .. q(dir));
	os.remove(image);
end

-- Can this process loop-mount a file system? Tried once, on a scratch folder.
local function can_mount()
	if not is_root() or os.getenv("BRISK_NO_MOUNT") == "1" then return false; end
	local dir = (io.popen("mktemp -d /tmp/brisk-mount-XXXXXX"):read("l"));
	local ok = mount_fs(dir .. ".img", dir);
	if ok then unmount_fs(dir .. ".img", dir); end
	os.remove(dir .. ".img");
	os.remove(dir);
	return ok;
end

local function roster_set(c, jid, name)
	local reply = c:iq(iq({ type = "set" }):tag("query", { xmlns = "jabber:iq:roster" })
		:tag("item", { jid = jid, name = name }), 15);
	if not reply then return "timeout"; end
	if reply.attr.type == "result" then return "ok"; end
	local err = reply:get_child("error");
	local cond = err and err.tags[1] and err.tags[1].name or "?";
	return "error:" .. (err and err.attr.type or "?") .. ":" .. cond;
end

local function roster_jids(c)
	local reply = c:iq(iq({ type = "get" }):tag("query", { xmlns = "jabber:iq:roster" }), 15);
	assert(reply and reply.attr.type == "result", "roster get failed: " .. tostring(reply));
	local set = {};
	for item in reply:get_child("query", "jabber:iq:roster"):childtags("item") do set[item.attr.jid] = true; end
	return set;
end

local storage_describe = can_mount() and describe or function (name)
	describe(name, function ()
		pending("needs root and a loop device to mount a small file system (CI runs as root)");
	end);
end;

storage_describe("storage faults during roster writes (Brisk modules: " .. H.describe_modules(mods) .. ")", function ()
	local servers = {};
	local function mounted_server(opts)
		opts.prepare = function (srv)
			srv.image = srv.dir .. "/data.img";
			assert(mount_fs(srv.image, srv.dir .. "/data"), "loop mount failed");
			srv.mounted = srv.dir .. "/data";
		end;
		return prosody.start(opts);
	end
	setup(function ()
		servers.stock = { srv = mounted_server{ accounts = ACCOUNTS } };
		if mods.storage_brisk then
			servers.brisk = { srv = mounted_server(H.brisk_options({ accounts = ACCOUNTS }, mods)) };
		end
	end);
	teardown(function ()
		for _, s in pairs(servers) do
			s.srv:stop();
			if s.srv.mounted then unmount_fs(s.srv.image, s.srv.mounted); end
		end
	end);

	-- Fill the file system to the last block.
	local function fill(srv)
		sh("dd if=/dev/zero of=" .. q(srv.mounted .. "/filler") .. " bs=4k >/dev/null 2>&1");
	end
	local function unfill(srv)
		os.remove(srv.mounted .. "/filler");
	end

	for _, fault in ipairs{
		{ "a full disk", fill, unfill },
		{ "immutable storage files", function (srv)
			-- All but SQLite's shared-memory index (*-shm): SQLite maps it into
			-- memory, and a store into a mapped page of an immutable file is a
			-- SIGBUS, for any SQLite user (mod_storage_sql too); the database
			-- and its write-ahead log are what "read-only storage" means.
			assert(sh("find " .. q(srv.mounted) .. " ! -name '*-shm' -exec chattr +i {} +"));
		end, function (srv)
			assert(sh("chattr -R -i " .. q(srv.mounted)));
		end },
	} do
		local fault_name, inject, repair = fault[1], fault[2], fault[3];
		for _, label in ipairs{ "stock", "brisk" } do
			it(label .. ": " .. fault_name .. " during roster writes: errors, nothing acknowledged lost, recovery", function ()
				local s = servers[label];
				if not s then pending("mod_storage_brisk does not exist yet"); return; end
				local tag = fault_name:gsub("%W", "");
				local c = s.srv:connect("alice", "pw", "roster-" .. tag);
				assert.equal("ok", roster_set(c, "before-" .. tag .. "@example.com", "before"));
				inject(s.srv);
				-- Big names so that every write needs new pages or file space.
				local outcomes, acked, refused = {}, {}, {};
				local big = string.rep("n", 3000);
				for i = 1, 12 do
					local jid = "during-" .. tag .. i .. "@example.com";
					local r = roster_set(c, jid, big .. i);
					outcomes[#outcomes + 1] = r;
					if r == "ok" then acked[jid] = true; else refused[jid] = r; end
				end
				if verbose then print(label, fault_name, table.concat(outcomes, " ")); end
				assert.is_true(prosody.pid_alive(s.srv.pid), "server died");
				assert.truthy(next(refused), label .. ": the fault refused no write (" .. table.concat(outcomes, " ") .. ")");
				for _, r in pairs(refused) do
					assert.equal("error:wait:internal-server-error", r);
				end
				repair(s.srv);
				assert.equal("ok", roster_set(c, "after-" .. tag .. "@example.com", "after"));
				c:close();
				-- What survives a restart is what was acknowledged, no more.
				s.srv:restart();
				local c2 = s.srv:connect("alice", "pw", "check-" .. tag);
				local have = roster_jids(c2);
				assert.truthy(have["before-" .. tag .. "@example.com"]);
				assert.truthy(have["after-" .. tag .. "@example.com"]);
				for jid in pairs(acked) do assert.truthy(have[jid], "acknowledged but lost: " .. jid); end
				for jid in pairs(refused) do assert.falsy(have[jid], "refused but stored: " .. jid); end
				c2:close();
				assert.same({}, tracebacks(s.srv));
			end);
		end
	end
end);

------------------------------------------------------------------------
-- Webhook endpoints that misbehave, with mod_brisk_iot. The module's
-- timeouts and backoff are shortened (0.5 s timeout, 0.05–0.2 s backoff, 3
-- retries), so that a few seconds of each misbehaviour go through as many
-- attempts, retries and drops as minutes would with the defaults. Its owner's
-- specs check retry semantics and signatures; this checks that nothing
-- grows: queue within its bound, endpoint connections within the
-- concurrency, server memory flat, other clients unaffected, and recovery.

local webhook_describe = mods.brisk_iot and describe or function (name)
	describe(name, function () pending("mod_brisk_iot does not exist yet"); end);
end;

webhook_describe("webhook endpoint faults (mod_brisk_iot)", function ()
	local srv, ep, probe;
	local QUEUE, CONCURRENCY = 20, 2;
	local PHASE = tonumber(os.getenv("BRISK_WEBHOOK_PHASE_SECONDS")) or 3;
	local DEVICES = 4;
	local accounts = { carol = "pw", dave = "pw" };
	for i = 1, DEVICES do accounts["dev" .. i] = "pw"; end
	setup(function ()
		ep = H.http_endpoint("refuse");
		local secret = "whsec_" .. require "util.encodings".base64.encode(string.rep("k", 24));
		srv = prosody.start(H.brisk_options({
			accounts = accounts;
			log_level = "info";
			-- Under ASan, a small quarantine: its default holds up to 256 MB of
			-- freed memory, which would read as growth.
			env = os.getenv("BRISK_ASAN") == "1"
				and { ASAN_OPTIONS = (os.getenv("ASAN_OPTIONS") or "") .. ":quarantine_size_mb=16" } or nil;
			host_config = {
				iot_devices = { "dev*@localhost" };
				iot_tick_interval = 0.05;
				iot_webhook_queue_size = QUEUE;
				iot_webhook_concurrency = CONCURRENCY;
				iot_webhook_retries = 3;
				iot_webhook_backoff = 0.05;
				iot_webhook_max_backoff = 0.2;
				iot_webhook_timeout = 0.5;
				iot_rules = {
					{ name = "every-state", on = "state", match = "dev*@localhost", webhook = ep.url, secret = secret },
				};
			};
		}, mods));
		probe = H.probe(srv, "carol", "dave", "pw");
	end);
	teardown(function ()
		if srv then srv:stop(); end
		if ep then ep:close(); end
	end);

	local function stats()
		local out = srv:prosodyctl("shell", "iot:stats()");
		local s = {};
		for k, v in out:gmatch("(%a+) (%d+)") do s[k] = tonumber(v); end
		s.raw = out;
		return s;
	end

	local function gc_rss()
		srv:prosodyctl("shell", "> collectgarbage('collect') collectgarbage('collect')");
		return srv:rss_kb();
	end
	local RSS_BOUND_KB = os.getenv("BRISK_ASAN") == "1" and 24576 or 8192;

	it("refusing, hanging, failing and slow endpoints: bounded queue, connections and memory; recovery", function ()
		local devices = {};
		for i = 1, DEVICES do
			devices[i] = H.adopt(srv:connect("dev" .. i, "pw", "sensor"));
			devices[i]:send("<presence/>");
		end
		local n, rss_first = 0, nil;
		local figures = {};
		for _, mode in ipairs{ "refuse", "hang", "500", "slow", "ok" } do
			ep:set_mode(mode);
			probe:reset();
			local max_conns = 0;
			local stop_at = socket.gettime() + PHASE;
			while socket.gettime() < stop_at do
				n = n + 1;
				for i = 1, DEVICES do
					devices[i]:send("<presence><status>reading " .. n .. "</status></presence>");
					devices[i]:drain(0);
				end
				ep:pump();
				if ep:open_connections() > max_conns then max_conns = ep:open_connections(); end
				probe:maybe_ping(0.1);
				socket.sleep(0.02);
			end
			local s = stats();
			local rss = gc_rss();
			rss_first = rss_first or rss;
			figures[#figures + 1] = ("%s: %d state changes so far, queued %s, sent %s, failed %s, dropped %s,"
				.. " retried %s, endpoint connections max %d, probe worst %.3f s, RSS %d kB"):format(mode, n * DEVICES,
				tostring(s.queued), tostring(s.sent), tostring(s.failed), tostring(s.dropped), tostring(s.retried),
				max_conns, probe.worst, rss);
			assert.is_true(prosody.pid_alive(srv.pid), "server died with a " .. mode .. " endpoint");
			assert.truthy(s.queued, "no webhook figures from iot:stats(): " .. s.raw);
			assert.is_true(s.queued <= QUEUE, mode .. ": " .. s.queued .. " queued, bound " .. QUEUE);
			-- The server's own connections plus those it abandoned on a
			-- timeout and has not closed yet; never a growing pile.
			assert.is_true(max_conns <= 2 * CONCURRENCY, mode .. ": " .. max_conns .. " connections to the endpoint");
			assert.equal(0, probe.lost);
			assert.is_true(probe.worst < 2, mode .. ": probe round trip " .. probe.worst);
		end
		-- Recovery: with the endpoint healthy and the devices quiet, the
		-- queue drains.
		local drained = prosody.wait_for(function ()
			for _ = 1, 20 do ep:pump(); socket.sleep(0.01); end
			return stats().queued == 0;
		end, 15, 0);
		local s = stats();
		local rss_end = gc_rss();
		figures[#figures + 1] = ("after recovery: queued %d, sent %d, dropped %d; RSS %d kB (%d kB after the first phase)")
			:format(s.queued, s.sent, s.dropped, rss_end, rss_first);
		print("\n" .. table.concat(figures, "\n"));
		assert.is_true(drained, "webhook queue never drained: " .. s.raw);
		assert.is_true(s.sent > 0 and s.dropped > 0);
		assert.is_true(rss_end - rss_first < RSS_BOUND_KB, "server memory grew during webhook faults");
		assert.same({}, tracebacks(srv));
		for i = 1, DEVICES do devices[i]:close(); end
	end);
end);
