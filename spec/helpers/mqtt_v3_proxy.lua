-- spec/helpers/mqtt_v3_proxy.lua — a stand-in for an MQTT 3.1.1-only
-- broker, in front of a real mosquitto:
--
--   lua5.4 spec/helpers/mqtt_v3_proxy.lua LISTEN_PORT BROKER_PORT
--
-- A connection whose CONNECT asks for MQTT 5 gets what a 3.1.1 broker
-- answers ("unacceptable protocol version", a 3.1.1 CONNACK) and is
-- closed; any other is passed through to the broker both ways. It counts
-- the refusals on stdout ("refused-v5").
local socket = require "socket";

local listen_port, broker_port = tonumber(arg[1]), tonumber(arg[2]);
local server = assert(socket.bind("127.0.0.1", listen_port));
server:settimeout(0);
io.stdout:setvbuf("line");

local pairs_of = {};   -- socket -> peer socket
local pending = {};    -- client socket -> bytes of its first packet so far
local sockets = { server };

local function drop(s)
	local peer = pairs_of[s];
	for i = #sockets, 1, -1 do
		if sockets[i] == s or sockets[i] == peer then table.remove(sockets, i); end
	end
	s:close();
	if peer then peer:close(); pairs_of[peer] = nil; end
	pairs_of[s] = nil;
	pending[s] = nil;
end

-- A whole first packet in buf: its protocol level (byte after "MQTT").
local function connect_level(buf)
	if #buf < 2 then return nil; end
	local len, mult, i = 0, 1, 2;
	repeat
		local b = buf:byte(i);
		if not b then return nil; end
		len = len + (b % 128) * mult;
		mult = mult * 128;
		i = i + 1;
	until b < 128;
	if #buf < i - 1 + len then return nil; end
	return buf:byte(i + 6);  -- 00 04 'M' 'Q' 'T' 'T' level
end

while true do
	local readable = socket.select(sockets, nil, 1);
	for _, s in ipairs(readable) do
		if s == server then
			local c = server:accept();
			if c then
				c:settimeout(0);
				pending[c] = "";
				sockets[#sockets + 1] = c;
			end
		else
			local data, err, partial = s:receive(65536);
			data = data or partial;
			if data and #data > 0 then
				if pending[s] then
					local buf = pending[s] .. data;
					local level = connect_level(buf);
					if level == 5 then
						s:send("\32\2\0\1");
						print("refused-v5");
						drop(s);
					elseif level then
						pending[s] = nil;
						local up = assert(socket.connect("127.0.0.1", broker_port));
						up:settimeout(0);
						pairs_of[s], pairs_of[up] = up, s;
						sockets[#sockets + 1] = up;
						up:settimeout(5); up:send(buf); up:settimeout(0);
					else
						pending[s] = buf;
					end
				else
					local peer = pairs_of[s];
					if peer then peer:settimeout(5); peer:send(data); peer:settimeout(0); end
				end
			end
			if err == "closed" then drop(s); end
		end
	end
end
