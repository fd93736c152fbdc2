-- offline_alert.lua — page the on-call JID when a device has stayed offline.
--
-- Pair it with a rule that has "after", so that the engine confirms the
-- device is still offline before anyone is paged, e.g. in prosody.cfg.lua:
--   iot_rules = { { name = "freezer-offline", match = "freezer-*@devices.example.com",
--                   on = "offline", after = 60, log = "info" } }
--   iot_hook_scripts = { "/etc/prosody/iot/*.lua" }
--   iot_script_config = { ops = "ops@example.com" }
-- Every offline transition reaches this script at once with ev.after == 0;
-- the rule's confirmation arrives later with ev.after == 60.

local ops = config.ops or "ops@localhost";
local pattern = config.offline_match or "*";

on("offline", pattern, function (ev)
	if ev.after == 0 then return; end -- not confirmed yet
	store.alerts = (store.alerts or 0) + 1;
	send_message(ops, ("ALERT: %s has been offline for %ds (rule %s)"):format(ev.jid, ev.after, ev.rule or "?"));
	log("warn", "%s offline for %ds", ev.jid, ev.after);
end);

-- Tell the on-call when an alerted device is back.
on("online", pattern, function (ev)
	if ev.after == 0 and ev.previous == "offline" and ev.duration >= (config.offline_after or 60) then
		send_message(ops, ("RESOLVED: %s is back after %ds offline"):format(ev.jid, math.floor(ev.duration)));
	end
end);
