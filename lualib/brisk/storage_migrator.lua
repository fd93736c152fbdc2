-- brisk.storage_migrator — let Prosody's prosody-migrator find mod_storage_brisk
-- without copying it into Prosody's plugin folder:
--
--   lua5.4 -l brisk.storage_migrator /usr/bin/prosody-migrator --config migrator.cfg.lua input output
--
-- prosody-migrator reads no Prosody config, so "plugin_paths" cannot help.
-- Its first statements set the globals CFG_SOURCEDIR, CFG_CONFIGDIR and
-- CFG_PLUGINDIR; this catches the assignment of CFG_PLUGINDIR and puts the
-- folder holding mod_storage_brisk.lua in front of it, then steps aside.
-- Nothing of Prosody is loaded here, so the same line works for Prosody 0.12
-- and 13 (whose libraries only load after its own loader).

local found = package.searchpath("mod_storage_brisk", package.path);
if not found then
	error("brisk.storage_migrator: mod_storage_brisk.lua is not on package.path (eval \"$(make -s env)\")");
end
local dir = found:gsub("[^/]*$", "");

assert(getmetatable(_G) == nil, "brisk.storage_migrator: load it first, with lua5.4 -l");
setmetatable(_G, {
	__newindex = function (g, k, v)
		if k == "CFG_PLUGINDIR" then
			setmetatable(g, nil);
			v = dir .. package.config:sub(3, 3) .. (v or "");
		end
		rawset(g, k, v);
	end;
});

return true;
