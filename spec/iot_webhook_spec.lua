-- Unit specs of brisk.iot.webhook: signatures (Standard Webhooks test
-- vector), retries with backoff, the bounded queue, per-device order. The
-- transport and the clock are fakes driven by the spec; the live spec
-- (iot_live_spec.lua) does the same over real HTTP.
local webhook = require "brisk.iot.webhook";

local KEY = assert(webhook.decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));

local function harness(opts)
	local h = { t = 0, timers = {}, reqs = {} };
	opts = opts or {};
	opts.now = function () return h.t; end;
	opts.clock = function () return 1614265330 + h.t; end;
	opts.timer = function (delay, fn) h.timers[#h.timers + 1] = { at = h.t + delay, fn = fn }; end;
	opts.request = function (url, ex, cb)
		local req = { url = url, ex = ex, cb = cb };
		h.reqs[#h.reqs + 1] = req;
		return req;
	end;
	h.d = webhook.new(opts);
	-- Advance the fake clock, running timers in order.
	function h.advance(dt)
		local target = h.t + dt;
		while true do
			table.sort(h.timers, function (a, b) return a.at < b.at; end);
			local tm = h.timers[1];
			if not tm or tm.at > target then break; end
			table.remove(h.timers, 1);
			h.t = tm.at;
			tm.fn();
		end
		h.t = target;
	end
	-- Answer the oldest unanswered request.
	function h.answer(code)
		for _, r in ipairs(h.reqs) do
			if not r.answered then r.answered = true; r.cb("", code, {}); return r; end
		end
		error("no request to answer");
	end
	function h.open()
		local n = 0;
		for _, r in ipairs(h.reqs) do if not r.answered then n = n + 1; end end
		return n;
	end
	return h;
end

describe("brisk.iot.webhook", function ()
	it("signs as the Standard Webhooks test vector says", function ()
		assert.equal("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
			webhook.sign(KEY, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", '{"test": 2432232314}'));
		assert.is_true(webhook.verify(KEY, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", '{"test": 2432232314}',
			"v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
		assert.is_false(webhook.verify(KEY, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", '{"test": 2432232315}',
			"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
	end);

	it("decodes secrets and rejects bad ones", function ()
		assert.equal(24, #KEY);
		assert.is_nil((webhook.decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")));
		assert.is_nil((webhook.decode_secret("whsec_!!!")));
		assert.is_nil((webhook.decode_secret("whsec_YQ==")));  -- too short
		assert.equal(KEY, webhook.decode_secret("  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"));
	end);

	it("sends with the three headers and a valid signature", function ()
		local h = harness{};
		local id = h.d:send("http://x/hook", KEY, "d@h", '{"a":1}');
		assert.equal(1, #h.reqs);
		local r = h.reqs[1];
		assert.equal("POST", r.ex.method);
		assert.equal('{"a":1}', r.ex.body);
		assert.equal(id, r.ex.headers["webhook-id"]);
		assert.equal("1614265330", r.ex.headers["webhook-timestamp"]);
		assert.is_true(webhook.verify(KEY, id, "1614265330", '{"a":1}', r.ex.headers["webhook-signature"]));
		h.answer(204);
		assert.equal(1, h.d.stats.sent);
		assert.equal(0, (h.d:queued()));
	end);

	it("retries with exponential backoff, same id, fresh timestamp", function ()
		local h = harness{ backoff = 1, max_backoff = 4, retries = 4 };
		h.d:send("http://x/hook", KEY, "d@h", "{}");
		h.answer(500);
		h.advance(0.99); assert.equal(1, #h.reqs);
		h.advance(0.01); assert.equal(2, #h.reqs);
		h.answer(503);
		h.advance(2); assert.equal(3, #h.reqs);
		h.answer(0);   -- connection failed
		h.advance(4); assert.equal(4, #h.reqs);
		h.answer(500);
		h.advance(4); assert.equal(5, #h.reqs);  -- capped at max_backoff
		assert.equal(h.reqs[1].ex.headers["webhook-id"], h.reqs[5].ex.headers["webhook-id"]);
		assert.not_equal(h.reqs[1].ex.headers["webhook-timestamp"], h.reqs[5].ex.headers["webhook-timestamp"]);
		h.answer(500); -- the 5th attempt fails: retries (4) exhausted
		h.advance(100);
		assert.equal(5, #h.reqs);
		assert.equal(1, h.d.stats.failed);
		assert.equal(4, h.d.stats.retried);
		assert.equal(0, (h.d:queued()));
	end);

	it("times out a request that never answers and retries it", function ()
		local h = harness{ timeout = 5, backoff = 1 };
		h.d:send("http://x/hook", KEY, "d@h", "{}");
		h.advance(4.9); assert.equal(1, h.d.stats.attempts);
		h.advance(0.1);
		assert.equal(1, h.d.stats.retried);
		h.advance(1);
		assert.equal(2, #h.reqs);
		-- The late answer of the timed-out request changes nothing.
		h.reqs[1].cb("", 200, {});
		assert.equal(0, h.d.stats.sent);
		h.reqs[1].answered = true;
		h.answer(200);
		assert.equal(1, h.d.stats.sent);
	end);

	it("keeps the queue bounded while the endpoint is down, dropping the oldest", function ()
		local h = harness{ queue_max = 10, backoff = 1, max_backoff = 1, retries = 1e9 };
		for i = 1, 1000 do
			h.d:send("http://x/hook", KEY, "dev" .. (i % 7) .. "@h", tostring(i));
			if h.open() > 0 then h.answer(0); end
			h.advance(0.01);
			assert.is_true((h.d:queued()) <= 10);
		end
		assert.equal(990, h.d.stats.dropped);
		-- Back up: everything left is delivered, newest messages, in order per device.
		local bodies = {};
		for _ = 1, 200 do
			h.advance(1);
			while h.open() > 0 do
				local r = h.answer(200);
				bodies[#bodies + 1] = tonumber(r.ex.body);
			end
		end
		assert.equal(10, h.d.stats.sent);
		local last = {};
		for _, b in ipairs(bodies) do
			local dev = b % 7;
			assert.is_true(not last[dev] or b > last[dev], "order per device");
			last[dev] = b;
			assert.is_true(b > 980);
		end
	end);

	it("keeps one device's messages in order while other devices go ahead", function ()
		local h = harness{ concurrency = 4, backoff = 1 };
		h.d:send("http://x/hook", KEY, "a@h", "a1");
		h.d:send("http://x/hook", KEY, "a@h", "a2");
		h.d:send("http://x/hook", KEY, "b@h", "b1");
		-- a1 and b1 in flight, a2 waits for a1.
		assert.equal(2, h.open());
		assert.equal("a1", h.reqs[1].ex.body);
		assert.equal("b1", h.reqs[2].ex.body);
		h.answer(500);               -- a1 fails
		h.answer(200);               -- b1 done
		assert.equal(2, #h.reqs);    -- a2 does not overtake a1
		h.advance(1);
		assert.equal("a1", h.reqs[3].ex.body);
		h.answer(200);
		assert.equal("a2", h.reqs[4].ex.body);
		h.answer(200);
		assert.equal(3, h.d.stats.sent);
	end);

	it("survives a transport that raises", function ()
		local h = harness{ retries = 0 };
		h.d.request = function () error("boom"); end;
		h.d:send("http://x/hook", KEY, "d@h", "{}");
		assert.equal(1, h.d.stats.failed);
	end);
end);
