-- low_battery.lua — warn when a device reports a low battery.
--
-- Devices report the level either in their status ("battery=15") or in an
-- extension element of their presence:
--   <presence><battery xmlns="urn:example:battery" level="15"/></presence>
-- The warning is sent once when the level drops below the threshold
-- (iot_script_config.battery_below, default 20), and again only after the
-- level has recovered above it.

local ops = config.ops or "ops@localhost";
local threshold = config.battery_below or 20;
store.low = {};

local function level(ev)
	local from_status = ev.status and ev.status:match("battery=(%d+)");
	if from_status then return tonumber(from_status); end
	local from_xml = ev.xml and ev.xml:match("<battery[^>]-level=['\"](%d+)['\"]");
	return from_xml and tonumber(from_xml);
end

local function check(ev)
	local lvl = level(ev);
	if not lvl then return; end
	if lvl < threshold then
		if not store.low[ev.jid] then
			store.low[ev.jid] = lvl;
			send_message(ops, ("LOW BATTERY: %s at %d%%"):format(ev.jid, lvl));
		end
	else
		store.low[ev.jid] = nil;
	end
end

on("online", check);
on("state", check);
