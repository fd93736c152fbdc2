-- brisk.iot.config — mod_brisk_iot's options and its rules.
--
-- read(get) reads every iot_* option through get(name, kind, default),
-- which mod_brisk_iot maps to module:get_option_<kind> (so Prosody's own
-- type handling and warnings apply), into one table.
--
-- compile(options, opts) turns iot_devices and iot_rules into the device
-- engine and the list of rules' targets. A rule has one owner per field:
-- the engine (brisk.presence.new) checks and keeps everything it uses —
-- name, event, match, timing, status/show condition — and refuses fields
-- nobody owns; brisk.iot.sinks checks the targets (webhook, notify,
-- pubsub, mqtt, log). Either raises an error naming the rule and the
-- problem, which stops the module from loading. iot_mqtt is checked by
-- brisk.iot.mqtt the same way.

local presence = require "brisk.presence";
local sinks = require "brisk.iot.sinks";
local mqtt = require "brisk.iot.mqtt";

local M = {};

-- name, the module:get_option_<kind> that reads it, default.
M.OPTIONS = {
	{ "iot_devices", "array", nil };
	{ "iot_rules", "raw", {} };
	{ "iot_tick_interval", "number", 0.25 };
	{ "iot_pubsub_service", "string", nil };
	{ "iot_hook_scripts", "array", {} };
	{ "iot_script_config", "raw", {} };
	{ "iot_http_listing", "boolean", false };
	{ "iot_http_token", "string", nil };
	{ "iot_webhook_queue_size", "number", 1000 };
	{ "iot_webhook_concurrency", "number", 4 };
	{ "iot_webhook_retries", "number", 5 };
	{ "iot_webhook_backoff", "number", 1 };
	{ "iot_webhook_max_backoff", "number", 300 };
	{ "iot_webhook_timeout", "number", 10 };
	{ "iot_mqtt", "raw", nil };
};

-- The options, by name without "iot_": options.rules, options.tick_interval...
function M.read(get)
	local options = {};
	for _, o in ipairs(M.OPTIONS) do
		options[o[1]:gsub("^iot_", "")] = get(o[1], o[2], o[3]);
	end
	return options;
end

-- A whole file's bytes, or nil and io.open's message (secret files here,
-- and mod_brisk_iot's hook scripts).
local function read_file(path)
	local f, err = io.open(path, "rb");
	if not f then return nil, err; end
	local data = f:read("a");
	f:close();
	return data;
end
M.read_file = read_file;

-- iot_rules must be a list: the engine reads rules by position.
local function check_list(rules)
	if type(rules) ~= "table" then error("iot_rules must be a list of rules", 0); end
	local n = #rules;
	for k in pairs(rules) do
		if math.type(k) ~= "integer" or k < 1 or k > n then
			error("iot_rules must be a list of rules (found key " .. tostring(k) .. ")", 0);
		end
	end
end

--[[
compile(options, opts) -> { engine, rules, selectors, mqtt }
  options: as read() returns them (devices, rules, pubsub_service, mqtt are used)
  opts.host: the VirtualHost, whose accounts are the devices by default
  opts.now: the current time (seconds)
  opts.read_file(path) -> data or nil, err: reads secret_file and
    password_file (default: the file system)
rules[i] = { name, targets = { [sink name] = what sink.run needs } } for the
engine's rule i; selectors are the device globs in force; mqtt is the
iot_mqtt settings (brisk.iot.mqtt.check), or nil. With iot_mqtt set, the
brisk.mqtt C module must be loadable.
]]
function M.compile(options, opts)
	local list = options.rules;
	if list == nil then list = {}; end
	check_list(list);
	-- The engine gets each rule without the sinks' fields.
	local engine_rules = {};
	for i = 1, #list do
		local r = list[i];
		if type(r) == "table" then
			local er = {};
			for k, v in pairs(r) do
				if not sinks.fields[k] then er[k] = v; end
			end
			r = er;
		end
		engine_rules[i] = r == nil and false or r;  -- a hole: "rule #i: not a table"
	end
	-- By default every local account of this host is a device.
	local selectors = options.devices or { "*@" .. opts.host };
	-- Called through pcall, so that the engine's message (about the
	-- configuration, not about this file) carries no source position.
	local ok, engine = pcall(presence.new, { now = opts.now, rules = engine_rules, devices = selectors });
	if not ok then error(engine, 0); end
	local reader = opts.read_file or read_file;
	local mqtt_settings;
	if options.mqtt ~= nil then
		mqtt_settings = mqtt.check(options.mqtt, { host = opts.host, read_file = reader });
	end
	local sink_opts = { pubsub_service = options.pubsub_service, mqtt = mqtt_settings, read_file = reader };
	local rules = {};
	for i = 1, #list do
		local r = list[i];
		local label = r.name ~= nil and ("rule '%s'"):format(r.name) or ("rule #%d"):format(i);
		local function fail(msg) error(label .. ": " .. msg, 0); end
		local rule = { name = r.name or ("rule-" .. i), targets = {} };
		local n = 0;
		for _, sink in ipairs(sinks.list) do
			local target = sink.check(r, sink_opts, fail);
			if target ~= nil then
				rule.targets[sink.name] = target;
				n = n + 1;
			end
		end
		if n == 0 then fail("missing target (" .. sinks.names .. ")"); end
		rules[i] = rule;
	end
	return { engine = engine, rules = rules, selectors = selectors, mqtt = mqtt_settings };
end

return M;
