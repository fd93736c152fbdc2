-- mod_brisk_xml: makes Prosody use brisk.xml's C code for XML: the stream
-- parser behind util.xmppstream.new (c2s, s2s, components, BOSH, WebSocket)
-- and util.stanza's serialization. A global module; list it anywhere in
-- modules_enabled.
--
-- Options (global section):
--   brisk_xml_parse = true        replace util.xmppstream.new
--   brisk_xml_serialize = true    replace util.stanza serialization
--   brisk_xml_max_depth           nesting limit of a stanza (none by default, as stock)
--   brisk_xml_max_attributes      attributes per element (none by default, as stock)
--   brisk_xml_hibernate_after = 30  seconds a stream must have been idle at a
--                                 stanza boundary before its parser is freed
--                                 (rebuilt on its next bytes); 0 disables
--   brisk_xml_release_memory = 4194304  bytes of parser memory freed (by
--                                 hibernation, closed streams) after which a
--                                 sweep asks malloc to return free pages to
--                                 the system (glibc's malloc_trim); 0 never
--
-- What is replaced, and how it is put back, is brisk.patch's job
-- (brisk/patch/xmppstream.lua, brisk/patch/stanza.lua). mod_c2s, mod_s2s,
-- mod_component and mod_bosh copy util.xmppstream.new into a local when they
-- load, and Prosody loads modules in no fixed order; reloading them would
-- close their ports. So the copies are rebound instead (brisk/patch/walk.lua):
-- a module's local lives in one upvalue cell shared by all of its closures,
-- and setting it changes what all of them call. Unloading restores stock for
-- new streams; existing streams keep the parser they were created with.
module:set_global();

local patch = require "brisk.patch";

local parse = module:get_option_boolean("brisk_xml_parse", true);
local serialize = module:get_option_boolean("brisk_xml_serialize", true);
local hibernate_after = module:get_option_number("brisk_xml_hibernate_after", 30);
local release_after = module:get_option_number("brisk_xml_release_memory", 4 * 1024 * 1024);

local brisk_xml = patch.core("xmppstream", module.path);
brisk_xml.set_limits({
	max_depth = math.tointeger(module:get_option_number("brisk_xml_max_depth", math.maxinteger));
	max_attributes = math.tointeger(module:get_option_number("brisk_xml_max_attributes", math.maxinteger));
});

local names = {};
if serialize then names[#names + 1] = "stanza"; end
if parse then names[#names + 1] = "xmppstream"; end

local undo, report = patch.install(names, {
	module_path = module.path;
	-- this module's environment holds stock's new; it is no place to rebind
	skip = { [_ENV] = true, [module] = true };
});

local function list(t)
	return (t and #t > 0) and table.concat(t, ", ") or "none";
end

module:log("info", "brisk.xml %s installed: replaced %s; %s", brisk_xml._VERSION, list(report.replaced),
	parse and ("rebound util.xmppstream.new in already loaded modules: " .. list(report.where))
	or "stream parsing left to stock (brisk_xml_parse = false)");

-- Idle streams' parsers: a sweep every half of brisk_xml_hibernate_after
-- frees those of streams idle at a stanza boundary for at least that long
-- (so after between 1 and 1.5 times it). It walks every Brisk stream once
-- (about 1 ms per 10 000 streams); streams wake on their own. What it frees
-- stays in malloc's free lists, between live blocks, until malloc is asked
-- to return whole free pages: a walk over the heap (tens of ms for a heap
-- of a GB), so only once enough has been freed to pay for it (docs/xml.md).
if parse and hibernate_after > 0 then
	local period = math.max(1, hibernate_after / 2);
	local measure_release = module:measure("release_memory", "times");
	module:add_timer(period, function ()
		local n, hibernating, streams, freed = brisk_xml.hibernate(hibernate_after);
		if n > 0 then
			module:log("debug", "hibernated %d idle stream parsers (%d of %d streams hibernating)",
				n, hibernating, streams);
		end
		if release_after > 0 and freed >= release_after then
			local done = measure_release();
			brisk_xml.release_memory();
			done();
			module:log("debug", "returned free memory to the system after %d bytes were freed", freed);
		end
		return period;
	end);
end

function module.unload()
	local back = undo();
	module:log("debug", "restored stock util.xmppstream.new in %d place(s): %s", back.rebound, list(back.where));
end
