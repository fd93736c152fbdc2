-- brisk.iot.listing — what mod_brisk_iot shows of its fleet: the device
-- list and counters behind `prosodyctl shell` (iot:devices(), iot:stats()
-- in mod_brisk_iot_shell) and the HTTP listing, GET /iot/devices.
--
-- The HTTP handler checks the bearer token in constant time (util.hashes;
-- both sides are hashed first, so that not even the token's length leaks)
-- and reads the query with Prosody's own form decoding (util.http).

local presence = require "brisk.presence";
local prosody_lib = require "brisk.prosody".lib;
local hashes = prosody_lib "util.hashes";
local http_util = prosody_lib "util.http";
local json = prosody_lib "util.json";

local M = {};

-- The devices of engine whose JID matches pattern (all without one), at
-- most limit of them, and the engine's stats; nil and a message for a bad
-- pattern.
function M.devices(engine, pattern, limit)
	local g, err;
	if pattern then
		g, err = presence.glob(pattern);
		if not g then return nil, ("bad pattern '%s': %s"):format(pattern, err); end
	end
	local out = {};
	local s = engine:stats();
	for i = 1, s.devices do
		local d = engine:device(i);
		if not g or g:match(d.jid) then
			out[#out + 1] = d;
			if limit and #out >= limit then break; end
		end
	end
	return out, s;
end

-- The counters iot:stats() prints: the engine's, the webhook queue's
-- (brisk.iot.webhook), the hook scripts' (brisk.iot.scripts set) and,
-- with iot_mqtt, the MQTT publisher's (brisk.iot.mqtt).
function M.stats(engine, webhooks, scripts, mqtt)
	local s = engine:stats();
	s.webhook = {};
	for k, v in pairs(webhooks.stats) do s.webhook[k] = v; end
	s.webhook.queued = webhooks:queued();
	s.hook_errors = scripts.errors;
	s.scripts = #scripts.scripts;
	s.mqtt = mqtt and mqtt:stats() or nil;
	return s;
end

-- The handler of "GET /devices[?match=glob]" (net.http.server's event).
-- opts: engine, host, token (iot_http_token; nil: no authorization).
function M.http_handler(opts)
	local engine, host = opts.engine, opts.host;
	local expected = opts.token and hashes.sha256("Bearer " .. opts.token);
	return function (event)
		local request, response = event.request, event.response;
		if expected then
			local auth = request.headers.authorization;
			if not (auth and hashes.equals(hashes.sha256(auth), expected)) then return 401; end
		end
		local pattern;
		local query = request.url and request.url.query;
		if query then
			local form = http_util.formdecode(query);
			if type(form) == "table" and form.match ~= "" then pattern = form.match; end
		end
		local list, s = M.devices(engine, pattern, nil);
		if not list then return 400; end
		response.headers.content_type = "application/json";
		return json.encode({ host = host, devices = list, total = s.devices, online = s.online, offline = s.offline });
	end;
end

return M;
