-- spec/helpers/storage_host.lua — run Prosody's real storage drivers in this
-- Lua process, the way Prosody's own spec/core_storagemanager_spec.lua does:
-- the real configmanager, hostmanager, modulemanager and storagemanager load
-- the real mod_storage_internal, mod_storage_sql and mod_storage_brisk, one
-- virtual host per driver. It fakes the global "prosody", so it is test code
-- only (never installed): used by spec/storage_*_spec.lua and
-- bench/roster.lua, as require "spec.helpers.storage_host".
--
-- Call setup() once per process (busted insulates each spec file), before
-- anything else requires Prosody's core modules.

local M = {};

-- Directory holding mod_storage_brisk.lua, from the Lua search path.
local function lualib_dir()
	local found = package.searchpath("mod_storage_brisk", package.path);
	assert(found, "mod_storage_brisk.lua not on package.path (eval \"$(make -s env)\")");
	return (found:gsub("[^/]*$", ""));
end

-- hosts: { [hostname] = { storage = "internal"|"sql"|"brisk", <other host options> } }
-- Returns storagemanager.
function M.setup(data_path, hosts)
	-- Plugins are searched where the server would find them, ours first,
	-- then the modules folder of the Prosody whose core is on package.path.
	local core = assert(package.searchpath("core.storagemanager", package.path), "Prosody is not on package.path");
	_G.CFG_PLUGINDIR = lualib_dir()..";"..core:gsub("core/storagemanager%.lua$", "modules/");
	package.loaded["net.server"] = require "net.server_select";
	_G.prosody = {
		core_post_stanza = function () end;
		events = require "util.events".new();
		hosts = {};
		bare_sessions = {};
		full_sessions = {};
		paths = { data = data_path, config = data_path };
		process_type = "prosody";
		lock_globals = function () end;
		unlock_globals = function () end;
	};
	-- Warnings and errors are kept for specs to inspect (M.logs, M.take_logs).
	M.logs = {};
	require "util.logger".add_simple_sink(function (source, level, message)
		M.logs[#M.logs + 1] = { source = source, level = level, message = message };
	end, { "warn", "error" });
	local config = require "core.configmanager";
	local sm = require "core.storagemanager";
	local hm = require "core.hostmanager";
	local mm = require "core.modulemanager";
	-- storagemanager and usermanager set each host up on "host-activated".
	require "core.usermanager";
	require "core.storagemanager".olddm.set_data_path(data_path);
	for host, options in pairs(hosts) do
		for k, v in pairs(options) do config.set(host, k, v); end
		assert(hm.activate(host, {}));
		-- Activating the host may already have loaded the driver (a module opened a store).
		if not mm.is_loaded(host, "storage_"..options.storage) then
			assert(mm.load(host, "storage_"..options.storage));
		end
	end
	M.sm = sm;
	return sm;
end

-- Return the log records collected since the last call, at the given level
-- (all when nil), and forget them.
function M.take_logs(level)
	local out = {};
	for _, rec in ipairs(M.logs or {}) do
		if level == nil or rec.level == level then out[#out + 1] = rec; end
	end
	M.logs = {};
	return out;
end

return M;
