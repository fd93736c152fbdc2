-- spec/foundation_run_spec.lua — `make run` as a user would: it starts a
-- real Prosody with examples/prosody.cfg.lua, the demo accounts log in and
-- talk, and Ctrl-C (SIGINT to the process group) stops it cleanly. As root,
-- the same again as an unprivileged user.
local prosody = require "spec.helpers.prosody";
local sh = prosody.sh;
local st = require "util.stanza";
local q = prosody.shell_quote;


local function run_make_run(as_user, extra_env)
	local dir = sh("mktemp -d /tmp/brisk-makerun-XXXXXX"):gsub("%s+$", "");
	local port, http_port = prosody.free_port(), prosody.free_port();
	local env = string.format("BRISK_RUN_DIR=%s BRISK_C2S_PORT=%d BRISK_HTTP_PORT=%d BRISK_LOG_LEVEL=info BRISK_IOT_OFFLINE_AFTER=1 %s",
		q(dir .. "/run"), port, http_port, extra_env or "");
	local cmd = string.format("cd %s && %s make -s run", q(prosody.root), env);
	if as_user then
		os.execute("chmod 777 " .. q(dir));
		cmd = string.format("runuser -u %s -- env HOME=%s sh -c %s", as_user, q(dir), q(cmd));
	end
	-- setsid: its own process group, so SIGINT reaches it as Ctrl-C would.
	local pid = tonumber(sh(string.format("setsid sh -c %s >%s 2>&1 </dev/null & echo $!",
		q(cmd), q(dir .. "/out.log"))):match("%d+"));
	return { pid = pid, dir = dir, port = port, out = function ()
		local f = io.open(dir .. "/out.log");
		local s = f and f:read("a") or "";
		if f then f:close(); end
		return s;
	end };
end

local function exercise(run)
	assert.truthy(prosody.wait_for(function ()
		return run.out():match("Activated service 'c2s'") ~= nil;
	end, 60), "make run did not start:\n" .. run.out());
	assert.truthy(run.out():match("log in as alice@localhost"), "no line saying how to connect");
	local srv = prosody.attach(run.port, "localhost");
	local alice, bob;
	assert.truthy(prosody.wait_for(function ()
		local ok, c = pcall(srv.connect, srv, "alice", "alice", "desk");
		if ok then alice = c; end
		return ok;
	end, 30), "alice cannot log in");
	bob = srv:connect("bob", "bob", "phone");
	bob:send(st.presence());
	alice:send(st.message({ to = "bob@localhost/phone", type = "chat" }):text_tag("body", "hello from make run"));
	local msg = bob:receive(5, function (s) return s.name == "message"; end);
	assert.truthy(msg, "bob got nothing");
	assert.equal("hello from make run", msg:get_child_text("body"));
	-- Roster storage is Brisk's: a contact alice adds survives in its SQLite file.
	local set = alice:iq(st.iq({ type = "set", id = "r1" }):tag("query", { xmlns = "jabber:iq:roster" })
		:tag("item", { jid = "bob@localhost", name = "Bob" }));
	assert.equal("result", set and set.attr.type);
	-- The example hook scripts page alice when bob stays offline (1 s here).
	alice:send(st.presence());
	bob:kill();
	local page = alice:receive(10, function (s)
		return s.name == "message" and (s:get_child_text("body") or ""):match("^ALERT: bob@localhost");
	end);
	assert.truthy(page, "no offline alert from examples/iot/offline_alert.lua");
	alice:close();
	assert.truthy(io.open(run.dir .. "/run/data/brisk.sqlite"), "no Brisk SQLite file");
	os.execute("kill -INT -" .. run.pid);
	assert.truthy(prosody.wait_for(function ()
		return run.out():match("Shutdown complete") ~= nil;
	end, 20), "Ctrl-C did not stop it:\n" .. run.out());
	assert.falsy(run.out():match("\terror\t"), run.out());
	-- No warnings either (Prosody 13 warns about deprecated config syntax
	-- and refused shell commands), but for the one about Ctrl-C itself.
	for line in run.out():gmatch("[^\n]+") do
		if line:match("\twarn\t") and not line:match("Received SIGINT") then
			error("make run logged a warning: " .. line .. "\n" .. run.out());
		end
	end
	assert.truthy(run.out():match("brisk_xml"), "mod_brisk_xml not loaded:\n" .. run.out());
end

describe("make run", function ()
	it("serves the demo accounts and stops on Ctrl-C", function ()
		local run = run_make_run();
		local ok, err = pcall(exercise, run);
		os.execute("kill -KILL -" .. run.pid .. " 2>/dev/null");
		assert(ok, err);
	end);

	it("publishes the fleet to a private mosquitto with BRISK_MQTT=1", function ()
		local mqtt_port = prosody.free_port();
		local run = run_make_run(nil, "BRISK_MQTT=1 BRISK_MQTT_PORT=" .. mqtt_port);
		local ok, err = pcall(function ()
			local broker = require "spec.helpers.mosquitto".attach(mqtt_port);
			assert.truthy(prosody.wait_for(function ()
				return run.out():match("MQTT: connected to 127%.0%.0%.1") ~= nil;
			end, 60), "make run did not connect to its broker:\n" .. run.out());
			local srv = prosody.attach(run.port, "localhost");
			local bob = srv:connect("bob", "bob", "phone");
			bob:send(st.presence():text_tag("status", "on call"));
			assert.truthy(prosody.wait_for(function ()
				local s = broker:snapshot("brisk/localhost/#");
				return s["brisk/localhost/$server"] == "online" and (s["brisk/localhost/bob/state"] or ""):match('"on call"');
			end, 10), "bob's state is not in the broker");
			bob:close();
			os.execute("kill -INT -" .. run.pid);
			assert.truthy(prosody.wait_for(function ()
				return run.out():match("Shutdown complete") ~= nil
					-- "[m]": pgrep's own shell must not match itself.
					and not sh("pgrep -f " .. q("[m]osquitto -c " .. run.dir)):match("%d");
			end, 20), "Ctrl-C did not stop Prosody and mosquitto:\n" .. run.out());
		end);
		os.execute("kill -KILL -" .. run.pid .. " 2>/dev/null");
		assert(ok, err);
	end);

	it("works for an unprivileged user too", function ()
		if sh("id -u"):match("^0") == nil then
			return pending("not root: the first case already ran unprivileged");
		end
		local run = run_make_run("nobody");
		local ok, err = pcall(exercise, run);
		os.execute("kill -KILL -" .. run.pid .. " 2>/dev/null");
		assert(ok, err);
	end);
end);
