-- mod_spec_ready: test-only. Writes <data_path>/ready once Prosody has loaded
-- every module and fired "server-started", so spec/helpers/prosody.lua knows
-- the server is completely up (c2s listens earlier than that).
module:set_global();

module:hook_global("server-started", function ()
	local path = prosody.paths.data .. "/ready";
	local f = assert(io.open(path, "w"));
	f:write(tostring(os.time()));
	f:close();
end);
