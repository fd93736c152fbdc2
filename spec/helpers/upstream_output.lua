-- spec/helpers/upstream_output.lua — busted's json output handler, for
-- scripts/upstream-specs.lua, except that values JSON cannot hold (a
-- pending test's element carries functions, as in util_events_spec) are
-- written as strings instead of making the report vanish.
local json = require "dkjson";

return function (options) -- luacheck: ignore 212/options
	local busted = require "busted";
	local handler = require "busted.outputHandlers.base"();

	handler.suiteEnd = function ()
		io.write(json.encode({
			pendings = handler.pendings,
			successes = handler.successes,
			failures = handler.failures,
			errors = handler.errors,
			duration = handler.getDuration(),
		}, { exception = json.encodeexception }));
		io.write("\n");
		io.flush();
		return nil, true;
	end

	busted.subscribe({ "suite", "end" }, handler.suiteEnd);
	return handler;
end
