-- brisk.loader — how Brisk's Prosody modules load their C cores.
--
-- A plain require works for a checkout (make env) and for a system-wide
-- install (/usr/local/lib/lua/5.4 is on Lua's default path). Prosody 0.12's
-- installer tree (luarocks --tree <data>/custom_plugins) is the exception:
-- util.paths adds the tree's share/lua/5.4 to package.path but, through a
-- slip in its second check, never its lib/lua/5.4 to package.cpath. So when
-- require fails, look for the shared object in the tree the calling module's
-- own file was installed into.
local M = {};

local lua_version = _VERSION:match("%d+%.%d+");

-- name: "brisk.xml"; module_path: the calling Prosody module's file
-- (module.path). Returns the C module, or raises require's own error.
function M.require(name, module_path)
	local ok, lib = pcall(require, name);
	if ok then return lib; end
	local prefix = module_path and module_path:match("^(.*)/share/lua/[%d.]+/[^/]+$");
	if prefix then
		local file = package.searchpath(name, prefix .. "/lib/lua/" .. lua_version .. "/?.so");
		if file then
			local open, err = package.loadlib(file, "luaopen_" .. name:gsub("%.", "_"));
			if not open then error(err, 2); end
			local loaded = open(name, file);
			package.loaded[name] = loaded;
			return loaded;
		end
	end
	error(lib, 2);
end

return M;
