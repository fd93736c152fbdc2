-- bench/mqtt.lua — mod_brisk_iot's fleet state in MQTT (iot_mqtt).
--
-- Stock Prosody has no MQTT publishing, so there is no stock column; the
-- figures are Brisk's alone, against Debian's mosquitto on loopback:
--
--   * presence-to-MQTT latency, live: a device on a real Prosody changes
--     its status, and a subscriber (an MQTT client of its own, on
--     LuaSocket, not libmosquitto) waits for the event on the device's
--     events topic; one change at a time, p50 and p99.
--   * events per second through the sink, in process: brisk.iot.mqtt and
--     the C client on Prosody's epoll loop, each event being what the
--     module publishes for it (the event, and the device's retained state;
--     two QoS 1 messages), until the broker has acknowledged all of them.
--   * events per second end to end, live: one device sends presences as
--     fast as Prosody takes them, until the subscriber has every event.
--
--   lua5.4 bench/mqtt.lua [--quick]    (after eval "$(make -s env)")
-- Prints a Markdown section; with BENCH_TSV set, appends rows to that file
-- (stock 0: no stock equivalent, so they stay out of the ratio chart).
require "bench.lib.prelude"
local socket = require "socket";
local json = require "util.json";
local st = require "util.stanza";
local prosody = require "spec.helpers.prosody";
local mosquitto = require "spec.helpers.mosquitto";
local mqtt_lib = require "brisk.iot.mqtt";
local watch = require "brisk.iot.watch";

local quick = arg[1] == "--quick";
local N_LATENCY = quick and 100 or 500;
local N_SINK = quick and 20000 or 100000;
local N_LIVE = quick and 2000 or 10000;

local function pct(sorted, p) return sorted[math.max(1, math.ceil(#sorted * p))]; end

local broker = mosquitto.start{ plain_port = true, config = { "max_inflight_messages 100" } };

-- Events through the sink, in process ------------------------------------------------------

local sink_rate;
do
	local server = require "net.server_epoll";
	local co;
	server.add_task(0.005, function ()
		if co and coroutine.running() == co then coroutine.yield(); end
		return 0.005;
	end);
	local function turn()
		co = co or coroutine.create(function () server.loop(); end);
		assert(coroutine.resume(co));
	end
	local settings = mqtt_lib.check({ broker = broker.url, client_id = "bench-sink", queue_size = N_SINK * 2 },
		{ host = "bench.example", read_file = function () end });
	local p = mqtt_lib.new(settings, {
		watch = watch.new(server);
		timer = function (delay, fn) server.add_task(delay, function () return fn(); end); end;
		now = socket.gettime;
		resolve = function (_, cb) cb({ "127.0.0.1" }); end;
		log = function () end;
		known = function () return true; end;
		is_device = function () return true; end;
		states = function () return function () end; end;
	});
	p:start();
	while p.state ~= "connected" do turn(); end
	-- Bodies made beforehand: this measures the sink, not util.json.
	local devices, bodies, states = {}, {}, {};
	for i = 1, 1000 do
		local jid = ("sensor-%04d@bench.example"):format(i);
		devices[i] = { jid = jid, kind = "state" };
		bodies[i] = json.encode({ type = "iot.state", timestamp = "2026-01-01T00:00:00.000Z",
			data = { jid = jid, state = "online", show = "available", status = "battery=80", after = 0 } });
		states[i] = { jid = jid, state = "online", since = "2026-01-01T00:00:00.000Z", show = "available",
			status = "battery=80", flapping = false };
	end
	local before = p:stats().sent;
	local t0 = socket.gettime();
	for k = 1, N_SINK do
		local i = (k - 1) % 1000 + 1;
		p:device_event(devices[i], bodies[i]);
		p:device_state(devices[i].jid, states[i]);
		-- Let the loop run now and then, as Prosody's would between stanzas.
		if k % 200 == 0 then turn(); end
	end
	-- Retained states of one device replace each other while they wait: count
	-- what the broker acknowledged plus what was replaced.
	while true do
		local s = p:stats();
		if s.queued == 0 and s.inflight == 0 then break; end
		turn();
	end
	local elapsed = socket.gettime() - t0;
	local s = p:stats();
	sink_rate = N_SINK / elapsed;
	io.stderr:write(("mqtt bench: sink: %d events, %d messages acknowledged, %d states replaced while waiting, %.2fs\n")
		:format(N_SINK, s.sent - before, s.replaced, elapsed));
	p:close();
end

-- Live: latency and end-to-end rate ------------------------------------------------------------

local lat, live_rate;
do
	local ok, err = pcall(function ()
		local srv = prosody.start{
			host = "bench.example"; host_modules = { "brisk_iot" }; log_level = "warn";
			accounts = { ["dev-1"] = "pw", ["dev-2"] = "pw" };
			host_config = { iot_mqtt = { broker = ("mqtt://127.0.0.1:%d"):format(broker.port), queue_size = N_LIVE * 2 } };
		};
		assert(prosody.wait_for(function ()
			return broker:snapshot("brisk/bench.example/$server")["brisk/bench.example/$server"] == "online";
		end, 10), "Prosody did not connect to the broker");
		local reader = broker:reader("brisk/bench.example/+/events");
		local c = srv:connect("dev-1", "pw", "b");
		c:send(st.presence());
		assert(reader:next(5), "no online event");
		local samples = {};
		for i = 1, N_LATENCY do
			local t0 = socket.gettime();
			c:send(st.presence():text_tag("status", "s" .. i));
			local topic = reader:next(5);
			if topic then samples[#samples + 1] = (socket.gettime() - t0) * 1000; end
		end
		table.sort(samples);
		lat = { p50 = pct(samples, 0.5), p99 = pct(samples, 0.99), n = #samples };
		-- As fast as Prosody takes them: a second device floods.
		local d = srv:connect("dev-2", "pw", "b");
		d:send(st.presence());
		assert(reader:next(5));
		local t0 = socket.gettime();
		local payload = {};
		for i = 1, N_LIVE do payload[#payload + 1] = tostring(st.presence():text_tag("status", "f" .. i)); end
		d:send(table.concat(payload));
		local got = 0;
		while got < N_LIVE do
			local topic = reader:next(10);
			if not topic then break; end
			got = got + 1;
		end
		live_rate = got / (socket.gettime() - t0);
		io.stderr:write(("mqtt bench: live: %d of %d events in %.2fs\n"):format(got, N_LIVE, socket.gettime() - t0));
		reader:close();
		srv:stop();
	end);
	if not ok then io.stderr:write("mqtt bench: live part skipped: ", tostring(err), "\n"); end
end
broker:close();

print("### IoT fleet state in MQTT (mod_brisk_iot, iot_mqtt)");
print("");
print(("Debian's mosquitto %s on loopback, QoS 1; no stock equivalent (stock Prosody has no MQTT publishing)."):format(
	(prosody.sh("dpkg-query -W -f='${Version}' mosquitto 2>/dev/null")):gsub("%s+$", "")));
print("");
print("| measure | Brisk | unit |");
print("|---|---:|---|");
if lat then
	print(("| presence-to-MQTT latency p50 (live, %d samples) | %.2f | ms |"):format(lat.n, lat.p50));
	print(("| presence-to-MQTT latency p99 (live, %d samples) | %.2f | ms |"):format(lat.n, lat.p99));
end
print(("| events through the sink (in process, each: event + retained state) | %.0f | events/s |"):format(sink_rate));
if live_rate then
	print(("| events end to end (live: one device's presences to a subscriber, %d) | %.0f | events/s |"):format(N_LIVE, live_rate));
end
print("");

local tsv = os.getenv("BENCH_TSV");
if tsv then
	local f = assert(io.open(tsv, "a"));
	f:write(("mqtt\tsink events\t0\t%.0f\tevents/s\n"):format(sink_rate));
	if lat then
		f:write(("mqtt\tpresence-to-MQTT p50\t0\t%.3f\tms\n"):format(lat.p50));
		f:write(("mqtt\tpresence-to-MQTT p99\t0\t%.3f\tms\n"):format(lat.p99));
	end
	if live_rate then f:write(("mqtt\tevents end to end\t0\t%.0f\tevents/s\n"):format(live_rate)); end
	f:close();
end
