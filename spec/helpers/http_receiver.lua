-- spec/helpers/http_receiver.lua — a real local HTTP server receiving
-- webhooks for mod_brisk_iot's specs (Python's http.server in a subprocess,
-- see http_receiver.py, which verifies signatures on its own).
--
--   local receiver = require "spec.helpers.http_receiver"
--   local r = receiver.start{ secret = "whsec_..." }
--   r.url                      -- "http://127.0.0.1:PORT/hook"
--   r:requests()               -- every request so far: { headers, body, valid, code, time, data (decoded JSON) }
--   r:wait(n, timeout)         -- until n requests arrived; returns them
--   r:fail(code, count)        -- answer code to the next count requests
--   r:down() / r:up()          -- stop listening / listen again (same port)
--   r:stop()
local socket = require "socket";
local json = require "util.json";
local prosody = require "spec.helpers.prosody";

local M = {};
local methods = {};
local mt = { __index = methods };
local live = {};

local HERE = prosody.root .. "/spec/helpers/http_receiver.py";

local function sh(cmd)
	local f = assert(io.popen(cmd, "r"));
	local out = f:read("a");
	f:close();
	return out;
end

function M.start(opts)
	opts = opts or {};
	local dir = sh("mktemp -d /tmp/brisk-hook-XXXXXX"):gsub("%s+$", "");
	local self = setmetatable({
		dir = dir;
		port = opts.port or prosody.free_port();
		secret = opts.secret or "whsec_";
		log_path = dir .. "/requests.jsonl";
		control_path = dir .. "/control";
	}, mt);
	self.url = ("http://127.0.0.1:%d/hook"):format(self.port);
	live[self] = true;
	self:up();
	return self;
end

function methods:up()
	if self.pid then return; end
	os.remove(self.log_path .. ".ready");
	os.remove(self.control_path); -- a fresh server answers 200 until told otherwise
	local cmd = ("exec python3 %s %d %s %s %s >%s/stderr 2>&1 </dev/null & echo $!"):format(
		prosody.shell_quote(HERE), self.port, prosody.shell_quote(self.log_path),
		prosody.shell_quote(self.control_path), prosody.shell_quote(self.secret), self.dir);
	self.pid = tonumber(sh(cmd):match("%d+"));
	assert(prosody.wait_for(function () return io.open(self.log_path .. ".ready") ~= nil; end, 10, 0.02),
		"http receiver did not start");
end

function methods:down()
	if not self.pid then return; end
	os.execute("kill " .. self.pid .. " 2>/dev/null");
	prosody.wait_for(function ()
		return not os.execute("kill -0 " .. self.pid .. " 2>/dev/null");
	end, 5, 0.02);
	self.pid = nil;
end

function methods:stop()
	self:down();
	live[self] = nil;
	os.execute("rm -rf " .. prosody.shell_quote(self.dir));
end

function methods:fail(code, count)
	local f = assert(io.open(self.control_path, "w"));
	-- A random tag makes each call a change the server notices.
	f:write(("%d %d\n#%d"):format(code, count, math.random(1, 1e9)));
	f:close();
end

function methods:requests()
	local out = {};
	local f = io.open(self.log_path);
	if not f then return out; end
	for line in f:lines() do
		local rec = json.decode(line);
		if rec then
			rec.data = json.decode(rec.body);
			out[#out + 1] = rec;
		end
	end
	f:close();
	return out;
end

function methods:wait(n, timeout)
	local deadline = socket.gettime() + (timeout or 10);
	while true do
		local r = self:requests();
		if #r >= n or socket.gettime() > deadline then return r; end
		socket.sleep(0.05);
	end
end

M._reaper = setmetatable({}, { __gc = function ()
	for r in pairs(live) do pcall(r.stop, r); end
end });

return M;
