-- Hook script sandbox of mod_brisk_iot (brisk.iot.scripts): own
-- environment, limited globals, errors and runaway loops contained.
local scripts = require "brisk.iot.scripts";

local function api(files, extra)
	local a = {
		logs = {}, sent = {},
		config = { ops = "ops@h" },
		now = function () return 1000; end,
		json = { encode = function () return "{}"; end },
		device = function (jid) return { jid = jid, state = "online" }; end,
		read_file = function (p) return files[p], files[p] == nil and "no such file" or nil; end,
	};
	a.log = function (level, fmt, ...) a.logs[#a.logs + 1] = level .. " " .. fmt:format(...); end;
	a.send_message = function (to, text) a.sent[#a.sent + 1] = to .. ": " .. text; end;
	for k, v in pairs(extra or {}) do a[k] = v; end
	return a;
end

describe("iot hook scripts", function ()
	it("register handlers with on() and see the API", function ()
		local a = api{ ["/s/a.lua"] = [[
			on("offline", "freezer-*@h", function (ev) send_message(config.ops, "off " .. ev.jid) end)
			on("online", function (ev) store.n = (store.n or 0) + 1; log("info", "n=%d", store.n) end)
			on("*", function (ev) if ev.kind == "state" then send_message("x@h", device(ev.jid).state) end end)
		]] };
		local set, errs = scripts.load({ "/s/a.lua" }, a);
		assert.same({}, errs);
		assert.same({ "a.lua" }, set.scripts);
		assert.equal(2, scripts.dispatch(set, { kind = "offline", jid = "freezer-1@h" })); -- "offline" and "*"
		assert.equal(1, scripts.dispatch(set, { kind = "offline", jid = "fan-1@h" })); -- only "*"
		scripts.dispatch(set, { kind = "online", jid = "a@h" });
		scripts.dispatch(set, { kind = "online", jid = "a@h" });
		scripts.dispatch(set, { kind = "state", jid = "a@h" });
		assert.same({ "ops@h: off freezer-1@h", "x@h: online" }, a.sent);
		assert.same({ "info [a.lua] n=1", "info [a.lua] n=2" }, a.logs);
	end);

	it("offers no way out of the sandbox", function ()
		local a = api{ ["/s/probe.lua"] = [[
			result = {}
			for _, name in ipairs{ "io", "require", "load", "loadfile", "dofile", "debug", "package",
				"collectgarbage", "module", "prosody", "hosts", "string.dump" } do
				local v = _G
				for part in name:gmatch("[^.]+") do v = v and v[part] end
				if v ~= nil then error("exposed: " .. name) end
			end
			if os.execute or os.exit or os.remove or os.getenv then error("exposed os function") end
			-- Changing a library table changes only this script's copy.
			string.upper = nil
		]] };
		local set, errs = scripts.load({ "/s/probe.lua" }, a);
		assert.same({}, errs);
		assert.is_function(string.upper);
		assert.is_function(os.execute);
	end);

	it("contains errors: load errors, handler errors, runaway loops", function ()
		local a = api{
			["/s/1-syntax.lua"] = "on('offline', function( end",
			["/s/2-toplevel.lua"] = "error('nope')",
			["/s/3-badon.lua"] = "on('gone', function () end)",
			["/s/4-badpattern.lua"] = "on('online', 'a@b/c', function () end)",
			["/s/5-handlers.lua"] = [[
				on("online", function (ev) error("handler broke") end)
				on("online", function (ev) while true do end end)
				on("online", function (ev) ev.jid = "tampered"; send_message("ok@h", "still here") end)
				on("online", function (ev) send_message("ok@h", ev.jid) end)
			]],
			["/s/6-loop.lua"] = "while true do end",
		};
		local paths = {};
		for _, n in ipairs{ "1-syntax", "2-toplevel", "3-badon", "4-badpattern", "5-handlers", "6-loop", "7-missing" } do
			paths[#paths + 1] = "/s/" .. n .. ".lua";
		end
		local set, errs = scripts.load(paths, a);
		assert.same({ "5-handlers.lua" }, set.scripts);
		assert.equal(6, #errs);
		assert.matches("1%-syntax.lua", errs[1]);
		assert.matches("nope", errs[2]);
		assert.matches("unknown event 'gone'", errs[3]);
		assert.matches("bad pattern 'a@b/c'", errs[4]);
		assert.matches("instruction budget", errs[5]);
		assert.matches("7%-missing.lua: no such file", errs[6]);
		local failures = {};
		local ev = { kind = "online", jid = "d@h" };
		assert.equal(4, scripts.dispatch(set, ev, function (script, err) failures[#failures + 1] = script .. ": " .. tostring(err); end));
		assert.equal(2, #failures);
		assert.matches("handler broke", failures[1]);
		assert.matches("instruction budget", failures[2]);
		-- One handler's change to its event is invisible to the next one.
		assert.same({ "ok@h: still here", "ok@h: d@h" }, a.sent);
		assert.equal("d@h", ev.jid);
		assert.equal(2, set.errors);
		-- The budget hook is gone afterwards.
		assert.is_nil(debug.gethook());
	end);

	it("expands globs in the file name", function ()
		local files = scripts.expand({ "/etc/iot/*.lua", "/etc/iot/extra.lua", "/x/a?.lua" }, function (dir)
			if dir == "/etc/iot" then return { "b.lua", "a.lua", ".hidden.lua", "notes.txt", "extra.lua" }; end
			if dir == "/x" then return { "ab.lua", "abc.lua" }; end
		end);
		assert.same({ "/etc/iot/a.lua", "/etc/iot/b.lua", "/etc/iot/extra.lua", "/x/ab.lua" }, files);
	end);
end);
