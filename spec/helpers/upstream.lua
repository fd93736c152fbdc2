-- spec/helpers/upstream.lua — the busted helper for Prosody's own specs
-- (spec/upstream/, run by scripts/run-upstream-specs.sh).
--
-- BRISK_UPSTREAM=stock runs them against stock Prosody, as Prosody's own
-- test suite does; BRISK_UPSTREAM=brisk with Brisk in its place:
--   every library spec: Brisk installed first, as mod_brisk_xml and
--     mod_brisk_util install it (brisk.patch): brisk.xml's parser and
--     serializer in util.xmppstream and util.stanza, and all three of
--     util.jid's functions, util.indexedbheap.create and util.events.new;
--   core_storagemanager: the spec's `configs` table (its list of drivers
--     under test) replaced by the brisk driver alone.
-- Either way the storage spec finds drivers through CFG_PLUGINDIR: Brisk's
-- lualib/ and the modules folder of the Prosody on package.path.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "init.lua");

local target = os.getenv("BRISK_UPSTREAM") or "stock";
assert(target == "stock" or target == "brisk", "BRISK_UPSTREAM must be stock or brisk");

local lualib = assert(package.searchpath("mod_storage_brisk", package.path), "lualib/ not on package.path")
	:gsub("[^/]*$", "");
local core = assert(package.searchpath("core.storagemanager", package.path), "Prosody not on package.path");
_G.CFG_PLUGINDIR = lualib .. ";" .. core:gsub("core/storagemanager%.lua$", "modules/");

if target == "brisk" then
	-- A spec process has no Prosody to rebind: only the libraries are patched.
	local names = { "stanza", "xmppstream", "jid", "indexedbheap", "events" };
	local _, report = require "brisk.patch".install(names, { rebind = false });
	assert(#report.replaced == #names, "brisk.patch.install() replaced only: " .. table.concat(report.replaced, ", "));
end

-- describe("storagemanager", fn) registers fn before busted runs it; fn's
-- upvalue `configs` is the spec's table of drivers under test. Stock runs
-- keep the drivers this machine has (no MySQL or PostgreSQL server here);
-- Brisk runs test the brisk driver alone.
local function drivers(configs)
	if target == "brisk" then return { brisk = { storage = "brisk" } }; end
	local kept = {};
	for name, config in pairs(configs) do
		if config.storage ~= "sql" or config.sql.driver == "SQLite3" then kept[name] = config; end
	end
	return kept;
end

require "busted".subscribe({ "register", "describe" }, function (name, fn)
	-- (a subscriber returns nil, true to let busted's own run after it)
	if name ~= "storagemanager" or type(fn) ~= "function" then return nil, true; end
	local pointed = false;
	for i = 1, math.huge do
		local up, configs = debug.getupvalue(fn, i);
		if up == nil then break; end
		if up == "configs" then
			debug.setupvalue(fn, i, drivers(configs));
			pointed = true;
		end
	end
	assert(pointed, "the storagemanager spec has no `configs` table");
	return nil, true;
end, { priority = 1 });
