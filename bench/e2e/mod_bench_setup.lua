-- Benchmark fixture, loaded only by bench/e2e.lua's servers: creates the load
-- generator's accounts and rosters through Prosody's own storage API (so it
-- works for whichever roster store is configured, internal or brisk) in one
-- pass, instead of one prosodyctl process per account.  When done it writes
-- the file named by bench_setup_done so the driver knows the server is ready.
--
-- Accounts: <prefix>0 .. <prefix>(N-1) and the controller <ctl>.  Every
-- device's roster holds the controller, and the controller's roster holds
-- every device, all with subscription "both", so presence fans out.

local scram_hashers = require "util.sasl.scram".hashers;
local hex = require "util.hex";

local n = module:get_option_number("bench_accounts", 100);
local prefix = module:get_option_string("bench_prefix", "u");
local ctl = module:get_option_string("bench_ctl", "ctl");
local password = module:get_option_string("bench_password", "bench");
local done_file = module:get_option_string("bench_setup_done");
local iterations = module:get_option_number("default_iteration_count", 10000);
local host = module.host;

local function setup()
	local t0 = os.clock();
	-- One salt for every account: hashing once keeps setup fast; logins still
	-- pay the full PBKDF2 cost, which is what a real server pays.
	local salt = "brisk-bench-salt";
	local ok, stored_key, server_key = scram_hashers["SHA-1"](password, salt, iterations);
	assert(ok, stored_key);
	local account = {
		stored_key = hex.encode(stored_key), server_key = hex.encode(server_key),
		salt = salt, iteration_count = iterations,
	};
	local accounts = module:open_store("accounts");
	local rosters = module:open_store("roster");
	local ctl_jid = ctl .. "@" .. host;
	local ctl_roster = { [false] = { version = 1, pending = {} } };
	for i = 0, n - 1 do
		local user = prefix .. i;
		assert(accounts:set(user, account));
		assert(rosters:set(user, {
			[false] = { version = 1, pending = {} };
			[ctl_jid] = { subscription = "both", groups = { "controllers" }, name = "controller" };
		}));
		ctl_roster[user .. "@" .. host] = { subscription = "both", groups = { "devices" }, name = user };
	end
	assert(accounts:set(ctl, account));
	assert(rosters:set(ctl, ctl_roster));
	module:log("info", "bench setup: %d accounts and rosters in %.2f s CPU", n + 1, os.clock() - t0);
	if done_file then
		local f = assert(io.open(done_file, "w"));
		f:write(("%d\n"):format(n + 1));
		f:close();
	end
end

module:hook_global("server-started", function ()
	local ok, err = pcall(setup);
	if not ok then
		module:log("error", "bench setup failed: %s", err);
		if done_file then
			local f = io.open(done_file, "w");
			if f then f:write("error: ", tostring(err), "\n"); f:close(); end
		end
	end
end);
