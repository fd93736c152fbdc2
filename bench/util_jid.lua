-- bench/util_jid.lua — stock util.jid vs brisk.jid, the calls Prosody makes
-- per stanza.
--
-- Per stanza, core.stanza_router takes the destination apart (host(to)
-- when `to` is an online session's JID, prepped_split(to) otherwise),
-- core_post_stanza splits it again, and mod_message and mod_carbons take
-- bare JIDs and resources of `to` and `from`. Measured on typical client
-- JIDs (ASCII: lowercase nodes and hosts, resources like client names with
-- capitals, digits and dots), each function alone and as the two per-stanza
-- sequences; and, separately, on JIDs with non-ASCII parts, where both
-- sides spend their time in util.encodings' ICU stringprep. Outputs are
-- checked identical before timing.
--
-- Usage: eval "$(make -s env)"; lua5.4 bench/util_jid.lua [--quick]
-- (make env PROSODY=13 for Prosody 13). With env BENCH_TSV=file, rows
-- "util_jid\tlabel\tstock\tbrisk\tunit" are appended.
local timing = require "bench.lib.timing";
local version = timing.prosody();
timing.setup(arg and arg[1] == "--quick");

local glue = require "brisk.patch.jid";
local stock = glue.stock();
local brisk = glue.new(require "brisk.jid");

math.randomseed(15);
local users = { "juliet", "romeo", "alice", "bob", "nurse", "tybalt", "mercutio", "benvolio", "user1234", "ops-team" };
local hosts = { "capulet.lit", "montague.lit", "example.com", "chat.example.org", "xmpp.jabber.network" };
local resources = { "balcony", "Conversations.kR3x", "gajim.Q5ZT8LQA", "phone", "Dino.4f9a1c2e", "laptop-2",
	"Monal-iOS.1a2b", "profanity", "bot", "5d1d6e2c-3b6a-4c1f-9b9b-0c6f8a1d2e3f" };
local nonascii_users = { "jürgen", "zoë", "émile", "søren", "мария", "用户" };
local nonascii_hosts = { "bücher.example", "例え.テスト", "ελληνικά.example", "straße.example" };

local N = 512;
local full, bare, other = {}, {}, {};
for i = 1, N do
	local u, h, r = users[math.random(#users)], hosts[math.random(#hosts)], resources[math.random(#resources)];
	full[i] = u .. "@" .. h .. "/" .. r;
	bare[i] = u .. "@" .. h;
	local ou, oh = users[math.random(#users)], hosts[math.random(#hosts)];
	other[i] = ou .. "@" .. oh .. "/" .. resources[math.random(#resources)];
end
local nonascii = {};
for i = 1, N do
	local u, h = nonascii_users[math.random(#nonascii_users)], nonascii_hosts[math.random(#nonascii_hosts)];
	nonascii[i] = u .. "@" .. h .. "/" .. resources[math.random(#resources)];
end

-- Same results on every input before anything is timed.
for _, set in ipairs({ full, bare, nonascii }) do
	for i = 1, N do
		for _, f in ipairs({ "split", "bare", "host", "resource", "prepped_split", "prep" }) do
			local a, b = table.pack(stock[f](set[i])), table.pack(brisk[f](set[i]));
			assert(a.n == b.n, f);
			for k = 1, a.n do assert(a[k] == b[k], f .. " differs on " .. set[i]); end
		end
	end
end

-- One pass: fn over the whole set; returns a pass function for each side.
local function over(set, body)
	return function (j) return function () body(j, set); end; end;
end

local rows = {};
local function measure(label, short, make)
	local s, b = timing.pair(make(stock), make(brisk), N);
	rows[#rows + 1] = { label = label, short = short, stock = s, brisk = b, unit = "calls/s" };
end

local function single(name, set)
	return function (j)
		local f = j[name];
		return function () for i = 1, N do f(set[i]); end end;
	end;
end

measure("split(full JID)", "split", single("split", full));
measure("bare(full JID)", "bare", single("bare", full));
measure("bare(bare JID)", "bare of bare", single("bare", bare));
measure("host(full JID)", "host", single("host", full));
measure("prepped_split(full JID)", "prepped_split", single("prepped_split", full));
measure("prep(full JID)", "prep", single("prep", full));

-- A message to an online client's full JID (the ping-pong scenario):
-- router host(to), post split(to), mod_message bare(to), carbons bare(from),
-- bare(to), resource(to).
local function online(j)
	local host, split, bare_, resource = j.host, j.split, j.bare, j.resource;
	return function ()
		for i = 1, N do
			local to, from = full[i], other[i];
			host(to); split(to); bare_(to); bare_(from); bare_(to); resource(to);
		end
	end;
end
-- A stanza whose `to` is not an online session's JID as written: the
-- router's prepped_split(to), then split(to), bare(to), bare(from).
local function prepped(j)
	local pp, split, bare_ = j.prepped_split, j.split, j.bare;
	return function ()
		for i = 1, N do
			local to, from = full[i], other[i];
			pp(to); split(to); bare_(to); bare_(from);
		end
	end;
end
local s, b = timing.pair(online(stock), online(brisk), N);
rows[#rows + 1] = { label = "per stanza, to an online full JID (6 calls)", short = "per stanza, online", stock = s, brisk = b, unit = "stanzas/s" };
local per_stanza = { s, b };
s, b = timing.pair(prepped(stock), prepped(brisk), N);
rows[#rows + 1] = { label = "per stanza, to a JID to prep (4 calls)", short = "per stanza, prep", stock = s, brisk = b, unit = "stanzas/s" };
local per_prep = { s, b };
measure("prepped_split(non-ASCII JID), ICU on both sides", "prepped_split, non-ASCII", single("prepped_split", nonascii));

print("### util.jid (brisk.jid)");
print();
print(("Prosody %s's util.jid vs brisk.jid, same JIDs (%d typical client JIDs), same run, runs alternating; median of %d runs of %.2f s%s.")
	:format(version, N, timing.RUNS, timing.RUN_SECONDS, timing.quick and " (--quick)" or ""));
print();
timing.report("util_jid", rows);
local worst = math.min(per_stanza[2] / per_stanza[1], per_prep[2] / per_prep[1]);
print(("Per-stanza sequences: %.1fx and %.1fx stock; %s the 3x bar for replacing util.jid."):format(
	per_stanza[2] / per_stanza[1], per_prep[2] / per_prep[1], worst >= 3 and "above" or "BELOW"));
print();
