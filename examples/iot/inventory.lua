-- inventory.lua — keep an inventory of the fleet from presence.
--
-- Devices announce what they are in their presence:
--   <presence><device xmlns="urn:example:device" model="FRZ-2" firmware="1.4.2"/></presence>
-- The script remembers every device it has seen (model, firmware, state,
-- last change) and tells the on-call JID, with a summary of the fleet,
-- when a device appears for the first time or changes firmware.

local ops = config.ops or "ops@localhost";
store.devices = {};
store.count = 0;

local function attr(xml, name)
	return xml and xml:match("<device[^>]-" .. name .. "=['\"]([^'\"]*)['\"]");
end

local function summary()
	local by_state, by_model = {}, {};
	for _, d in pairs(store.devices) do
		by_state[d.state] = (by_state[d.state] or 0) + 1;
		if d.model then by_model[d.model] = (by_model[d.model] or 0) + 1; end
	end
	local models = {};
	for m, n in pairs(by_model) do models[#models + 1] = m .. "=" .. n; end
	table.sort(models);
	return ("%d devices: %d online, %d offline; models %s"):format(store.count,
		by_state.online or 0, by_state.offline or 0, #models > 0 and table.concat(models, ", ") or "none");
end

on("*", function (ev)
	local d = store.devices[ev.jid];
	if not d then
		d = { first_seen = ev.time };
		store.devices[ev.jid] = d;
		store.count = store.count + 1;
	end
	local model, firmware = attr(ev.xml, "model"), attr(ev.xml, "firmware");
	local new = d.state == nil;
	local upgraded = firmware and d.firmware and firmware ~= d.firmware;
	local old_fw = d.firmware;
	d.state, d.changed = ev.state, ev.time;
	d.model = model or d.model;
	d.firmware = firmware or d.firmware;
	if new then
		send_message(ops, ("INVENTORY: new device %s (model %s, firmware %s); %s")
			:format(ev.jid, d.model or "?", d.firmware or "?", summary()));
	elseif upgraded then
		send_message(ops, ("INVENTORY: %s firmware %s -> %s"):format(ev.jid, old_fw, firmware));
	end
end);
