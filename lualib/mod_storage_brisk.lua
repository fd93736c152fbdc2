-- mod_storage_brisk — Prosody storage driver "brisk": keyval and map stores
-- in one SQLite database through the C module brisk.store, with a compact
-- binary encoding for rosters and a general one for every other store.
-- Semantics follow the stock drivers (mod_storage_internal, mod_storage_sql);
-- see docs/storage.md for options and docs/storage-format.md for the format.

-- brisk.storage_db requires brisk.store; load it through brisk.loader
-- first, which also finds the C core in a luarocks tree.
require "brisk.loader".require("brisk.store", module.path);
local dbs = require "brisk.storage_db";

local host = module.host;
local pcall, setmetatable, type, tostring = pcall, setmetatable, type, tostring;

-- prosody-migrator reads no Prosody config: it hands us nothing but its own
-- store definitions, kept in the global "config". Take our options from the
-- first store there whose type is "brisk".
local migrator_conf;
if prosody.process_type == "migrator" and type(_G.config) == "table" then
	for _, conf in pairs(_G.config) do
		if type(conf) == "table" and conf.type == "brisk" then migrator_conf = conf; break; end
	end
end

local function option(name, default)
	if migrator_conf and migrator_conf[name] ~= nil then return migrator_conf[name]; end
	return module:get_option(name, default);
end

local resolve_relative_path = require "brisk.prosody".lib "util.paths".resolve_relative_path;
local path = resolve_relative_path(prosody.paths.data or ".",
	migrator_conf and migrator_conf.path or module:get_option_string("brisk_storage_path", "brisk.sqlite"));
local synchronous = tostring(option("brisk_storage_synchronous", "full")):lower();
if synchronous ~= "full" and synchronous ~= "normal" then
	error("brisk_storage_synchronous must be \"full\" or \"normal\", not "..synchronous);
end
local busy_timeout = option("brisk_storage_busy_timeout", 5000);
if math.type(busy_timeout) ~= "integer" or busy_timeout < 0 then
	error("brisk_storage_busy_timeout must be a whole number of milliseconds");
end
local key_file = migrator_conf and (migrator_conf.key_file or migrator_conf.brisk_storage_key_file)
	or module:get_option_string("brisk_storage_key_file");
local key;
if key_file then
	key_file = resolve_relative_path(prosody.paths.config or ".", key_file);
	local err;
	key, err = dbs.read_key_file(key_file);
	if not key then error(err); end
end

local db, open_err = dbs.acquire(path, { synchronous = synchronous, busy_timeout = busy_timeout, key = key });
key = nil;
if not db then
	module:log("error", "Cannot open brisk storage %s: %s", path, open_err);
	error("brisk storage: "..tostring(open_err));
end
module:log("debug", "Using brisk storage %s (synchronous=%s)", path, synchronous);

function module.unload()
	dbs.release(path);
end

-- Failures are counted for Prosody's statistics (and logged where they happen).
local measure_read_error = module:measure("read_errors", "rate");
local measure_write_error = module:measure("write_errors", "rate");

-- Run a database method; any raise becomes nil, err (nothing escapes to Prosody).
local function call(method, ...)
	local ok, ret, err = pcall(method, db, ...);
	if not ok then return nil, tostring(ret); end
	return ret, err;
end

local function read_failed(what, store, user, err)
	measure_read_error();
	module:log("error", "Unable to read %s from brisk storage %s store for %s: %s",
		what, store, user or "<host>", err);
	return nil, err;
end

local function array_iterator(list)
	local i = 0;
	return function ()
		i = i + 1;
		return list[i];
	end;
end

--- Key/value stores

local keyval = {};
keyval.__index = keyval;

function keyval:get(user)
	local data, err = call(db.get, host, user, self.store, self.roster);
	if data == nil and err then return read_failed("data", self.store, user, err); end
	return data;
end

function keyval:set(user, data)
	if data ~= nil and type(data) ~= "table" then
		return nil, "brisk storage can only store tables in keyval stores";
	end
	local ok, err = call(db.set, host, user, self.store, self.roster, data);
	if not ok then
		measure_write_error();
		module:log("error", "Unable to write to brisk storage %s store for %s: %s", self.store, user or "<host>", err);
	end
	return ok, err;
end

function keyval:users()
	local list, err = call(db.users, host, self.store);
	if not list then
		module:log("error", "Unable to list users of brisk storage %s store: %s", self.store, err);
		list = {};
	end
	return array_iterator(list);
end

--- Map stores: the same rows as the keyval view, one key at a time.

local map = {};
map.__index = map;
map.remove = {};

function map:get(user, key)
	if key == nil then return nil; end -- as indexing a stock roster with nil
	local data, err = call(db.get_key, host, user, self.store, self.roster, key);
	if data == nil and err then return read_failed("key "..tostring(key), self.store, user, err); end
	return data;
end

function map:set_keys(user, keydatas)
	local ok, err = call(db.set_keys, host, user, self.store, self.roster, keydatas, self.remove);
	if not ok then
		measure_write_error();
		module:log("error", "Unable to write to brisk storage %s store for %s: %s", self.store, user or "<host>", err);
	end
	return ok, err;
end

function map:set(user, key, data)
	if key == nil then return nil, "map keys cannot be nil"; end
	if data == nil then data = self.remove; end
	return self:set_keys(user, { [key] = data });
end

function map:get_all(key)
	if type(key) ~= "string" or key == "" then
		return nil, "get_all only supports non-empty string keys";
	end
	local data, err = call(db.get_all, host, self.store, self.roster, key);
	if data == nil and err then return read_failed("key "..key, self.store, "all users", err); end
	return data;
end

function map:delete_all(key)
	if type(key) ~= "string" or key == "" then
		return nil, "delete_all only supports non-empty string keys";
	end
	local ok, err = call(db.delete_all, host, self.store, self.roster, key);
	if not ok then
		module:log("error", "Unable to delete %s from brisk storage %s store: %s", key, self.store, err);
	end
	return ok, err;
end

map.users = keyval.users;

--- The driver

local driver = {};

function driver:open(store, typ) -- luacheck: ignore 212/self
	typ = typ or "keyval";
	local roster = store == "roster";
	if typ == "keyval" then
		return setmetatable({ store = store, type = typ, roster = roster }, keyval);
	elseif typ == "map" then
		return setmetatable({ store = store, type = typ, roster = roster }, map);
	elseif typ == "archive" then
		local err = ("the brisk storage driver has no archive stores; store '%s' needs a driver that "
			.."supports archives, e.g. storage = { %s = \"internal\" } or \"sql\""):format(store, store);
		module:log("error", "%s", err);
		return nil, err;
	end
	return nil, "unsupported-store";
end

function driver:stores(user) -- luacheck: ignore 212/self
	local list, err = call(db.stores, host, user);
	if not list then return nil, err; end
	return array_iterator(list);
end

function driver:purge(user) -- luacheck: ignore 212/self
	return call(db.purge, host, user);
end

module:provides("storage", driver);
