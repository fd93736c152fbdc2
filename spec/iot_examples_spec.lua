-- The example hook scripts (examples/iot/*.lua) on a live server, and hook
-- scripts reloaded on config reload.
local prosody = require "spec.helpers.prosody";
local sh = prosody.sh;
local write = prosody.write_file;
local st = require "util.stanza";
local socket = require "socket";



describe("example hook scripts", function ()
	local srv, ops, scriptdir;

	setup(function ()
		scriptdir = sh("mktemp -d /tmp/brisk-iot-scripts-XXXXXX"):gsub("%s+$", "");
		write(scriptdir .. "/reload.lua", [[on("online", "probe@*", function (ev) send_message(config.ops, "version 1") end)]]);
		srv = prosody.start{
			host_modules = { "brisk_iot" };
			accounts = { ["freezer-1"] = "pw", ["sensor-1"] = "pw", ["flappy-1"] = "pw", ops = "pw", probe = "pw" };
			host_config = {
				iot_devices = { "freezer-*@localhost", "sensor-*@localhost", "flappy-*@localhost", "probe@localhost" };
				iot_tick_interval = 0.05;
				iot_hook_scripts = { prosody.root .. "/examples/iot/*.lua", scriptdir .. "/*.lua" };
				iot_script_config = { ops = "ops@localhost", battery_below = 20, offline_after = 1 };
				iot_rules = {
					{ name = "freezer-offline", match = "freezer-*@localhost", on = "offline", after = 1, log = "info" },
					{ name = "flapping", match = "flappy-*@localhost", on = "flapping", transitions = 4, within = 30, log = "warn" },
				};
			};
		};
		ops = srv:connect("ops", "pw", "ops");
		ops:send(st.presence());
		-- A round trip, so that ops is available before any device acts.
		assert(ops:iq(st.iq({ type = "get", to = "localhost", id = "sync" }):tag("ping", { xmlns = "urn:xmpp:ping" })));
	end);

	teardown(function ()
		if srv then srv:stop(); end
		if scriptdir then os.execute("rm -rf " .. scriptdir); end
	end);

	local function expect(pattern, timeout)
		local m = ops:receive(timeout or 5, function (s)
			return s.name == "message" and (s:get_child_text("body") or ""):find(pattern) ~= nil;
		end);
		return m and m:get_child_text("body");
	end

	it("inventory: reports new devices with model and firmware, and upgrades", function ()
		local c = srv:connect("freezer-1", "pw", "f");
		c:send(st.presence():tag("device", { xmlns = "urn:example:device", model = "FRZ-2", firmware = "1.4.2" }):up());
		local body = expect("INVENTORY: new device freezer%-1");
		assert.matches("model FRZ%-2, firmware 1%.4%.2", body);
		assert.matches("1 devices: 1 online, 0 offline; models FRZ%-2=1", body);
		c:send(st.presence():tag("device", { xmlns = "urn:example:device", model = "FRZ-2", firmware = "1.5.0" }):up());
		assert.matches("1%.4%.2 %-> 1%.5%.0", expect("INVENTORY: freezer%-1@localhost firmware"));
		c:close();
	end);

	it("offline alert: pages after the rule confirms, then resolves", function ()
		local c = srv:connect("freezer-1", "pw", "f");
		c:send(st.presence());
		local t0 = socket.gettime();
		c:kill();
		local body = expect("ALERT: freezer%-1@localhost has been offline for 1s %(rule freezer%-offline%)");
		assert.truthy(body);
		assert.is_true(socket.gettime() - t0 >= 0.9);
		socket.sleep(0.2);
		c = srv:connect("freezer-1", "pw", "f");
		c:send(st.presence());
		assert.truthy(expect("RESOLVED: freezer%-1@localhost is back after 1s offline"));
		c:close();
	end);

	it("low battery: warns once per crossing, from status or payload", function ()
		local c = srv:connect("sensor-1", "pw", "s");
		c:send(st.presence():text_tag("status", "battery=50"));
		c:send(st.presence():text_tag("status", "battery=12"));
		assert.truthy(expect("LOW BATTERY: sensor%-1@localhost at 12%%"));
		c:send(st.presence():text_tag("status", "battery=11"));
		c:send(st.presence():tag("battery", { xmlns = "urn:example:battery", level = "80" }):up());
		c:send(st.presence():tag("battery", { xmlns = "urn:example:battery", level = "5" }):up());
		assert.truthy(expect("LOW BATTERY: sensor%-1@localhost at 5%%"));
		assert.is_nil(expect("at 11%%", 0.5));
		c:close();
	end);

	it("flapping: tells the on-call once", function ()
		for _ = 1, 3 do
			local c = srv:connect("flappy-1", "pw", "x");
			c:send(st.presence());
			c:close();
		end
		assert.matches("changed state 4 times within 30s", expect("FLAPPING: flappy%-1@localhost"));
		assert.is_nil(expect("FLAPPING", 0.5));
	end);

	it("reloads hook scripts on config reload", function ()
		local c = srv:connect("probe", "pw", "p");
		c:send(st.presence());
		assert.truthy(expect("version 1"));
		c:close();
		write(scriptdir .. "/reload.lua", [[on("online", "probe@*", function (ev) send_message(config.ops, "version 2") end)]]);
		srv:signal("HUP");
		assert(prosody.wait_for(function ()
			local n = 0;
			for _ in srv:log_text():gmatch("Loaded 5 hook script") do n = n + 1; end
			return n >= 2;
		end, 10, 0.05));
		c = srv:connect("probe", "pw", "p");
		c:send(st.presence());
		assert.truthy(expect("version 2"));
		c:close();
	end);

	it("ran every example without an error", function ()
		assert.same({}, srv:errors());
		assert.matches("Loaded 5 hook script%(s%): flapping.lua, inventory.lua, low_battery.lua, offline_alert.lua, reload.lua", srv:log_text());
	end);
end);
