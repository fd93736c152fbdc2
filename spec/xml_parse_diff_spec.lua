-- Differential specs: brisk.xml.new against stock util.xmppstream.new, in the
-- same Lua state, on the same bytes. Every callback, its arguments (stanza
-- trees deep-compared in next() order, metatables included), feed() results
-- and raised errors must be identical.
--
-- BRISK_FUZZ_ITER=n sets the number of random and of mutated streams
-- (default 1500 each); BRISK_FUZZ_SEED picks the first seed.
local harness = require "spec.fixtures.xml.harness"
local stock = require "util.xmppstream"
local brisk = require "brisk.xml"

local ITER = tonumber(os.getenv("BRISK_FUZZ_ITER")) or 1500
local SEED0 = tonumber(os.getenv("BRISK_FUZZ_SEED")) or 20261125

local function check(chunks, opts, what)
	local a = harness.run(stock.new, chunks, opts)
	local b = harness.run(brisk.new, chunks, opts)
	local d = harness.diff(a, b)
	if d then
		local o = {}
		for k, v in pairs(opts or {}) do o[#o + 1] = k .. "=" .. harness.dump(v) end
		error(("%s\n%s\noptions: %s\ninput: %q"):format(what, d, table.concat(o, " "),
			table.concat(chunks, "\1|\1")), 2)
	end
	return a
end

describe("brisk.xml parser vs stock util.xmppstream", function()
	local corpus = harness.corpus()

	it("has a corpus", function()
		assert.truthy(#corpus >= 10)
	end)

	it("matches on every corpus stream fed whole", function()
		for _, item in ipairs(corpus) do
			local trace = harness.lines(check({ item.data }, { profile = item.profile }, item.name))
			-- the corpus is valid XMPP: stanzas are delivered and nothing fails
			local stanzas = 0
			for _, ev in ipairs(trace) do
				if ev:match("^stanza ") then stanzas = stanzas + 1 end
				assert.is_nil(ev:match("^raise"), item.name)
			end
			assert.truthy(stanzas > 0 or item.name:match("^stream_errors"), item.name)
		end
	end)

	it("matches with every option variant on the corpus", function()
		local variants = {
			{ limit = 100 }, { limit = 400 }, { set_limit = { 1000, 3 } }, { set_limit = { 1000, 1 } },
			{ reset_after = "auth" }, { reset_after = "message" }, { raise_at = 2 }, { keep_notopen = true },
			{ no_open = true }, { no_close = true }, { finish = true }, { profile = "nodefault" },
			{ profile = "custom" }, { profile = "s2s" }, { profile = "bosh" },
		}
		for _, item in ipairs(corpus) do
			for _, v in ipairs(variants) do
				local opts = { profile = item.profile }
				for k, val in pairs(v) do opts[k] = val end
				check({ item.data }, opts, item.name)
			end
		end
	end)

	it("matches at every split position of every corpus stream", function()
		for _, item in ipairs(corpus) do
			local data = item.data
			for i = 0, #data do
				check({ data:sub(1, i), data:sub(i + 1) }, { profile = item.profile, reset_after = "auth" },
					item.name .. " split at " .. i)
			end
		end
	end)

	it("matches when fed one byte at a time", function()
		for _, item in ipairs(corpus) do
			local chunks = {}
			for i = 1, #item.data do chunks[i] = item.data:sub(i, i) end
			check(chunks, { profile = item.profile, limit = 300 }, item.name .. " bytewise")
		end
	end)

	it("matches on " .. ITER .. " random streams", function()
		for n = 1, ITER do
			local seed = SEED0 + n
			local r = harness.rng(seed)
			local profiles = { "c2s", "s2s", "component", "bosh", "nodefault", "custom" }
			local profile = profiles[r(#profiles)]
			local s = harness.gen_stream(r, profile)
			local opts = harness.options(r, profile)
			check(harness.chunks(r, s), opts, "random stream, seed " .. seed)
		end
	end)

	it("matches on " .. ITER .. " mutated streams", function()
		for n = 1, ITER do
			local seed = SEED0 + 1000000 + n
			local r = harness.rng(seed)
			local base
			if r(2) == 1 then
				base = corpus[r(#corpus)]
			else
				base = { data = harness.gen_stream(r, "c2s"), profile = "c2s" }
			end
			local s = harness.mutate(r, base.data)
			local opts = harness.options(r, base.profile)
			check(harness.chunks(r, s), opts, "mutated stream, seed " .. seed)
		end
	end)
end)
