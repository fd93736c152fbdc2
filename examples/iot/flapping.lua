-- flapping.lua — report devices whose connection keeps dropping.
--
-- Flapping events come from a rule such as
--   { name = "flapping", on = "flapping", transitions = 5, within = 60, log = "warn" }
-- This script tells the on-call JID, at most once per device per
-- iot_script_config.flapping_quiet seconds (default 300).

local ops = config.ops or "ops@localhost";
local quiet = config.flapping_quiet or 300;
store.last = {};

on("flapping", function (ev)
	local last = store.last[ev.jid];
	if last and ev.time - last < quiet then return; end
	store.last[ev.jid] = ev.time;
	send_message(ops, ("FLAPPING: %s changed state %d times within %ds, now %s")
		:format(ev.jid, ev.transitions, ev.within, ev.state));
	log("warn", "%s is flapping", ev.jid);
end);
