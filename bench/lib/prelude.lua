-- bench/lib/prelude.lua — first line of every benchmark that loads Prosody's
-- libraries in process: Prosody 13's (`make env PROSODY=13`) require each
-- other as prosody.util.*, which its loader.lua maps to the plain names, as
-- its prosody executable does before anything else. 0.12 has no loader.
if os.getenv("BRISK_PROSODY") == "13" then
	require "loader";
end
