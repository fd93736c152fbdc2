-- brisk.storage_migrator — let Debian's prosody-migrator find mod_storage_brisk
-- without copying it into Prosody's plugin folder:
--
--   lua5.4 -l brisk.storage_migrator /usr/bin/prosody-migrator --config migrator.cfg.lua input output
--
-- prosody-migrator reads no Prosody config, so "plugin_paths" cannot help; this
-- adds the folder holding mod_storage_brisk.lua in front of its plugin path,
-- right after the migrator sets that path up.

local found = package.searchpath("mod_storage_brisk", package.path);
if not found then
	error("brisk.storage_migrator: mod_storage_brisk.lua is not on package.path (eval \"$(make -s env)\")");
end
local dir = found:gsub("[^/]*$", "");

local ok, startup = pcall(require, "prosody.util.startup");
if not ok then startup = require "util.startup"; end
local setup = startup.setup_plugin_install_path;
startup.setup_plugin_install_path = function (...)
	setup(...);
	-- luacheck: ignore 111 113
	CFG_PLUGINDIR = dir .. package.config:sub(3, 3) .. (CFG_PLUGINDIR or "");
	prosody.paths.plugins = CFG_PLUGINDIR;
end

return true;
