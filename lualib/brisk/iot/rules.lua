-- brisk.iot.rules — validation of iot_rules for mod_brisk_iot.
--
-- compile(rules, opts) checks every rule and returns the list the module
-- uses at run time, or raises an error naming the rule and the problem.
-- The event, match pattern and timing fields are checked again by the C
-- engine (brisk.presence.new), which gives the same kind of messages.

local presence = require "brisk.presence";

local jid_util = require "brisk.prosody".lib "util.jid";

local M = {};

local KINDS = { online = true, offline = true, state = true, flapping = true, silent = true };
local LOG_LEVELS = { debug = true, info = true, warn = true, error = true };
local KNOWN = {
	name = true, on = true, match = true, after = true, transitions = true, within = true,
	status = true, below = true, above = true, show = true,
	webhook = true, secret = true, secret_file = true,
	notify = true, pubsub = true, log = true,
};

-- A Standard Webhooks secret: "whsec_" and the base64 of the key.
function M.decode_secret(s)
	if type(s) ~= "string" then return nil, "secret must be a string"; end
	s = s:gsub("^%s+", ""):gsub("%s+$", "");
	local b64 = s:match("^whsec_(.+)$");
	if not b64 then return nil, "secret must start with 'whsec_'"; end
	local key = presence.base64_decode(b64);
	if not key or #key < 16 then
		return nil, "secret after 'whsec_' must be base64 of at least 16 bytes";
	end
	return key;
end

local function read_secret_file(path)
	local f, err = io.open(path, "rb");
	if not f then return nil, "cannot read secret_file: " .. tostring(err); end
	local data = f:read("a");
	f:close();
	return M.decode_secret(data);
end

-- Check the syntax of a Lua pattern completely (string.find only parses as
-- far as a match attempt gets, so "(%d" passes it on an empty subject).
local function check_pattern(p)
	local i, n, open, closed, count = 1, #p, {}, {}, 0;
	local function class_end(j)
		-- j is at '[': find the closing ']' (a leading ']' or '^]' is literal).
		j = j + 1;
		if p:sub(j, j) == "^" then j = j + 1; end
		local first = true;
		while true do
			if j > n then return nil, "malformed pattern (missing ']')"; end
			local c = p:sub(j, j);
			if c == "%" then
				if j == n then return nil, "malformed pattern (ends with '%')"; end
				j = j + 2;
			elseif c == "]" and not first then
				return j;
			else
				j = j + 1;
			end
			first = false;
		end
	end
	while i <= n do
		local c = p:sub(i, i);
		if c == "(" then
			count = count + 1;
			open[#open + 1] = count;
			i = i + 1;
		elseif c == ")" then
			if #open == 0 then return nil, "invalid pattern capture"; end
			closed[open[#open]] = true;
			open[#open] = nil;
			i = i + 1;
		elseif c == "[" then
			local e, err = class_end(i);
			if not e then return nil, err; end
			i = e + 1;
		elseif c == "%" then
			if i == n then return nil, "malformed pattern (ends with '%')"; end
			local d = p:sub(i + 1, i + 1);
			if d == "b" then
				if i + 3 > n then return nil, "missing arguments to '%b'"; end
				i = i + 4;
			elseif d == "f" then
				if p:sub(i + 2, i + 2) ~= "[" then return nil, "missing '[' after '%f' in pattern"; end
				local e, err = class_end(i + 2);
				if not e then return nil, err; end
				i = e + 1;
			elseif d:match("%d") then
				local k = tonumber(d);
				if not closed[k] then return nil, "invalid capture index %" .. d; end
				i = i + 2;
			else
				i = i + 2;
			end
		else
			i = i + 1;
		end
	end
	if #open > 0 then return nil, "unfinished capture"; end
	if select(2, p:gsub("%(", "")) > 32 then return nil, "too many captures"; end
	return true;
end
M.check_pattern = check_pattern;

-- opts.read_file (for specs) replaces reading secret_file from disk;
-- opts.pubsub_service is iot_pubsub_service.
function M.compile(rules, opts)
	opts = opts or {};
	if rules == nil then return {}; end
	if type(rules) ~= "table" then error("iot_rules must be a list of rules", 0); end
	local out, names = {}, {};
	local n = #rules;
	for k in pairs(rules) do
		if math.type(k) ~= "integer" or k < 1 or k > n then
			error("iot_rules must be a list of rules (found key " .. tostring(k) .. ")", 0);
		end
	end
	for i = 1, n do
		local r = rules[i];
		local label = ("rule #%d"):format(i);
		if type(r) ~= "table" then error(label .. ": not a table", 0); end
		if r.name ~= nil then
			if type(r.name) ~= "string" or r.name == "" then error(label .. ": 'name' must be a non-empty string", 0); end
			label = ("rule '%s'"):format(r.name);
			if names[r.name] then error(label .. ": duplicate name", 0); end
			names[r.name] = true;
		end
		local function fail(msg) error(label .. ": " .. msg, 0); end
		for k in pairs(r) do
			if not KNOWN[k] then fail("unknown field '" .. tostring(k) .. "'"); end
		end
		if r.on == nil then fail("missing 'on' (the event: online, offline, state, flapping or silent)"); end
		if not KINDS[r.on] then
			fail(("unknown event '%s' (expected online, offline, state, flapping or silent)"):format(tostring(r.on)));
		end
		if r.match ~= nil then
			if type(r.match) ~= "string" then fail("'match' must be a string pattern"); end
			local g, err = presence.glob(r.match);
			if not g then fail(("bad pattern '%s': %s"):format(r.match, err)); end
		end
		local c = { name = r.name or ("rule-" .. i), index = i, on = r.on, match = r.match,
			after = r.after or 0, transitions = r.transitions, within = r.within };
		-- Conditions on the device's presence.
		if r.status ~= nil or r.below ~= nil or r.above ~= nil or r.show ~= nil then
			if r.on ~= "state" and r.on ~= "online" then
				fail("'status', 'show', 'below' and 'above' only apply to 'online' and 'state' rules");
			end
		end
		if r.status ~= nil then
			if type(r.status) ~= "string" then fail("'status' must be a Lua pattern"); end
			local ok, err = check_pattern(r.status);
			if ok then
				local pok, perr = pcall(string.find, "", r.status);
				if not pok then ok, err = nil, tostring(perr):gsub("^.-:%d+: ", ""); end
			end
			if not ok then fail(("bad status pattern '%s': %s"):format(r.status, err)); end
			c.status = r.status;
		end
		for _, k in ipairs{ "below", "above" } do
			if r[k] ~= nil then
				if type(r[k]) ~= "number" or r[k] ~= r[k] then fail("'" .. k .. "' must be a number"); end
				if not r.status then fail("'" .. k .. "' needs a 'status' pattern with a capture holding the number"); end
				c[k] = r[k];
			end
		end
		if r.show ~= nil then
			local shows = type(r.show) == "table" and r.show or { r.show };
			c.show = {};
			for _, s in ipairs(shows) do
				if s ~= "available" and s ~= "away" and s ~= "chat" and s ~= "dnd" and s ~= "xa" then
					fail("'show' must be available, away, chat, dnd or xa (or a list of them)");
				end
				c.show[s] = true;
			end
		end
		-- Targets.
		local targets = 0;
		if r.webhook ~= nil then
			if type(r.webhook) ~= "string" or not r.webhook:match("^https?://[^/%s]+") then
				fail("'webhook' must be an http:// or https:// URL");
			end
			local key, err;
			if r.secret ~= nil and r.secret_file ~= nil then fail("give 'secret' or 'secret_file', not both"); end
			if r.secret ~= nil then
				key, err = M.decode_secret(r.secret);
			elseif r.secret_file ~= nil then
				if type(r.secret_file) ~= "string" then fail("'secret_file' must be a path"); end
				if opts.read_file then
					local data = opts.read_file(r.secret_file);
					if data then key, err = M.decode_secret(data); else err = "cannot read secret_file"; end
				else
					key, err = read_secret_file(r.secret_file);
				end
			else
				err = "a webhook needs 'secret' (whsec_...) or 'secret_file'";
			end
			if not key then fail(err); end
			c.webhook, c.key = r.webhook, key;
			targets = targets + 1;
		elseif r.secret ~= nil or r.secret_file ~= nil then
			fail("'secret' and 'secret_file' need a 'webhook'");
		end
		if r.notify ~= nil then
			local list = type(r.notify) == "table" and r.notify or { r.notify };
			c.notify = {};
			for _, j in ipairs(list) do
				local p = type(j) == "string" and jid_util.prep(j);
				if not p then fail(("'notify' has an invalid JID '%s'"):format(tostring(j))); end
				c.notify[#c.notify + 1] = p;
			end
			if #c.notify == 0 then fail("'notify' is empty"); end
			targets = targets + 1;
		end
		if r.pubsub ~= nil then
			if type(r.pubsub) ~= "string" or r.pubsub == "" then fail("'pubsub' must be a node name"); end
			if not opts.pubsub_service then fail("'pubsub' needs iot_pubsub_service to name a PubSub service"); end
			c.pubsub = r.pubsub;
			targets = targets + 1;
		end
		if r.log ~= nil then
			local level = r.log == true and "info" or r.log;
			if not LOG_LEVELS[level] then fail("'log' must be true or one of debug, info, warn, error"); end
			c.log = level;
			targets = targets + 1;
		end
		if targets == 0 then fail("missing target (webhook, notify, pubsub or log)"); end
		out[i] = c;
	end
	-- Let the engine check timing fields and build its tables; its message
	-- names the rule the same way.
	local engine_rules = M.engine_rules(out);
	local ok, err = pcall(presence.new, { rules = engine_rules });
	if not ok then error(tostring(err), 0); end
	return out;
end

function M.engine_rules(compiled)
	local er = {};
	for i, c in ipairs(compiled) do
		er[i] = { name = c.name, on = c.on, match = c.match, after = c.after,
			transitions = c.transitions, within = c.within };
	end
	return er;
end

-- The number a status condition captured, or the capture itself.
local function condition(c, ev)
	if c.show then
		local sh = ev.show or "available";
		if not c.show[sh] then return false; end
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
M.condition = condition;

function M.has_condition(c)
	return c.status ~= nil or c.show ~= nil;
end

return M;
