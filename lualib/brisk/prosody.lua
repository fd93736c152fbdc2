-- brisk.prosody — Prosody's own libraries, by the name that works on the
-- running version: Prosody 13 names them prosody.util.*, prosody.core.*,
-- prosody.net.*; 0.12 only util.*, core.*, net.*. Every Brisk module gets
-- Prosody's libraries through lib(), so that choice is made in one place.
local M = {};

-- lib("util.stanza"): the library, as require returns it. 13's name is
-- tried first (on 13 the plain one also works, through its loader, but
-- the prosody.* one is canonical there); a library missing under both names
-- raises the plain name's require error.
function M.lib(name)
	local ok, lib = pcall(require, "prosody." .. name);
	if ok then return lib; end
	return require(name);
end

return M;
