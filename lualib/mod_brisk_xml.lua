-- mod_brisk_xml: makes Prosody use brisk.xml's C code for XML.
module:set_global();
local brisk_xml = require "brisk.loader".require("brisk.xml", module.path);
local undo = brisk_xml.install({ serialize = module:get_option_boolean("brisk_xml_serialize", true) });
module:log("info", "brisk.xml %s installed", brisk_xml._VERSION);
function module.unload()
	undo();
end
