-- brisk.iot.dispatch — what mod_brisk_iot does with each event the engine
-- (brisk.presence) delivers.
--
-- event(ev, session, stanza) completes the engine's event table into the
-- one docs/iot.md describes (username, host, resource, show, status, rule
-- names...), counts it, fires it as iot/<kind>, hands a copy to the hook
-- scripts, and runs the rules it fires through their sinks
-- (brisk.iot.sinks). The engine has already decided which rules fire.
--
-- Every side effect is injected, so that all of this runs in specs
-- without a server. fx:
--   fire(kind, ev)                   module:fire_event("iot/" .. kind, ev)
--   count(kind)                      the events_<kind> metric
--   hook_error()                     the hook_errors metric
--   log(level, fmt, ...)             module:log
--   presence_of(jid)                 the device's leading session and its
--                                    presence stanza now (timer events)
--   send_message(to, text)           a chat message from the host (notify)
--   webhook(url, key, device, body)  queue a signed webhook
--   pubsub(service)                  the PubSub service object of that
--                                    host, or nil
--   mqtt(topic, body)                publish body to <prefix>/<topic>
--                                    (brisk.iot.mqtt)
-- A new sink that needs a new kind of side effect adds one function here.

local jid_util = require "brisk.prosody".lib "util.jid";
local scripts_lib = require "brisk.iot.scripts";
local sinks = require "brisk.iot.sinks";

local M = {};

local dispatcher = {};
local dispatcher_mt = { __index = dispatcher };

local SHOW = { away = true, chat = true, dnd = true, xa = true };

-- opts.rules: brisk.iot.config's compiled rules (index = the engine's);
-- opts.fx: the side effects above; opts.scripts: a hook script set
-- (brisk.iot.scripts.load), or none.
function M.new(opts)
	return setmetatable({
		rules = assert(opts.rules, "rules");
		fx = assert(opts.fx, "fx");
		scripts = opts.scripts or { handlers = {}, scripts = {}, errors = 0 };
	}, dispatcher_mt);
end

-- Hook scripts reloaded: events from now on go to this set.
function dispatcher:set_scripts(set)
	self.scripts = set;
end

function dispatcher:run_rule(rule, ev)
	local fx = self.fx;
	fx.log("debug", "Rule %q fired: %s", rule.name, sinks.describe(ev));
	for _, sink in ipairs(sinks.list) do
		local target = rule.targets[sink.name];
		if target ~= nil then sink.run(target, rule, ev, fx); end
	end
end

-- One event. session and stanza: the leading session and presence of the
-- update that caused it (both nil for timer events, whose details come
-- from the device's presence now; stanza nil when the device went offline).
function dispatcher:event(ev, session, stanza)
	local fx = self.fx;
	if ev.state == "online" and not stanza then
		session, stanza = fx.presence_of(ev.jid);
	end
	ev.username, ev.host = jid_util.split(ev.jid);
	ev.resource = session and session.resource;
	if stanza and ev.state == "online" then
		ev.stanza = stanza;
		local sh = stanza:get_child_text("show");
		ev.show = SHOW[sh] and sh or (sh == nil and "available" or sh);
		ev.status = stanza:get_child_text("status");
	elseif ev.state == "offline" then
		ev.show, ev.status, ev.priority = "unavailable", nil, nil;
	end
	ev.previous_show = ev.previous_show_class ~= "" and ev.previous_show_class or
		(ev.previous == "online" and "available" or nil);
	ev.show_class, ev.previous_show_class = nil, nil;
	local fired, names = {}, {};
	for i, r in ipairs(ev.rules) do
		fired[i] = self.rules[r];
		names[i] = fired[i].name;
	end
	ev.rules = names;
	ev.rule = names[1];
	fx.count(ev.kind);
	fx.fire(ev.kind, ev);
	local set = self.scripts;
	if set.handlers[ev.kind] or set.handlers["*"] then
		local copy = {};
		for k, v in pairs(ev) do if k ~= "stanza" then copy[k] = v; end end
		copy.xml = stanza and tostring(stanza) or nil;
		scripts_lib.dispatch(set, copy, function (script, err)
			fx.hook_error();
			fx.log("error", "Hook script %s failed on %s for %s: %s", script, ev.kind, ev.jid, tostring(err));
		end);
	end
	for _, rule in ipairs(fired) do
		local ok, err = pcall(self.run_rule, self, rule, ev);
		if not ok then fx.log("error", "Rule %q failed: %s", rule.name, tostring(err)); end
	end
end

-- Every event the engine has queued after an update, as event() takes them.
function dispatcher:drain(engine, session, stanza)
	while true do
		local ev = engine:pop();
		if not ev then return; end
		self:event(ev, session, stanza);
	end
end

-- Every event the engine has queued after a tick, each on its own: one
-- that fails is logged and the others still go.
function dispatcher:drain_timers(engine)
	while true do
		local ev = engine:pop();
		if not ev then return; end
		local ok, err = pcall(self.event, self, ev);
		if not ok then self.fx.log("error", "Dispatching %s for %s failed: %s", ev.kind, ev.jid, tostring(err)); end
	end
end

return M;
