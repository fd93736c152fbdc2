-- The device listing of mod_brisk_iot (brisk.iot.listing): the list and
-- counters behind the shell, and the HTTP handler with its bearer token and
-- query decoding. The live spec checks the same through a real server.
local listing = require "brisk.iot.listing";
local presence = require "brisk.presence";
local json = require "util.json";

local function fleet()
	local e = presence.new{ now = 0 };
	for _, j in ipairs{ "freezer-1@h", "freezer-2@h", "fan-1@h", "a+b@h" } do e:update(j, 1, true); end
	e:update("fan-1@h", 2, false);
	e:clear();
	return e;
end

local function request(handler, path, auth)
	local response = { headers = {} };
	local query = path:match("%?(.*)$");
	local result = handler{
		request = { headers = { authorization = auth }, url = { path = path:match("^[^?]*"), query = query } };
		response = response;
	};
	return result, response;
end

describe("brisk.iot.listing", function ()
	it("lists devices matching a glob, up to a limit", function ()
		local e = fleet();
		local list, s = listing.devices(e, nil, nil);
		assert.equal(4, #list);
		assert.equal(4, s.devices);
		list = listing.devices(e, "freezer-*@*", nil);
		assert.same({ "freezer-1@h", "freezer-2@h" }, { list[1].jid, list[2].jid });
		assert.equal(1, #listing.devices(e, "freezer-*@*", 1));
		local none, err = listing.devices(e, "a/b", nil);
		assert.is_nil(none);
		assert.equal("bad pattern 'a/b': patterns match bare JIDs: '/' is not allowed", err);
	end);

	it("gathers the counters iot:stats() prints", function ()
		local webhooks = { stats = { sent = 3, failed = 1, dropped = 0, retried = 2, attempts = 6 },
			queued = function () return 4; end };
		local s = listing.stats(fleet(), webhooks, { errors = 7, scripts = { "a.lua" } });
		assert.equal(3, s.online);
		assert.equal(1, s.offline);
		assert.equal(4, s.webhook.queued);
		assert.equal(3, s.webhook.sent);
		assert.equal(7, s.hook_errors);
		assert.equal(1, s.scripts);
	end);

	it("answers GET /devices with JSON", function ()
		local handler = listing.http_handler{ engine = fleet(), host = "h" };
		local body, response = request(handler, "/iot/devices");
		assert.equal("application/json", response.headers.content_type);
		local doc = json.decode(body);
		assert.equal("h", doc.host);
		assert.equal(4, doc.total);
		assert.equal(3, doc.online);
		assert.equal(1, doc.offline);
		assert.equal(4, #doc.devices);
		assert.equal("freezer-1@h", doc.devices[1].jid);
		assert.equal("online", doc.devices[1].state);
	end);

	it("wants the bearer token when one is set", function ()
		local handler = listing.http_handler{ engine = fleet(), host = "h", token = "sekrit" };
		assert.equal(401, (request(handler, "/iot/devices")));
		assert.equal(401, (request(handler, "/iot/devices", "Bearer wrong!")));
		assert.equal(401, (request(handler, "/iot/devices", "Bearer sekri")));
		assert.equal(401, (request(handler, "/iot/devices", "Bearer sekrit ")));
		assert.equal(401, (request(handler, "/iot/devices", "bearer sekrit")));
		assert.equal(401, (request(handler, "/iot/devices", "sekrit")));
		assert.is_string((request(handler, "/iot/devices", "Bearer sekrit")));
	end);

	it("compares the token in constant time, through util.hashes", function ()
		local hashes = require "brisk.prosody".lib "util.hashes";
		local equals, compared = hashes.equals, {};
		hashes.equals = function (a, b) compared[#compared + 1] = { a, b }; return equals(a, b); end;
		local ok, err = pcall(function ()
			local handler = listing.http_handler{ engine = fleet(), host = "h", token = "sekrit" };
			request(handler, "/iot/devices", "Bearer x");
			request(handler, "/iot/devices", "Bearer sekrit");
		end);
		hashes.equals = equals;
		assert.is_true(ok, err);
		assert.equal(2, #compared);
		-- Digests of equal length, whatever the lengths of the tokens.
		for _, pair in ipairs(compared) do
			assert.equal(32, #pair[1]);
			assert.equal(32, #pair[2]);
		end
	end);

	it("reads ?match= with Prosody's form decoding", function ()
		local handler = listing.http_handler{ engine = fleet(), host = "h" };
		local function jids(path)
			local body, response = request(handler, path);
			if type(body) ~= "string" then return body; end
			local out = {};
			for _, d in ipairs(json.decode(body).devices) do out[#out + 1] = d.jid; end
			assert.equal("application/json", response.headers.content_type);
			return table.concat(out, " ");
		end
		assert.equal("freezer-1@h freezer-2@h", jids("/iot/devices?match=freezer-*@*"));
		assert.equal("", jids("/iot/devices?match=freezer-*"));  -- no '@': a host pattern
		assert.equal("freezer-1@h freezer-2@h", jids("/iot/devices?match=freezer-%2A%40h"));
		assert.equal("fan-1@h", jids("/iot/devices?x=1&match=fan-*@h&y=2"));
		assert.equal("a+b@h", jids("/iot/devices?match=a%2Bb@h"));
		-- A form's "+" is a space, and a glob has none.
		assert.equal(400, jids("/iot/devices?match=a+b@h"));
		assert.equal(400, jids("/iot/devices?match=a/b"));
		-- No match parameter, or an empty one: every device.
		assert.equal("freezer-1@h freezer-2@h fan-1@h a+b@h", jids("/iot/devices?match="));
		assert.equal("freezer-1@h freezer-2@h fan-1@h a+b@h", jids("/iot/devices?xmatch=fan-*@h"));
		assert.equal("freezer-1@h freezer-2@h fan-1@h a+b@h", jids("/iot/devices?match"));
	end);
end);
