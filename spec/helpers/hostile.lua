-- spec/helpers/hostile.lua — raw hostile traffic against live Prosody servers.
--
-- The reliability specs run every attack twice, against a stock Prosody and
-- against one with every Brisk module that exists in lualib/, and compare what
-- the attacker saw (stream error condition, text, extra children, whether the
-- server closed the connection). While an attack runs, a probe pair of
-- ordinary clients keeps exchanging messages on the same server and records
-- the worst round trip, so "other clients keep flowing" is measured rather
-- than assumed.

local socket = require "socket";
local st = require "util.stanza";
local prosody = require "spec.helpers.prosody";

local H = {};

local function file_exists(path)
	local f = io.open(path, "rb");
	if f then f:close(); return true; end
	return false;
end
H.file_exists = file_exists;

-- Which Brisk Prosody modules exist right now (the tree is being built while
-- these specs run); BRISK_RELIABILITY_MODULES="a,b" overrides, "" means none.
function H.brisk_modules()
	local override = os.getenv("BRISK_RELIABILITY_MODULES");
	local found = {};
	if override then
		for name in override:gmatch("[^,%s]+") do found[name] = true; end
		return found;
	end
	for _, name in ipairs{ "brisk_xml", "storage_brisk", "brisk_iot" } do
		if file_exists(prosody.root .. "/lualib/mod_" .. name .. ".lua") then found[name] = true; end
	end
	return found;
end

-- prosody.start options for a server with every existing Brisk module on,
-- merged over `base` (which must not itself name Brisk modules).
function H.brisk_options(base, mods)
	mods = mods or H.brisk_modules();
	local o = {};
	for k, v in pairs(base or {}) do o[k] = v; end
	local modules = {};
	for _, m in ipairs(o.modules or {}) do modules[#modules + 1] = m; end
	local host_modules = {};
	for _, m in ipairs(o.host_modules or {}) do host_modules[#host_modules + 1] = m; end
	if mods.brisk_xml then modules[#modules + 1] = "brisk_xml"; end
	if mods.storage_brisk and not o.storage then
		-- Rosters (the store Brisk exists for) and the other keyval stores
		-- the stock module set uses; archives (offline) have no Brisk driver.
		o.storage = { roster = "brisk", private = "brisk", vcard = "brisk" };
	end
	if mods.brisk_iot then host_modules[#host_modules + 1] = "brisk_iot"; end
	o.modules = modules;
	o.host_modules = #host_modules > 0 and host_modules or nil;
	return o;
end

function H.describe_modules(mods)
	local names = {};
	for k in pairs(mods) do names[#names + 1] = k; end
	table.sort(names);
	return #names > 0 and table.concat(names, ", ") or "none (stock only)";
end

------------------------------------------------------------------------
-- Connections: the specs' one client (spec/helpers/prosody.lua), used raw.

-- A bare connection: bytes in, bytes out, nothing parsed.
function H.raw(srv)
	return srv:raw();
end

-- A helper client (already authenticated or with a stream open) read raw
-- from now on: anything its parser has not consumed stays with it.
function H.adopt(client)
	return client:raw();
end

-- A helper client whose socket is from now on parsed by a fresh parser of
-- our own, the setup traffic forgotten (see the client's parsing in
-- spec/helpers/prosody.lua): take(), poll() and received() see only what
-- arrives from now.
function H.victim(client)
	return client:reparse();
end

-- What the attacker saw: the stream error (condition, text and the names of
-- any further children) and whether the server closed the connection.
function H.outcome(bytes, closed)
	local o = { closed = closed and true or false };
	local err = bytes:match("<stream:error>(.-)</stream:error>") or bytes:match("<stream:error/>") and "";
	if err then
		o.error = true;
		o.text = err:match("<text[^>]*>(.-)</text>");
		local others = {};
		for name, attrs in err:gmatch("<([%w%-]+)([^>]*)/?>") do
			local ns = attrs:match("xmlns=['\"]([^'\"]*)['\"]");
			if name ~= "text" then
				if ns == "urn:ietf:params:xml:ns:xmpp-streams" and not o.condition then
					o.condition = name;
				else
					others[#others + 1] = name .. (ns and ("{" .. ns .. "}") or "");
				end
			end
		end
		o.extra = table.concat(others, " ");
	end
	o.stream_closed = bytes:match("</stream:stream>%s*$") ~= nil;
	return o;
end

------------------------------------------------------------------------
-- The probe: two ordinary clients exchanging messages during an attack.

local probe_methods = {};
local probe_mt = { __index = probe_methods };

function H.probe(srv, from_user, to_user, pw)
	local p = setmetatable({ srv = srv, seq = 0, worst = 0, count = 0, lost = 0 }, probe_mt);
	p.from = srv:connect(from_user, pw, "probe");
	p.to = srv:connect(to_user, pw, "probe");
	p.to:send(st.presence());
	p.to_jid = p.to.jid;
	return p;
end

-- One message from one probe client to the other; returns the round trip in
-- seconds, or nil if it did not arrive within `timeout`.
function probe_methods:ping(timeout)
	self.seq = self.seq + 1;
	local id = "probe-" .. self.seq;
	local t0 = socket.gettime();
	self.from:send(st.message({ to = self.to_jid, type = "chat", id = id }):text_tag("body", tostring(self.seq)));
	local got = self.to:receive(timeout or 10, function (s) return s.name == "message" and s.attr.id == id; end);
	local dt = socket.gettime() - t0;
	self.count = self.count + 1;
	if not got then self.lost = self.lost + 1; return nil; end
	if dt > self.worst then self.worst = dt; end
	return dt;
end

-- Ping at most every `interval` seconds (the attack calls this between chunks).
function probe_methods:maybe_ping(interval)
	local now = socket.gettime();
	if not self.last or now - self.last >= (interval or 0.05) then
		self:ping();
		self.last = socket.gettime();
	end
end

function probe_methods:reset()
	self.worst, self.count, self.lost, self.last = 0, 0, 0, nil;
end

function probe_methods:close()
	self.from:close();
	self.to:close();
end

------------------------------------------------------------------------
-- Running one attack.

-- attack = {
--   connect = "raw" | "stream" | "auth",  -- before the attack bytes: nothing,
--                 an open unauthenticated stream, or a bound session
--   user, password,                       -- for "auth"
--   chunks = function (yield) ... end,    -- calls yield(bytes) for every piece;
--                                         -- yield returns false once the server closed
--   settle = seconds to wait for a close afterwards (default 10), or for
--            "auth" attacks for the answer to the final ping (see below),
--   after = function (conn, srv) end,     -- optional, runs before the final close
-- }
-- Returns the outcome table plus probe figures.
local kick_counter = 0;
function H.run(srv, probe, attack)
	local conn;
	if attack.connect == "auth" then
		conn = H.adopt(srv:connect(attack.user, attack.password, attack.resource or "attacker"));
	elseif attack.connect == "stream" then
		conn = H.adopt(srv:open_stream());
	else
		conn = H.raw(srv);
	end
	if probe then probe:reset(); end
	local sent = 0;
	local interval = attack.probe_interval or 0.05;
	local function yield(bytes)
		if conn.closed then return false; end
		local ok = conn:send(bytes);
		sent = sent + #bytes;
		conn:drain(0);
		if probe then probe:maybe_ping(interval); end
		return ok and not conn.closed;
	end
	local t0 = socket.gettime();
	attack.chunks(yield, conn);
	local kicked = false;
	if attack.connect == "auth" and attack.kick ~= false and not conn.closed then
		kicked = true;
		-- Make sure the server has parsed and handled everything sent: the
		-- deferral described at H.victim applies to the server's parser
		-- too, so whitespace (allowed between stanzas) to more than double
		-- any pending token, then a ping whose answer comes after it all.
		local pad = string.rep(" ", 8192);
		for _ = 1, math.min(2 * sent + 64, 512 * 1024) // #pad + 1 do
			if not conn:send(pad) then break; end
			conn:drain(0);
		end
		kick_counter = kick_counter + 1;
		local id = "kick-" .. kick_counter;
		if conn:send("<iq type='get' id='" .. id .. "'><ping xmlns='urn:xmpp:ping'/></iq>") then
			conn:wait_for("id='" .. id .. "'", attack.settle or 10);
		end
	end
	-- After a kick the server has handled everything: a close would be
	-- under way already.
	local closed = conn:wait_closed(kicked and 0.1 or attack.settle or 10);
	local extra;
	if attack.after then extra = attack.after(conn, srv); end
	if probe then probe:ping(); end
	local o = H.outcome(conn:received(), closed);
	o.bytes_sent = sent;
	o.seconds = socket.gettime() - t0;
	if probe then
		o.probe_worst, o.probe_count, o.probe_lost = probe.worst, probe.count, probe.lost;
	end
	o.after = extra;
	o.alive = prosody.pid_alive(srv.pid);
	conn:close();
	return o;
end

-- The parts of an outcome that must be the same for stock and Brisk.
function H.comparable(o)
	return { closed = o.closed, error = o.error, condition = o.condition, text = o.text,
		extra = o.extra, stream_closed = o.stream_closed, after = o.after };
end

-- An error line reduced to what does not vary between runs: the logging
-- source's kind (not its session id) and the message with numbers and
-- hexadecimal ids blanked out.
function H.normalize_error(e)
	local first = e:match("^[^\n]*");
	local src, msg = first:match("^[^\t]*\t?([^\t]*)\terror\t(.*)$");
	src = (src or ""):gsub("%x+$", "");
	msg = (msg or first):gsub("0x%x+", "0x?"):gsub("%d+", "N");
	return src .. ": " .. msg;
end

-- Errors the Brisk server logged that the stock server did not.
function H.extra_errors(brisk_srv, stock_srv)
	local seen = {};
	for _, e in ipairs(stock_srv:errors()) do
		local n = H.normalize_error(e);
		seen[n] = (seen[n] or 0) + 1;
	end
	local extra = {};
	for _, e in ipairs(brisk_srv:errors()) do
		local n = H.normalize_error(e);
		if (seen[n] or 0) > 0 then seen[n] = seen[n] - 1; else extra[#extra + 1] = e; end
	end
	return extra;
end

function H.stream_header(host, extra)
	return "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
		.. "xmlns:stream='http://etherx.jabber.org/streams' to='" .. host .. "' version='1.0'"
		.. (extra or "") .. ">";
end

------------------------------------------------------------------------
-- A misbehaving webhook endpoint, served from the spec's own process (call
-- ep:pump() often): mode "ok" answers 200, "500" answers 500, "hang" reads
-- the request and never answers, "slow" answers 200 after ep.delay seconds,
-- "refuse" (only as the first mode) listens on nothing: connections are refused.

local ep_methods = {};
local ep_mt = { __index = ep_methods };

function H.http_endpoint(mode)
	local ep = setmetatable({ conns = {}, requests = 0, answered = 0, delay = 3, mode = mode or "ok" }, ep_mt);
	-- A port below the kernel's ephemeral range: while the endpoint refuses,
	-- a connection to a port in that range can be given the very same
	-- port as its own source and connect to itself (TCP self-connect).
	for _ = 1, 100 do
		local port = math.random(20000, 32000);
		local s = socket.bind("127.0.0.1", port);
		if s then s:close(); ep.port = port; break; end
	end
	assert(ep.port, "no free port for the webhook endpoint");
	ep.url = ("http://127.0.0.1:%d/hook"):format(ep.port);
	ep:set_mode(ep.mode);
	return ep;
end

function ep_methods:set_mode(mode)
	self.mode = mode;
	if mode == "refuse" then
		-- Only before the first bind: once connections to the port have
		-- existed, Linux may refuse to bind it again for a while.
		assert(not self.server, "an endpoint can only refuse before it ever listened");
	elseif not self.server then
		self.server = assert(socket.bind("127.0.0.1", self.port));
		self.server:settimeout(0);
	end
	-- Connections held by "hang" or "slow" are dropped on a change of mind.
	for _, c in ipairs(self.conns) do c.sock:close(); end
	self.conns = {};
end

local function respond(c, code)
	local body = code == 200 and "ok" or "error";
	c.sock:settimeout(1);
	c.sock:send(("HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"):format(code, #body, body));
	c.sock:close();
	c.done = true;
end

function ep_methods:pump()
	if self.server then
		while true do
			local sock = self.server:accept();
			if not sock then break; end
			sock:settimeout(0);
			self.conns[#self.conns + 1] = { sock = sock, buf = "", t = socket.gettime() };
		end
	end
	local now = socket.gettime();
	local keep = {};
	for _, c in ipairs(self.conns) do
		local data, err, partial = c.sock:receive(65536);
		if not c.complete then
			c.buf = c.buf .. (data or partial or "");
			local head_end = c.buf:find("\r\n\r\n", 1, true);
			if head_end then
				local len = tonumber(c.buf:match("[Cc]ontent%-[Ll]ength:%s*(%d+)")) or 0;
				if #c.buf >= head_end + 3 + len then
					c.complete, c.t = true, now;
					self.requests = self.requests + 1;
				end
			end
		end
		-- The client gave up (a timeout) and closed its end.
		if err == "closed" then c.sock:close(); c.done = true; end
		if c.complete and not c.done then
			if self.mode == "ok" then respond(c, 200); self.answered = self.answered + 1;
			elseif self.mode == "500" then respond(c, 500);
			elseif self.mode == "slow" and now - c.t >= self.delay then respond(c, 200); self.answered = self.answered + 1;
			end
		end
		if not c.done then keep[#keep + 1] = c; end
	end
	self.conns = keep;
end

function ep_methods:open_connections()
	return #self.conns;
end

function ep_methods:close()
	for _, c in ipairs(self.conns) do c.sock:close(); end
	self.conns = {};
	if self.server then self.server:close(); self.server = nil; end
end

return H;
