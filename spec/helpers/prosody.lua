-- spec/helpers/prosody.lua — start a real Prosody for a spec, and talk to it.
--
-- prosody.start{...} writes a config into a fresh temporary folder, starts
-- a real Prosody on free loopback ports with it, creates accounts and waits
-- until c2s accepts connections. The Prosody is the one the suite runs
-- against (`make test PROSODY=13`, BRISK_PROSODY in the environment: Debian's
-- 0.12, or the 13 that scripts/deps.sh unpacks into build/prosody-13), or
-- the one a spec names with start{ version = "13" }. srv:connect() returns a real XMPP client
-- (TCP, stream, SASL PLAIN, resource binding) whose incoming stream is parsed
-- by stock util.xmppstream. Servers are stopped by srv:stop(), and in any case
-- when the spec process exits, so a failing spec never leaves one behind.

local socket = require "socket";
local st = require "util.stanza";
local base64 = require "util.encodings".base64;

local M = {};

local ROOT = os.getenv("BRISK_ROOT") or (function ()
	-- This file is <root>/spec/helpers/prosody.lua.
	local src = debug.getinfo(1, "S").source:match("^@(.*)$") or "";
	local dir = src:match("^(.*)/spec/helpers/[^/]*$");
	if dir and dir ~= "" then
		if dir == "." then
			dir = os.getenv("PWD");
		elseif dir:sub(1, 1) ~= "/" then
			dir = os.getenv("PWD") .. "/" .. dir:gsub("^%./", "");
		end
		return dir;
	end
	return os.getenv("PWD");
end)();
M.root = ROOT;

-- The Prosody versions Brisk supports, where `make env` puts them (see the
-- Makefile's PROSODY switch and scripts/deps.sh).
local VERSIONS = {
	["0.12"] = { bin = "/usr/bin", lib = "/usr/lib/prosody" };
	["13"] = { bin = ROOT .. "/build/prosody-13/bin", lib = ROOT .. "/build/prosody-13/root/usr/lib/prosody" };
};
-- The version this spec process runs against: its in-process Prosody
-- libraries (util.stanza, util.xmppstream...) are that version's.
M.version = os.getenv("BRISK_PROSODY") or "0.12";
assert(VERSIONS[M.version], "BRISK_PROSODY must be 0.12 or 13");
M.versions = { "0.12", "13" };

-- The path of one of Prosody's programs (prosody, prosodyctl,
-- prosody-migrator) of the given version (default: the suite's).
function M.bin(name, version)
	local v = assert(VERSIONS[version or M.version], "unknown Prosody version");
	return v.bin .. "/" .. name;
end

-- Prosody's library folder of the given version (default: the suite's).
function M.lib(version)
	return assert(VERSIONS[version or M.version], "unknown Prosody version").lib;
end

local function sh(cmd)
	local f = assert(io.popen(cmd, "r"));
	local out = f:read("a");
	local ok, how, code = f:close();
	return out, ok, how, code;
end

M.sh = sh;

local function shell_quote(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'";
end
M.shell_quote = shell_quote;

local function read_file(path)
	local f = io.open(path, "rb");
	if not f then return nil; end
	local data = f:read("a");
	f:close();
	return data;
end

local function write_file(path, data)
	local f = assert(io.open(path, "wb"));
	assert(f:write(data));
	f:close();
end

M.read_file, M.write_file = read_file, write_file;

local function is_root()
	return (sh("id -u")):match("^0") ~= nil;
end

-- A port the kernel has just handed out and released; good enough on a
-- machine where only our own specs compete for loopback ports.
function M.free_port()
	local s = assert(socket.bind("127.0.0.1", 0));
	local _, port = s:getsockname();
	s:close();
	return tonumber(port);
end

-- Serialize a Lua value as Lua source, for the generated config. Keys are
-- sorted so that configs are stable and diffable.
local function serialize(v, indent)
	indent = indent or "";
	local t = type(v);
	if t == "string" then
		return string.format("%q", v);
	elseif t == "number" or t == "boolean" or t == "nil" then
		return tostring(v);
	elseif t == "table" then
		local parts, n = {}, #v;
		for i = 1, n do
			parts[#parts + 1] = indent .. "\t" .. serialize(v[i], indent .. "\t");
		end
		local keys = {};
		for k in pairs(v) do
			if not (math.type(k) == "integer" and k >= 1 and k <= n) then
				keys[#keys + 1] = k;
			end
		end
		table.sort(keys, function (a, b) return tostring(a) < tostring(b); end);
		for _, k in ipairs(keys) do
			local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k
				or ("[" .. serialize(k) .. "]");
			parts[#parts + 1] = indent .. "\t" .. key .. " = " .. serialize(v[k], indent .. "\t");
		end
		if #parts == 0 then return "{}"; end
		return "{\n" .. table.concat(parts, ";\n") .. ";\n" .. indent .. "}";
	end
	error("cannot put a " .. t .. " into a Prosody config");
end
M.serialize = serialize;

local live = {};

local server_methods = {};
local server_mt = { __index = server_methods };

local function pid_alive(pid)
	if not pid then return false; end
	local stat = read_file("/proc/" .. pid .. "/stat");
	if not stat then return false; end
	-- A zombie has exited; nothing will reap it if its parent is gone.
	local state = stat:match("^%d+ %b() (%a)");
	return state ~= "Z" and state ~= "X";
end
M.pid_alive = pid_alive;

local function wait_for(pred, timeout, step)
	local deadline = socket.gettime() + timeout;
	repeat
		if pred() then return true; end
		socket.sleep(step or 0.05);
	until socket.gettime() > deadline;
	return pred();
end
M.wait_for = wait_for;

local BASE_MODULES = { "roster", "saslauth", "disco", "ping", "time", "version", "private", "vcard", "register", "admin_shell" };

function M.config_text(opts)
	local dir = opts.dir;
	-- Options in order; a later set() of the same name replaces the earlier
	-- one (Prosody warns about duplicates), so opts.config can override.
	local lines, index = {}, {};
	local function set(k, v)
		-- "%{dir}" in any string stands for the server's folder.
		local line = (k .. " = " .. serialize(v)):gsub("%%{dir}", (dir:gsub("%%", "%%%%")));
		if index[k] then lines[index[k]] = line; else
			lines[#lines + 1] = line;
			index[k] = #lines;
		end
	end
	if is_root() then
		-- Prosody refuses to run as root unless told; CI runs specs as root.
		set("run_as_root", true);
	end
	set("pidfile", dir .. "/prosody.pid");
	set("data_path", dir .. "/data");
	set("certificates", dir .. "/certs");
	-- isolated: nothing from the checkout but the readiness module, as for an
	-- installed Brisk (luarocks specs).
	local plugin_paths = opts.isolated and { ROOT .. "/spec/helpers/plugins" }
		or { ROOT .. "/lualib", ROOT .. "/spec/helpers/plugins" };
	for _, p in ipairs(opts.plugin_paths or {}) do table.insert(plugin_paths, 1, p); end
	set("plugin_paths", plugin_paths);
	set("log", { { levels = { min = opts.log_level or "debug" }, to = "file", filename = dir .. "/prosody.log" } });
	set("daemonize", false);
	set("interfaces", { "127.0.0.1" });
	set("local_interfaces", { "127.0.0.1" });
	set("c2s_ports", { opts.port });
	set("c2s_direct_tls_ports", {});
	set("legacy_ssl_ports", {});
	set("s2s_ports", {});
	set("s2s_direct_tls_ports", {});
	set("component_ports", {});
	set("http_ports", { opts.http_port });
	set("http_interfaces", { "127.0.0.1" });
	set("https_ports", {});
	set("admin_socket", dir .. "/prosody.sock");
	set("c2s_require_encryption", false);
	set("allow_unencrypted_plain_auth", true);
	set("allow_registration", false);
	set("authentication", "internal_hashed");
	-- Specs hammer the server from one address; stock rate limits would skew them.
	set("limits", {});
	local mods = { "spec_ready" };
	for _, m in ipairs(BASE_MODULES) do mods[#mods + 1] = m; end
	for _, m in ipairs(opts.modules or {}) do mods[#mods + 1] = m; end
	set("modules_enabled", mods);
	set("modules_disabled", { "s2s", "tls", "bosh" });
	if opts.storage then set("storage", opts.storage); end
	if opts.default_storage then set("default_storage", opts.default_storage); end
	for k, v in pairs(opts.config or {}) do set(k, v); end
	lines[#lines + 1] = "";
	lines[#lines + 1] = "VirtualHost " .. serialize(opts.host);
	index = {};
	if opts.host_modules then set("modules_enabled", opts.host_modules); end
	for k, v in pairs(opts.host_config or {}) do set(k, v); end
	lines[#lines + 1] = "";
	return "-- Generated by spec/helpers/prosody.lua\n" .. table.concat(lines, "\n");
end

-- opts: modules, host_modules, config, host_config, accounts, storage,
-- default_storage, host, log_level, plugin_paths, version ("0.12" or "13";
-- default: the suite's, M.version), env (table of extra
-- environment variables for the server process), isolated (the server sees
-- neither lualib/ nor build/: for installed Brisk), prepare (function(srv)
-- called after the config is written, before Prosody starts). In config and
-- host_config strings, "%{dir}" stands for the server's temporary folder.
function M.start(opts)
	opts = opts or {};
	local dir = (sh("mktemp -d /tmp/brisk-prosody-XXXXXX")):gsub("%s+$", "");
	assert(dir ~= "", "mktemp failed");
	os.execute("mkdir -p " .. shell_quote(dir .. "/data") .. " " .. shell_quote(dir .. "/certs"));
	local srv = setmetatable({
		dir = dir;
		host = opts.host or "localhost";
		port = M.free_port();
		http_port = M.free_port();
		opts = opts;
		version = opts.version or M.version;
		config_path = dir .. "/prosody.cfg.lua";
		log_path = dir .. "/prosody.log";
		stdout_path = dir .. "/stdout.log";
		clients = {};
	}, server_mt);
	local copts = {};
	for k, v in pairs(opts) do copts[k] = v; end
	copts.dir, copts.port, copts.http_port, copts.host = dir, srv.port, srv.http_port, srv.host;
	write_file(srv.config_path, opts.config_text or M.config_text(copts));
	live[srv] = true;
	if opts.prepare then opts.prepare(srv); end
	for user, pw in pairs(opts.accounts or {}) do
		srv:register(user, pw);
	end
	srv:_launch();
	return srv;
end

function server_methods:_env_prefix()
	-- isolated: the server must not see the checkout's LUA_PATH/LUA_CPATH.
	local parts = { self.opts.isolated and "env -u LUA_PATH -u LUA_CPATH" or "env" };
	if not self.opts.isolated and self.version ~= M.version then
		-- A server of the other version finds Brisk as this process does,
		-- but not this version's Prosody libraries.
		local from, to = M.lib():gsub("%p", "%%%0"), M.lib(self.version):gsub("%%", "%%%%");
		for _, var in ipairs({ "LUA_PATH", "LUA_CPATH" }) do
			local value = os.getenv(var);
			if value then parts[#parts + 1] = var .. "=" .. shell_quote((value:gsub(from, to))); end
		end
	end
	-- Under make test-asan, Prosody's lua5.4 needs the sanitizer runtime
	-- first (see spec/helpers/init.lua).
	local preload = os.getenv("BRISK_ASAN_PRELOAD");
	if preload and preload ~= "" then parts[#parts + 1] = "LD_PRELOAD=" .. shell_quote(preload); end
	for k, v in pairs(self.opts.env or {}) do
		parts[#parts + 1] = k .. "=" .. shell_quote(v);
	end
	return table.concat(parts, " ");
end

function server_methods:_launch()
	os.remove(self.dir .. "/data/ready");
	local cmd = string.format("cd %s && exec %s %s --config %s -F >>%s 2>&1 </dev/null & echo $!",
		shell_quote(self.dir), self:_env_prefix(), shell_quote(M.bin("prosody", self.version)),
		shell_quote(self.config_path), shell_quote(self.stdout_path));
	self.pid = tonumber((sh(cmd)):match("%d+"));
	assert(self.pid, "could not start prosody");
	local ok = wait_for(function ()
		if not pid_alive(self.pid) then return true; end
		return read_file(self.dir .. "/data/ready") ~= nil;
	end, tonumber(os.getenv("BRISK_SERVER_START_TIMEOUT")) or 30, 0.05);
	if not ok or not pid_alive(self.pid) then
		local log = (self:log_text() or "") .. "\n" .. (read_file(self.stdout_path) or "");
		self:stop();
		error("prosody did not start; its output:\n" .. log:sub(-4000), 2);
	end
end

function server_methods:log_text()
	return read_file(self.log_path) or "";
end

function server_methods:stdout_text()
	return read_file(self.stdout_path) or "";
end

-- Error-level log lines (with any traceback lines following them), and any
-- sanitizer or Lua panic report the process printed. Specs assert this is
-- empty; `ignore` is a list of Lua patterns for errors a spec expects.
function server_methods:errors(ignore)
	local errs = {};
	local in_error = false;
	for line in self:log_text():gmatch("[^\n]+") do
		if line:match("^%S+ %d+ [%d:]+ [^\t]*\terror\t") or line:match("^[^\t]*\terror\t") then
			errs[#errs + 1] = line;
			in_error = true;
		elseif in_error and line:match("^%s") then
			errs[#errs] = errs[#errs] .. "\n" .. line;
		else
			in_error = false;
		end
	end
	local out = self:stdout_text();
	for report in out:gmatch("[^\n]*[Ss]anitizer[^\n]*") do errs[#errs + 1] = report; end
	for report in out:gmatch("[^\n]*runtime error:[^\n]*") do errs[#errs + 1] = report; end
	for report in out:gmatch("[^\n]*PANIC[^\n]*") do errs[#errs + 1] = report; end
	if ignore then
		local kept = {};
		for _, e in ipairs(errs) do
			local skip = false;
			for _, pat in ipairs(ignore) do
				if e:match(pat) then skip = true; break; end
			end
			if not skip then kept[#kept + 1] = e; end
		end
		errs = kept;
	end
	return errs;
end

function server_methods:prosodyctl(...)
	local args = { shell_quote(M.bin("prosodyctl", self.version)), "--config", shell_quote(self.config_path) };
	for _, a in ipairs({ ... }) do args[#args + 1] = shell_quote(a); end
	local out, ok = sh(self:_env_prefix() .. " " .. table.concat(args, " ") .. " 2>&1 </dev/null");
	return out, ok;
end

function server_methods:register(user, password)
	local out, ok = self:prosodyctl("register", user, self.host, password);
	assert(ok, "prosodyctl register " .. user .. " failed: " .. out);
end

function server_methods:signal(sig)
	if pid_alive(self.pid) then
		os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null");
	end
end

function server_methods:kill(sig)
	self:signal(sig or "KILL");
	wait_for(function () return not pid_alive(self.pid); end, 10);
	self:_drop_clients();
end

function server_methods:_drop_clients()
	for c in pairs(self.clients) do c:kill(); end
end

function server_methods:stop()
	if self.pid and pid_alive(self.pid) then
		self:signal("TERM");
		if not wait_for(function () return not pid_alive(self.pid); end, 15) then
			self:signal("KILL");
			wait_for(function () return not pid_alive(self.pid); end, 5);
		end
	end
	self:_drop_clients();
	live[self] = nil;
	self:_cleanup();
end

-- The server's folder goes at exit, unless BRISK_KEEP_SERVERS=1 asks to keep
-- it for a post-mortem (restart() reuses it, so stop() must not remove it).
local doomed = {};
function server_methods:_cleanup()
	if self.dir and os.getenv("BRISK_KEEP_SERVERS") ~= "1" then
		doomed[self.dir] = true;
	end
end

function server_methods:restart()
	self:stop();
	doomed[self.dir] = nil;
	live[self] = true;
	self:_launch();
end

-- Prosody's pid and resident memory in kB, for memory checks.
function server_methods:rss_kb()
	local status = read_file("/proc/" .. self.pid .. "/status") or "";
	return tonumber(status:match("VmRSS:%s*(%d+)"));
end

-- A handle on the exit path: servers still running when the spec process
-- closes its Lua state are killed, even after a failing spec.
M._reaper = setmetatable({}, { __gc = function ()
	for srv in pairs(live) do pcall(srv.stop, srv); end
	for dir in pairs(doomed) do
		if dir:match("^/tmp/brisk%-prosody%-") then os.execute("rm -rf " .. shell_quote(dir)); end
	end
end });

-- A server object for a Prosody this helper did not start (make run, a
-- luarocks-installed one): only connect() and friends are meaningful.
function M.attach(port, host)
	return setmetatable({ port = port, host = host or "localhost", clients = {}, opts = {} }, server_mt);
end

------------------------------------------------------------------------
-- The client: the one XMPP test client of the specs.
--
-- A TCP connection to the server. Everything it receives is kept as raw
-- bytes (received()), and while it has a stream parser (stock
-- util.xmppstream, never Brisk's) the bytes are also parsed into a queue of
-- stanzas (receive()). The parser is fed only up to the last '>' received:
-- Debian's libexpat defers re-parsing a token split across reads until
-- twice its bytes have arrived (the CVE-2023-52425 fix), so a large stanza
-- split by TCP could otherwise sit unparsed; cutting at a tag boundary
-- leaves no partial token behind, and every complete stanza is seen at
-- once. The reliability specs also use it raw (srv:raw(), c:raw()) to send
-- hostile bytes and read what the server answered.

local client_methods = {};
local client_mt = { __index = client_methods };

local STREAM_NS = "http://etherx.jabber.org/streams";

-- A stock stream parser whose stanzas go to the client's queue.
local function new_parser(client)
	local xmppstream = require "util.xmppstream";
	-- xmppstream only accepts a stream header while session.notopen is set.
	local session = { notopen = true };
	client.session = session;
	local callbacks = {
		stream_ns = STREAM_NS;
		stream_tag = "stream";
		default_ns = "jabber:client";
		streamopened = function (sess, attr)
			sess.notopen = nil;
			client.stream_attr = attr;
		end;
		streamclosed = function () client.closed_by_server = true; end;
		handlestanza = function (_, stanza) table.insert(client.queue, stanza); end;
		error = function (_, err, data)
			client.stream_error = err;
			client.stream_error_data = data;
			if err == "stream-error" then table.insert(client.queue, data); end
		end;
	};
	return xmppstream.new(session, callbacks, 256 * 1024 * 1024);
end

local function stream_header(host)
	return "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
		.. "xmlns:stream='http://etherx.jabber.org/streams' to='" .. host .. "' version='1.0'>";
end

-- A bare connection: nothing sent, nothing parsed.
function server_methods:raw()
	local conn = assert(socket.tcp());
	assert(conn:connect("127.0.0.1", self.port));
	conn:settimeout(0);
	local c = setmetatable({ conn = conn, server = self, queue = {}, host = self.host,
		buf = {}, pos = 1, rest = "", closed = false }, client_mt);
	self.clients[c] = true;
	return c;
end

-- A connection with an XMPP stream open, not yet authenticated.
function server_methods:open_stream()
	local c = self:raw();
	c.parser = new_parser(c);
	c:send(stream_header(self.host));
	assert(c:receive(10, function (s) return s.name == "features"; end), "no stream features");
	return c;
end

function server_methods:connect(user, password, resource)
	local c = self:open_stream();
	local ok, err = c:auth(user, password);
	if not ok then c:kill(); error(err, 2); end
	assert(c:bind(resource or "spec"));
	return c;
end

function client_methods:auth(user, password)
	self:send(st.stanza("auth", { xmlns = "urn:ietf:params:xml:ns:xmpp-sasl", mechanism = "PLAIN" })
		:text(base64.encode("\0" .. user .. "\0" .. password)));
	local reply = self:receive(10, function (s)
		return s.attr.xmlns == "urn:ietf:params:xml:ns:xmpp-sasl";
	end);
	if not reply or reply.name ~= "success" then
		return nil, "SASL failed for " .. user .. ": " .. (reply and tostring(reply) or "timeout");
	end
	self.user = user;
	-- After SASL success both sides restart the stream.
	self.parser:reset();
	self.session.notopen = true;
	self:send(stream_header(self.host));
	assert(self:receive(10, function (s) return s.name == "features"; end), "no features after SASL");
	return true;
end

function client_methods:bind(resource)
	local reply = self:iq(st.iq({ type = "set", id = "bind" })
		:tag("bind", { xmlns = "urn:ietf:params:xml:ns:xmpp-bind" })
		:text_tag("resource", resource), 10);
	assert(reply and reply.attr.type == "result", "bind failed: " .. tostring(reply));
	self.jid = reply:get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"):get_child_text("jid");
	return self.jid;
end

-- From now on only raw bytes: no more parsing, and received() starts
-- afresh (what the parser had not consumed stays with it).
function client_methods:raw()
	self.parser, self.buf, self.pos, self.rest = nil, {}, 1, "";
	return self;
end

-- From now on a fresh parser of our own reads what arrives, as if a new
-- stream had just opened: the traffic so far is forgotten.
function client_methods:reparse()
	self:raw();
	self.queue = {};
	self.parser = new_parser(self);
	assert(self.parser:feed("<stream:stream xmlns='jabber:client' xmlns:stream='" .. STREAM_NS .. "'>"));
	return self;
end

-- Feed the parser what has arrived, up to the last '>'.
function client_methods:_parse_new()
	if not self.parser then return; end
	local data = self.rest .. table.concat(self.buf, "", self.pos);
	self.pos = #self.buf + 1;
	local cut = data:match(".*()>");
	if not cut then self.rest = data; return; end
	self.rest = data:sub(cut + 1);
	local ok, err = self.parser:feed(data:sub(1, cut));
	if not ok then self.parse_error = self.parse_error or tostring(err); end
end

-- Read everything the socket holds until it would block (true) or reports
-- the connection gone (false). A server that closes while our bytes are
-- still unread on its side resets the connection; what it sent before the
-- reset (the stream error) is still in our receive queue and read here.
function client_methods:_read_all()
	while true do
		local data, err, partial = self.conn:receive(65536);
		data = data or partial;
		if data and #data > 0 then self.buf[#self.buf + 1] = data; end
		if err == "timeout" then break; end
		if err then
			self.closed = true;
			break;
		end
	end
	self:_parse_new();
	return not self.closed;
end

-- Read whatever has arrived, without waiting longer than `wait` seconds;
-- false once the connection is gone.
function client_methods:drain(wait)
	if self.closed then return false; end
	local r = socket.select({ self.conn }, nil, wait or 0);
	if not r or #r == 0 then return true; end
	return self:_read_all();
end

-- Send bytes (or a stanza); reads while the send buffer is full, so that a
-- server that answers and closes is seen. True, or false once the
-- connection is gone.
function client_methods:send(data)
	data = tostring(data);
	if self.closed then return false; end
	local i = 1;
	local deadline = socket.gettime() + 10;
	while i <= #data do
		local sent, err, partial = self.conn:send(data, i);
		if sent then
			i = sent + 1;
		elseif err == "timeout" then
			i = partial + 1;
			if not self:drain(0.01) then return false; end
			if socket.gettime() > deadline then return false; end
		else
			-- The server is gone (reset or closed): keep what it said first.
			self:_read_all();
			self.closed = true;
			return false;
		end
	end
	return true;
end

-- The first queued or incoming stanza for which pred(stanza) is true (any
-- stanza without pred), removed from the queue; nil after timeout seconds
-- (receive(0) still reads what is already on the socket once).
function client_methods:receive(timeout, pred)
	local deadline = socket.gettime() + (timeout or 5);
	local read = false;
	while true do
		for i, s in ipairs(self.queue) do
			if not pred or pred(s) then
				table.remove(self.queue, i);
				return s;
			end
		end
		local left = deadline - socket.gettime();
		if self.closed or (left <= 0 and read) then return nil; end
		read = true;
		if not self:drain(math.max(0, math.min(left, 0.5))) then
			-- Closed: one more pass over the queue for a final stream error.
			for i, s in ipairs(self.queue) do
				if not pred or pred(s) then
					table.remove(self.queue, i);
					return s;
				end
			end
			return nil;
		end
	end
end
client_methods.take = client_methods.receive;

-- Every stanza received so far, without waiting; the queue is emptied.
function client_methods:poll()
	self:drain(0);
	local q = self.queue;
	self.queue = {};
	return q;
end

-- The raw bytes received (since the connection, or since raw()).
function client_methods:received()
	return table.concat(self.buf);
end

-- Wait up to `timeout` seconds until the bytes received contain `needle`
-- (a plain string); true if they do.
function client_methods:wait_for(needle, timeout)
	local deadline = socket.gettime() + timeout;
	while true do
		if self:received():find(needle, 1, true) then return true; end
		if self.closed or socket.gettime() > deadline then return false; end
		self:drain(math.min(0.1, deadline - socket.gettime()));
	end
end

-- Send an iq and wait for the result or error with the same id.
local iq_counter = 0;
function client_methods:iq(stanza, timeout)
	if not stanza.attr.id or stanza.attr.id == "" then
		iq_counter = iq_counter + 1;
		stanza.attr.id = "iq" .. iq_counter;
	end
	local id = stanza.attr.id;
	self:send(stanza);
	return self:receive(timeout or 10, function (s)
		return s.name == "iq" and s.attr.id == id and (s.attr.type == "result" or s.attr.type == "error");
	end);
end

-- Wait until the server has closed the connection (true), or timeout (false).
function client_methods:wait_closed(timeout)
	local deadline = socket.gettime() + (timeout or 5);
	while not self.closed and socket.gettime() < deadline do
		self:drain(math.min(0.2, math.max(0, deadline - socket.gettime())));
	end
	return self.closed == true;
end

function client_methods:close()
	if not self.closed then
		self:send("</stream:stream>");
		self:wait_closed(5);
	end
	self:kill();
end

-- Drop the TCP connection without closing the stream.
function client_methods:kill()
	if self.conn then self.conn:close(); end
	self.closed = true;
	if self.server and self.server.clients then self.server.clients[self] = nil; end
end

return M;
