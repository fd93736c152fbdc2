-- mod_brisk_iot_shell — mod_brisk_iot's commands in `prosodyctl shell`:
--
--   iot:devices([host], [pattern], [limit])   devices and their state
--   iot:stats([host])                         counts, engine memory, webhook and MQTT counters
--
-- and on Prosody 13 also `prosodyctl shell iot devices [host] ...` and
-- `help iot`. Without a host they cover every host running mod_brisk_iot.
--
-- A global module, loaded by mod_brisk_iot itself (module:depends), so it
-- need not be listed anywhere. Commands live once per server while device
-- state lives per host, so each host registers its listing functions in a
-- shared registry, and the commands walk it. Prosody 0.12's mod_admin_shell
-- reads commands from its shared console environment; 13's takes them as
-- "shell-command" items, and only global ones may leave out a host selector:
-- registering them here, on the global module, is what lets `iot:devices()`
-- mean every host on 13 as on 0.12.
module:set_global();

local time_now = require "brisk.prosody".lib("util.time").now;

-- registry[host] = { list = function (pattern, limit), stats = function () }
local registry = module:shared("/*/brisk_iot/hosts");

local function format_device(d, now)
	return ("%-40s %-8s %8.0fs%s%s"):format(d.jid, d.state, now - d.since,
		d.flapping and " flapping" or "",
		d.show_class and d.show_class ~= "" and (" " .. d.show_class) or "");
end

-- Hosts in a stable order, all or the one asked for.
local function selected(h)
	local names = {};
	for name in pairs(registry) do
		if not h or h == name then names[#names + 1] = name; end
	end
	table.sort(names);
	return names;
end

local function devices(self, h, pattern, limit)
	local print = self.session.print;
	local count = 0;
	local now = time_now();
	local hosts = selected(h);
	if h and #hosts == 0 then return false, ("mod_brisk_iot is not loaded on %s"):format(h); end
	for _, name in ipairs(hosts) do
		local list, err = registry[name].list(pattern, limit or 1000);
		if not list then return false, err; end
		for _, d in ipairs(list) do print(format_device(d, now)); count = count + 1; end
	end
	return true, ("%d device(s)"):format(count);
end

local function stats(self, h)
	local print = self.session.print;
	local hosts = selected(h);
	if h and #hosts == 0 then return false, ("mod_brisk_iot is not loaded on %s"):format(h); end
	for _, name in ipairs(hosts) do
		local s = registry[name].stats();
		print(("%s: %d devices, %d online, %d offline, %d unknown, %d timers, %d bytes; webhooks sent %d, failed %d, dropped %d, retried %d, queued %d; hook errors %d")
			:format(name, s.devices, s.online, s.offline, s.unknown, s.timers, s.memory,
			s.webhook.sent, s.webhook.failed, s.webhook.dropped, s.webhook.retried, s.webhook.queued, s.hook_errors));
		local m = s.mqtt;
		if m and m.state == "closed" then
			print(("%s: MQTT %s (closed)"):format(name, m.broker));
		elseif m then
			print(("%s: MQTT %s (%s, MQTT %d): sent %d, queued %d, in flight %d, dropped %d, refused %d, %d bytes")
				:format(name, m.broker, m.state, m.protocol, m.sent, m.queued, m.inflight, m.dropped, m.refused, m.memory));
		end
	end
	return true, ("%d host(s)"):format(#hosts);
end

-- Prosody 0.12: the console environment.
local console_env = module:shared("/*/admin_shell/env");
console_env.iot = console_env.iot or {};
console_env.iot.devices, console_env.iot.stats = devices, stats;

-- Prosody 13: shell-command items (0.12 ignores them).
local section = { section = "iot"; section_desc = "IoT devices (mod_brisk_iot)" };
local function command(name, desc, args, handler)
	local item = { name = name; desc = desc; args = args; handler = handler };
	for k, v in pairs(section) do item[k] = v; end
	module:add_item("shell-command", item);
end
command("devices", "List devices and their state (every host unless one is given)", {
	{ name = "host", type = "string" }; { name = "pattern", type = "string" }; { name = "limit", type = "number" };
}, devices);
command("stats", "Device counts, engine memory, webhook and MQTT counters", {
	{ name = "host", type = "string" };
}, stats);

function module.unload()
	if console_env.iot and console_env.iot.devices == devices then
		console_env.iot = nil;
	end
end
