-- Differential spec of brisk.presence: the C engine against a plain Lua
-- model of the documented semantics (docs/iot.md, "Transitions" and the
-- edge-triggered status/show conditions of "Rules"), written for clarity,
-- on random rule sets and random presence/activity/tick streams. Every
-- event must agree: kind, device, rules, time, after, duration, previous
-- state and flapping count. The conditions are judged and latched the way
-- mod_brisk_iot did it in Lua before the engine owned them (latched[i][jid]).
local presence = require "brisk.presence";

local KINDS = { "online", "offline", "state", "flapping", "silent" };

local function glob_pattern(g)
	if not g:find("@") then g = "*@" .. g; end
	return "^" .. g:lower():gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$";
end

-- The model. Times are integer centiseconds throughout.
local function model(rules, selectors)
	local m = { devices = {}, order = {}, out = {} };
	local pats = {};
	for i, r in ipairs(rules) do pats[i] = r.match and glob_pattern(r.match); end
	local sel = {};
	for i, s in ipairs(selectors or {}) do sel[i] = glob_pattern(s); end
	-- Flapping detectors: distinct (transitions, within), in rule order.
	local dets, ring = {}, 0;
	for i, r in ipairs(rules) do
		if r.on == "flapping" then
			local w = math.floor(r.within * 100 + 1e-6);
			local found;
			for _, d in ipairs(dets) do if d.n == r.transitions and d.within == w then found = d; end end
			if not found then
				found = { n = r.transitions, within = w, rules = {} };
				dets[#dets + 1] = found;
				ring = math.max(ring, r.transitions);
			end
			found.rules[i] = true;
		end
	end
	local function cs(x) return math.floor(x * 100 + 1e-6); end
	-- Sorted distinct debounce steps for a kind, and silence steps.
	local function steps(kind)
		local set, list = {}, {};
		for _, r in ipairs(rules) do
			if r.on == kind and (r.after or 0) > 0 and not set[cs(r.after)] then
				set[cs(r.after)] = true; list[#list + 1] = cs(r.after);
			end
		end
		table.sort(list);
		return list;
	end
	local deb = { online = steps("online"), offline = steps("offline"), state = steps("state") };
	local sil = steps("silent");
	local function emit(d, kind, rules_list, time, extra)
		local ev = { kind = kind, jid = d.jid, rules = rules_list, time = time / 100,
			show = d.show, status = d.status };
		for k, v in pairs(extra) do ev[k] = v; end
		m.out[#m.out + 1] = ev;
	end
	local function fired(d, pred)
		local list = {};
		for i, r in ipairs(rules) do
			if d.match[i] and pred(r, i) then list[#list + 1] = i; end
		end
		return list;
	end
	local function flap(d, now)
		if ring == 0 then return; end
		table.insert(d.ring, now);
		if #d.ring > ring then table.remove(d.ring, 1); end
		for k, det in ipairs(dets) do
			local c = 0;
			for _, t in ipairs(d.ring) do if now - t < det.within then c = c + 1; end end
			if c >= det.n then
				local list = fired(d, function (_, i) return det.rules[i]; end);
				if not d.flap[k] and #list > 0 then
					d.flap[k] = true;
					emit(d, "flapping", list, now, { after = 0, duration = 0, transitions = c,
						previous = d.online and "offline" or "online" });
				end
			else
				d.flap[k] = nil;
			end
		end
	end
	function m.update(jid, now, avail, show, status)
		local hash = avail and (tostring(show) .. "|" .. tostring(status)) or nil;
		local d = m.devices[jid];
		if not d then
			if #sel > 0 then
				local ok = false;
				for _, p in ipairs(sel) do if jid:match(p) then ok = true; end end
				if not ok then return; end
			end
			d = { jid = jid, index = #m.order, since = now, last = now, seen = now, online = false,
				known = false, match = {}, ring = {}, flap = {}, didx = 1, sidx = 1 };
			for i in ipairs(rules) do d.match[i] = not pats[i] or jid:match(pats[i]) ~= nil; end
			m.devices[jid] = d;
			m.order[#m.order + 1] = d;
		end
		d.seen = now;
		d.sidx = 1;
		local known = d.known;
		d.known = true;
		local function imm(kind) return fired(d, function (r) return r.on == kind and (r.after or 0) == 0; end); end
		if avail and (not d.online or hash ~= d.hash) then d.show, d.status = show, status; end
		if avail and not d.online then
			emit(d, "online", imm("online"), now, { after = 0, previous = known and "offline" or "unknown",
				duration = known and (now - d.since) / 100 or 0 });
			d.online = true; d.since, d.last = now, now; d.kind = "online"; d.didx = 1; d.hash = hash;
			flap(d, now);
		elseif avail then
			if hash ~= d.hash then
				emit(d, "state", imm("state"), now, { after = 0, previous = "online", duration = (now - d.last) / 100 });
				d.last = now; d.kind = "state"; d.didx = 1; d.hash = hash;
			end
		elseif d.online then
			emit(d, "offline", imm("offline"), now, { after = 0, previous = "online", duration = (now - d.since) / 100 });
			d.online = false; d.since, d.last = now, now; d.kind = "offline"; d.didx = 1; d.hash = nil;
			flap(d, now);
		end
	end
	function m.touch(jid, now)
		local d = m.devices[jid];
		if d then d.seen = now; d.sidx = 1; end
	end
	local function due(d)
		local best, which = math.huge, nil;
		if d.kind and deb[d.kind][d.didx] then best, which = d.last + deb[d.kind][d.didx], 1; end
		if d.online and sil[d.sidx] and d.seen + sil[d.sidx] < best then best, which = d.seen + sil[d.sidx], 2; end
		return best, which;
	end
	function m.tick(now)
		while true do
			local pick, pdue, pwhich;
			for _, d in ipairs(m.order) do
				local t, w = due(d);
				if t <= now and (not pick or t < pdue or (t == pdue and d.index < pick.index)) then
					pick, pdue, pwhich = d, t, w;
				end
			end
			if not pick then return; end
			local d = pick;
			if pwhich == 1 then
				local step = deb[d.kind][d.didx];
				local list = fired(d, function (r) return r.on == d.kind and cs(r.after or 0) == step; end);
				if #list > 0 then
					emit(d, d.kind, list, pdue, { after = step / 100, duration = (pdue - d.last) / 100,
						previous = (d.kind == "offline") and "online" or (d.kind == "online" and "offline" or "online") });
				end
				d.didx = d.didx + 1;
			else
				local step = sil[d.sidx];
				local list = fired(d, function (r) return r.on == "silent" and cs(r.after) == step; end);
				if #list > 0 then
					emit(d, "silent", list, pdue, { after = step / 100, duration = (pdue - d.seen) / 100, previous = "online" });
				end
				d.sidx = d.sidx + 1;
			end
		end
	end
	return m;
end

-- What mod_brisk_iot did with the engine's events before the engine owned
-- conditions: judge each condition rule on the event's presence, fire it
-- only when its condition becomes true, forget on offline, and drop a
-- timer event none of whose rules fire.
local function latch(rules, events)
	local latched, out = {}, {};
	for i = 1, #rules do latched[i] = {}; end
	local function condition(c, ev)
		if c.show then
			local set = {};
			for _, v in ipairs(type(c.show) == "table" and c.show or { c.show }) do set[v] = true; end
			if not set[ev.show or "available"] then return false; end
		end
		if c.status then
			local cap = (ev.status or ""):match(c.status);
			if cap == nil then return false; end
			if c.below or c.above then
				local v = tonumber(cap);
				if not v then return false; end
				if c.below and not (v < c.below) then return false; end
				if c.above and not (v > c.above) then return false; end
			end
		end
		return true;
	end
	for _, ev in ipairs(events) do
		local fired = {};
		for _, i in ipairs(ev.rules) do
			local c = rules[i];
			if c.status ~= nil or c.show ~= nil then
				local holds = condition(c, ev);
				if holds and not latched[i][ev.jid] then
					latched[i][ev.jid] = true;
					fired[#fired + 1] = i;
				elseif not holds then
					latched[i][ev.jid] = nil;
				end
			else
				fired[#fired + 1] = i;
			end
		end
		if ev.kind == "offline" then
			for i = 1, #rules do latched[i][ev.jid] = nil; end
		end
		ev.rules = fired;
		if not (ev.after > 0 and #fired == 0) then out[#out + 1] = ev; end
	end
	return out;
end

local STATUSES = { "battery=5", "battery=50", "battery=20", "ok", "x", false };
local SHOWS = { false, "away", "dnd", "xa", "chat", "available", "weird" };
local CONDITIONS = {
	{ status = "battery=(%d+)", below = 20 }, { status = "battery=(%d+)", above = 10, below = 60 },
	{ status = "^ok" }, { status = "(%d+)" }, { show = "dnd" }, { show = { "away", "xa" } },
	{ show = "available", status = "battery" }, { status = "()x" , below = 2 },
};

local function random_rules(rnd)
	local rules = {};
	local globs = { nil, "d1*@h", "*@h", "d?@h", "*2@*", "h", "x*@other" };
	for i = 1, rnd(1, 8) do
		local kind = KINDS[rnd(1, 5)];
		local r = { name = "r" .. i, on = kind, match = globs[rnd(1, #globs)] };
		if kind == "flapping" then
			r.transitions = rnd(2, 5);
			r.within = rnd(1, 6) / 2;
		elseif kind == "silent" then
			r.after = rnd(1, 30) / 10;
		elseif rnd(1, 2) == 1 then
			r.after = rnd(1, 30) / 10;
		end
		if (kind == "online" or kind == "state") and rnd(1, 2) == 1 then
			for k, v in pairs(CONDITIONS[rnd(1, #CONDITIONS)]) do r[k] = v; end
		end
		rules[i] = r;
	end
	return rules;
end

describe("brisk.presence against a Lua model", function ()
	it("agrees on every event for random rules and streams", function ()
		local seed = tonumber(os.getenv("IOT_MODEL_SEED")) or 20261125;
		math.randomseed(seed);
		local rnd = math.random;
		local total = 0;
		for round = 1, 60 do
			local rules = random_rules(rnd);
			local selectors = rnd(1, 3) == 1 and { "d*@h", "*@other" } or nil;
			local e = presence.new{ now = 0, rules = rules, devices = selectors };
			local m = model(rules, selectors);
			local got = {};
			local now = 0;
			local devices = {};
			for i = 1, rnd(1, 12) do devices[i] = ({ "d", "e", "x" })[rnd(1, 3)] .. i .. ({ "@h", "@other" })[rnd(1, 2)]; end
			for _ = 1, 400 do
				now = now + rnd(0, 40);     -- centiseconds
				local t = now / 100;
				local r = rnd(1, 10);
				local jid = devices[rnd(1, #devices)];
				if r <= 4 then
					local status = STATUSES[rnd(1, #STATUSES)] or nil;
					local show = SHOWS[rnd(1, #SHOWS)] or nil;
					e:update(jid, t, true, show, status, 0);
					m.update(jid, now, true, show, status);
				elseif r <= 6 then
					e:update(jid, t, false);
					m.update(jid, now, false);
				elseif r <= 8 then
					e:touch(jid, t);
					m.touch(jid, now);
				else
					e:tick(t);
					m.tick(now);
				end
				while true do
					local ev = e:pop();
					if not ev then break; end
					got[#got + 1] = ev;
				end
			end
			now = now + 10000;
			e:tick(now / 100); m.tick(now);
			while true do
				local ev = e:pop();
				if not ev then break; end
				got[#got + 1] = ev;
			end
			m.out = latch(rules, m.out);
			local ctx = ("seed %d round %d"):format(seed, round);
			assert.equal(#m.out, #got, ctx .. ": event count");
			for i, want in ipairs(m.out) do
				local ev = got[i];
				local where = ctx .. " event " .. i;
				assert.equal(want.kind, ev.kind, where);
				assert.equal(want.jid, ev.jid, where);
				assert.same(want.rules, ev.rules, where);
				assert.near(want.time, ev.time, 1e-9, where);
				assert.near(want.after, ev.after, 1e-9, where);
				assert.near(want.duration, ev.duration, 1e-9, where);
				assert.equal(want.previous, ev.previous, where);
				assert.equal(want.transitions, ev.transitions, where);
			end
			total = total + #got;
		end
		assert.is_true(total > 1000, "the streams exercised the engine: " .. total);
	end);
end);
