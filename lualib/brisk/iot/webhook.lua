-- brisk.iot.webhook — signed webhook delivery for mod_brisk_iot.
--
-- Each endpoint (URL) has a bounded queue. Messages are signed per Standard
-- Webhooks (webhook-id, webhook-timestamp, webhook-signature "v1,<base64
-- HMAC-SHA256 of id.timestamp.body>"), sent with a timeout, and retried
-- with exponential backoff. Up to `concurrency` requests per endpoint are in
-- flight, but never two for the same device, and a device's messages leave
-- in the order they were queued. When the queue is full the oldest message
-- not in flight is dropped and counted, so an endpoint that is down never
-- makes memory grow without bound.
--
-- Everything with side effects is passed in (request, timer, now, clock),
-- so the module runs inside Prosody (net.http, module:add_timer) and in
-- unit specs with a fake clock alike.

local presence = require "brisk.presence";

local M = {};

-- A Standard Webhooks secret: "whsec_" and the base64 of the key. Returns
-- the key, or nil and what is wrong.
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

function M.sign(key, id, timestamp, body)
	return "v1," .. presence.base64_encode(presence.hmac_sha256(key, id .. "." .. timestamp .. "." .. body));
end

-- Check a signature header the way a receiver would (any of the
-- space-separated v1 signatures may match).
function M.verify(key, id, timestamp, body, header)
	local expected = M.sign(key, id, timestamp, body);
	for sig in tostring(header):gmatch("%S+") do
		if presence.equal(sig, expected) then return true; end
	end
	return false;
end

local function new_id()
	return "msg_" .. (presence.random_bytes(12):gsub(".", function (c) return ("%02x"):format(c:byte()); end));
end

local dispatcher = {};
local dispatcher_mt = { __index = dispatcher };

-- opts: request(url, ex, cb) -> req (net.http.request's shape), timer(delay,
-- fn), now() (seconds, fractional), clock() (Unix seconds for the
-- timestamp header), queue_max, concurrency, retries, backoff, max_backoff,
-- timeout, on = { sent(latency), failed(), dropped(), retried() }, log(level, fmt, ...)
function M.new(opts)
	return setmetatable({
		request = assert(opts.request, "request");
		timer = assert(opts.timer, "timer");
		now = assert(opts.now, "now");
		clock = opts.clock or os.time;
		queue_max = opts.queue_max or 1000;
		concurrency = opts.concurrency or 4;
		retries = opts.retries or 5;
		backoff = opts.backoff or 1;
		max_backoff = opts.max_backoff or 300;
		timeout = opts.timeout or 10;
		on = opts.on or {};
		log = opts.log or function () end;
		endpoints = {};
		stats = { sent = 0, failed = 0, dropped = 0, retried = 0, attempts = 0 };
	}, dispatcher_mt);
end

local function count(self, what, ...)
	self.stats[what] = self.stats[what] + 1;
	local f = self.on[what];
	if f then f(...); end
end

-- Queue a JSON body for url, signed with key, on behalf of device.
function dispatcher:send(url, key, device, body)
	local ep = self.endpoints[url];
	if not ep then
		ep = { url = url, queue = {}, inflight = 0 };
		self.endpoints[url] = ep;
	end
	local q = ep.queue;
	if #q >= self.queue_max then
		local victim;
		for i, item in ipairs(q) do
			if not item.inflight then victim = i; break; end
		end
		if victim then
			local item = table.remove(q, victim);
			self.log("warn", "Webhook queue for %s is full: dropped %s (device %s)", url, item.id, item.device);
		else
			self.log("warn", "Webhook queue for %s is full: dropped a new message (device %s)", url, device);
		end
		count(self, "dropped");
		if not victim then return nil, "queue full"; end
	end
	local item = { id = new_id(), device = device, body = body, key = key,
		attempts = 0, not_before = 0, queued = self.now() };
	q[#q + 1] = item;
	self:pump(ep);
	return item.id;
end

local function remove(q, item)
	for i, it in ipairs(q) do
		if it == item then table.remove(q, i); return; end
	end
end

function dispatcher:wake_at(ep, t)
	if ep.wake and ep.wake <= t then return; end
	ep.wake = t;
	self.timer(math.max(0, t - self.now()), function ()
		if ep.wake == t then ep.wake = nil; end
		self:pump(ep);
	end);
end

function dispatcher:pump(ep)
	local now = self.now();
	while ep.inflight < self.concurrency do
		local seen, pick, later = {}, nil, nil;
		for _, item in ipairs(ep.queue) do
			-- Only the oldest queued message of a device may go.
			if not seen[item.device] then
				seen[item.device] = true;
				if not item.inflight then
					if item.not_before <= now then pick = item; break; end
					if not later or item.not_before < later then later = item.not_before; end
				end
			end
		end
		if not pick then
			if later then self:wake_at(ep, later); end
			return;
		end
		self:start(ep, pick);
	end
end

function dispatcher:start(ep, item)
	item.inflight = true;
	ep.inflight = ep.inflight + 1;
	item.attempts = item.attempts + 1;
	self.stats.attempts = self.stats.attempts + 1;
	local ts = tostring(math.floor(self.clock()));
	local headers = {
		["Content-Type"] = "application/json";
		["webhook-id"] = item.id;
		["webhook-timestamp"] = ts;
		["webhook-signature"] = M.sign(item.key, item.id, ts, item.body);
	};
	local done = false;
	local started = self.now();
	local function finish(code, err)
		if done then return; end
		done = true;
		ep.inflight = ep.inflight - 1;
		item.inflight = false;
		if type(code) == "number" and code >= 200 and code < 300 then
			remove(ep.queue, item);
			count(self, "sent", self.now() - item.queued);
		elseif item.attempts > self.retries then
			remove(ep.queue, item);
			self.log("warn", "Webhook %s to %s failed after %d attempts (%s)", item.id, ep.url, item.attempts, err or code);
			count(self, "failed");
		else
			local delay = math.min(self.backoff * 2 ^ (item.attempts - 1), self.max_backoff);
			item.not_before = self.now() + delay;
			self.log("debug", "Webhook %s to %s: %s, retry %d in %gs", item.id, ep.url, err or code, item.attempts, delay);
			count(self, "retried");
		end
		self:pump(ep);
	end
	local ok, req = pcall(self.request, ep.url, { method = "POST", body = item.body, headers = headers },
		function (body, code) finish(code, code == 0 and tostring(body) or nil); end);
	if not ok then
		finish(0, tostring(req));
		return;
	end
	self.timer(self.timeout, function ()
		if done then return; end
		finish(0, "timeout");
		if type(req) == "table" and req.cancel then pcall(req.cancel, req, "timeout"); end
	end);
	return started;
end

-- Messages queued (including in flight), per endpoint and in total.
function dispatcher:queued()
	local total, per = 0, {};
	for url, ep in pairs(self.endpoints) do
		per[url] = #ep.queue;
		total = total + #ep.queue;
	end
	return total, per;
end

return M;
