-- spec/helpers/init.lua — loaded by busted before any spec (run-specs.sh
-- passes it as --helper).
--
-- Under `make test-asan` the sanitizer runtime is preloaded into this lua5.4
-- (BRISK_ASAN_PRELOAD says which libraries). It must not leak into the tools
-- specs run (make, cc, luarocks: they are not built for it), so it is taken
-- out of this process's environment here; spec/helpers/prosody.lua puts it
-- back for the prosody and prosodyctl processes it starts.
local preload = os.getenv("BRISK_ASAN_PRELOAD");
if preload and preload ~= "" then
	require "util.pposix".setenv("LD_PRELOAD", nil);
end

-- Prosody 13's libraries require each other as prosody.util.*: its
-- loader.lua (found through LUA_PATH, see `make env PROSODY=13`) maps those
-- names to the plain ones, as its prosody executable does before anything
-- else. Prosody 0.12 has no loader.
if os.getenv("BRISK_PROSODY") == "13" then
	require "loader";
end
