-- brisk.storage_db — one open brisk.store database per file for the whole
-- process, shared by every host that loads mod_storage_brisk (each SQLite
-- connection costs memory and its own statement cache), plus key files.

local store = require "brisk.store";

local M = {};

local open_dbs = {}; -- path -> { db, refs, options fingerprint }

local prosody_lib = require "brisk.prosody".lib;

-- The C core requires nothing itself: what it needs from Prosody, util.stanza's
-- metatable (so that stanzas round-trip as stanzas), is handed to open().
local stanza_mt = prosody_lib "util.stanza".stanza_mt;

-- What must match for two hosts to share one connection (the key only as a hash).
local function fingerprint(opts)
	local key_id = opts.key and prosody_lib "util.hashes".sha256(opts.key, true) or "-";
	return ("%s|%s|%s"):format(opts.synchronous or "full", tostring(opts.busy_timeout), key_id);
end

-- Open (or share) the database at path; every acquire needs one release.
function M.acquire(path, opts)
	local entry = open_dbs[path];
	local fp = fingerprint(opts);
	if entry then
		if entry.fp ~= fp then
			return nil, "database "..path.." is already open with other options (synchronous, busy timeout or key)";
		end
		entry.refs = entry.refs + 1;
		return entry.db;
	end
	local ok, db, err = pcall(store.open, path, {
		synchronous = opts.synchronous, busy_timeout = opts.busy_timeout, key = opts.key, stanza_mt = stanza_mt,
	});
	if not ok then return nil, tostring(db); end
	if not db then return nil, err; end
	open_dbs[path] = { db = db, refs = 1, fp = fp };
	return db;
end

function M.release(path)
	local entry = open_dbs[path];
	if not entry then return; end
	entry.refs = entry.refs - 1;
	if entry.refs <= 0 then
		open_dbs[path] = nil;
		entry.db:close();
	end
end

-- A key file holds the 32-byte key raw, or as 64 hexadecimal digits
-- (surrounding whitespace ignored), e.g. made with: head -c32 /dev/urandom
function M.read_key_file(filename)
	local f, err = io.open(filename, "rb");
	if not f then return nil, "cannot read key file: "..tostring(err); end
	local data = f:read("a") or "";
	f:close();
	if #data == 32 then return data; end
	local hex = data:match("^%s*(%x+)%s*$");
	if hex and #hex == 64 then
		return (hex:gsub("%x%x", function (h) return string.char(tonumber(h, 16)); end));
	end
	return nil, "key file "..filename.." must hold 32 raw bytes or 64 hexadecimal digits";
end

return M;
