-- brisk.jid against stock util.jid, side by side in one Lua state: every
-- function on the same arguments must return the same values (and the same
-- number of them) or raise the same error. Inputs: hand-picked edge cases,
-- every two-byte ASCII part, and random JIDs built from pieces that matter
-- (separators in odd places, empty and over-long parts, trailing dots,
-- escapes, invalid UTF-8, non-ASCII and IDNA hosts, combining marks, RTL
-- text, characters stringprep maps to nothing or rejects), each tried with
-- strict = nil, false and true, plus arguments that are not strings.
--
-- BRISK_FUZZ_ITER (default 3000) random JIDs; BRISK_FUZZ_SEED to change
-- the seed.
local glue = require "brisk.patch.jid";
local stock = glue.stock();
local brisk = glue.new(require "brisk.jid");

local ITER = tonumber(os.getenv("BRISK_FUZZ_ITER")) or 3000;
local SEED = tonumber(os.getenv("BRISK_FUZZ_SEED")) or 15;

local function pack(...) return { n = select("#", ...), ... }; end

local function show(v)
	if type(v) == "string" then return ("%q"):format(#v > 60 and v:sub(1, 60) .. "..." or v); end
	return tostring(v);
end

local function same_value(a, b)
	if a == b then return true; end
	-- NaN, and tables/functions passed through (compared by identity above)
	return a ~= a and b ~= b;
end

-- Call stock and Brisk's `name` with the same arguments; returns nil when
-- they agree, else a description.
local function differ(name, ...)
	local a = pack(pcall(stock[name], ...));
	local b = pack(pcall(brisk[name], ...));
	local ok = a.n == b.n;
	for i = 1, math.max(a.n, b.n) do
		if not same_value(a[i], b[i]) then ok = false; end
		if type(a[i]) == "string" and type(b[i]) == "string" and a[i] ~= b[i] then ok = false; end
	end
	if ok and a[1] ~= false then
		-- same types too (a number is not its string)
		for i = 2, a.n do
			if type(a[i]) ~= type(b[i]) or math.type(a[i]) ~= math.type(b[i]) then ok = false; end
		end
	end
	if ok then return nil; end
	local args = pack(...);
	local shown = {};
	for i = 1, args.n do shown[i] = show(args[i]); end
	local function results(r)
		local s = {};
		for i = 1, r.n do s[i] = show(r[i]); end
		return "(" .. table.concat(s, ", ") .. ")";
	end
	return ("%s(%s): stock %s, brisk %s"):format(name, table.concat(shown, ", "), results(a), results(b));
end

local ONE_ARG = { "split", "bare", "node", "host", "resource", "escape", "unescape" };
local STRICTS = { pack(), pack(nil), pack(false), pack(true) };

-- Every function on one JID; appends differences to problems.
local function check_jid(j, problems)
	for _, name in ipairs(ONE_ARG) do
		local d = differ(name, j);
		if d then problems[#problems + 1] = d; end
	end
	for _, s in ipairs(STRICTS) do
		for _, name in ipairs({ "prepped_split", "prep" }) do
			local d = differ(name, j, table.unpack(s, 1, s.n));
			if d then problems[#problems + 1] = d; end
		end
	end
end

local function assert_none(problems)
	if #problems > 0 then
		local shown = {};
		for i = 1, math.min(#problems, 20) do shown[i] = problems[i]; end
		error(("%d difference(s), first ones:\n%s"):format(#problems, table.concat(shown, "\n")), 2);
	end
end

local EDGE = {
	"", "@", "/", "@/", "/@", "a", "a@", "@a", "a/", "/a", "a@b", "a/b", "a@b/c", "a@b@c", "a/b/c",
	"a@b/c@d/e", "a/b@c", "a@/b", "@/b", "@b/", "a@@b", "a//b", "a@b//", "a@b/c/", "a@b/@", "@@", "//",
	"node@server", "node@server/resource", "server", "server/resource", "server/resource@foo",
	"server/resource@foo/bar", "node@/server", "@server", "@server/resource", "@/resource", "@server/",
	"server/", "/resource", "node@server.", "node@server..", "server.", ".", "..", "...", "a@.", "a@./r",
	".@.", "a@..", "node@invalid-\128-server", "node@invalid-\194\128-server", "<invalid node>@server",
	"node@server/invalid-\0-resource", "\0", "a\0b@c\0d/e\0f", "NODE@SERVER/RESOURCE", "Node@Example.COM/Res",
	"juliet@capulet.lit/balcony", "romeo@montague.lit", "user@host/with space", "with space@host",
	"user@ho st", "user@xn--bcher-kva.example", "user@bücher.example", "üser@bücher.example/réso",
	"ÜSER@BÜCHER.EXAMPLE/RÉSO", "user@例え.テスト/端末", "δοκιμή@παράδειγμα.δοκιμή",
	"ΣΊΣΥΦΟΣ@Example.org", "straße@example.org", "İstanbul@example.org", "ﬀ@example.org",
	"a\204\184@example.org", "<\204\184@example.org", "user@a\226\128\139b.example", "so\194\173ft@host",
	"\216\167\216\168@host", "a\216\167@host", "user@host/\216\167a", "user@\239\188\161.example",
	"x@" .. ("h"):rep(1022), "x@" .. ("h"):rep(1023), "x@" .. ("h"):rep(1024), "x@" .. ("h"):rep(1025),
	("n"):rep(1023) .. "@h", ("n"):rep(1024) .. "@h", "n@h/" .. ("r"):rep(1023), "n@h/" .. ("r"):rep(1024),
	"x@" .. ("H"):rep(1023), "x@" .. ("é"):rep(600), "\\20\\22\\26\\27\\2f\\3a\\3c\\3e\\40\\5c",
	"\\2F\\3A\\5C", "space cadet", "call me \"ishmael\"", "at&t guy", "d'artagnan", "/.fanboy", "::foo::",
	"<foo>", "user@host", "c:\\net", "c:\\\\net", "c:\\cool stuff", "c:\\5commas", "\\3and\\2is\\5cool",
	"\\5c", "\\2plus\\2is\\4", "foo\\bar", "foo\\41r", "call\\20me", "\\", "\\2", "\\2g", "\\\\20",
	"\255\254@\192\128/\237\160\128", "\244\144\128\128@host", "a\128@b", "a@b\128", "a@b/\128",
	"\127@host", "\31@host", "a@\127", "a@host/\127", "A@B/C",
};

describe("brisk.jid vs stock util.jid", function ()
	it("agrees on edge cases", function ()
		local problems = {};
		for _, j in ipairs(EDGE) do check_jid(j, problems); end
		assert_none(problems);
	end);

	it("agrees on arguments that are not strings", function ()
		local problems = {};
		local values = { pack(), pack(nil), pack(false), pack(true), pack(0), pack(42), pack(-1.5), pack(0 / 0),
			pack(math.huge), pack(math.mininteger), pack({}), pack(print), pack(setmetatable({}, { __tostring = function () return "a@b" end })) };
		for _, v in ipairs(values) do
			for _, name in ipairs(ONE_ARG) do
				local d = differ(name, table.unpack(v, 1, v.n));
				if d then problems[#problems + 1] = d; end
			end
			for _, name in ipairs({ "prepped_split", "prep" }) do
				local d = differ(name, table.unpack(v, 1, v.n));
				if d then problems[#problems + 1] = d; end
				-- and as the strict flag of a valid JID (stock: util.encodings' error)
				d = differ(name, "user@host/res", table.unpack(v, 1, v.n));
				if d then problems[#problems + 1] = d; end
				d = differ(name, "üser@host", table.unpack(v, 1, v.n));
				if d then problems[#problems + 1] = d; end
				d = differ(name, "@invalid", table.unpack(v, 1, v.n));
				if d then problems[#problems + 1] = d; end
			end
			for _, other in ipairs({ pack("a@b/c"), pack(nil), pack("b") }) do
				local d = differ("compare", table.unpack(v, 1, v.n), other[1]);
				if d then problems[#problems + 1] = d; end
				d = differ("compare", other[1], v[1]);
				if d then problems[#problems + 1] = d; end
			end
		end
		assert_none(problems);
	end);

	it("agrees on join", function ()
		local problems = {};
		local parts = { pack(nil), pack("a"), pack(""), pack("ü"), pack(false), pack(1), pack(2.5), pack({}),
			pack(setmetatable({}, { __concat = function (x, y) return "C" end })) };
		for _, n in ipairs(parts) do
			for _, h in ipairs(parts) do
				for _, r in ipairs(parts) do
					local d = differ("join", n[1], h[1], r[1]);
					if d then problems[#problems + 1] = d; end
				end
			end
		end
		for _, args in ipairs({ pack(), pack("a"), pack("a", "b") }) do
			local d = differ("join", table.unpack(args, 1, args.n));
			if d then problems[#problems + 1] = d; end
		end
		assert_none(problems);
	end);

	it("agrees on every two-byte ASCII part, in every position", function ()
		local problems = {};
		for x = 0, 127 do
			for y = 0, 127 do
				local p = string.char(x, y);
				local j = p .. "@" .. p .. "/" .. p;
				for _, s in ipairs(STRICTS) do
					local d = differ("prep", j, table.unpack(s, 1, s.n));
					if d then problems[#problems + 1] = d; end
				end
				local d = differ("split", j) or differ("prep", p) or differ("prep", p .. "/" .. p)
					or differ("escape", p) or differ("unescape", "\\" .. p);
				if d then problems[#problems + 1] = d; end
			end
		end
		assert_none(problems);
	end);

	it("never answers for a profile with whole-name rules", function ()
		-- brisk.jid short-cuts pure-ASCII stringprep only for profiles whose
		-- answers it has checked to be per character; made-up profiles with
		-- IDNA-like whole-name rules must be asked every time.
		local sp = require "brisk.prosody".lib("util.encodings").stringprep;
		local rules = {
			function (s) return not s:match("^%-") and not s:match("%-$"); end, -- hyphens
			function (s) return #s <= 63; end,                                     -- label length
			function (s) return not s:match("^xn%-%-") end,                        -- punycode prefix
			function (s) return not s:match("%.%."); end,                          -- empty labels
		};
		for i, rule in ipairs(rules) do
			local function nameprep(s, strict)
				if not rule(s) then return nil; end
				return sp.nameprep(s, strict);
			end
			local c = require "brisk.jid".new({ nodeprep = sp.nodeprep, nameprep = nameprep,
				resourceprep = sp.resourceprep, stock = stock });
			for _, host in ipairs({ "-host", "host-", ("h"):rep(70), "xn--host", "a..b", "host" }) do
				local want = nameprep(host) and ("user@" .. host) or nil;
				assert.equal(want, c.prep("user@" .. host), ("rule %d, host %s"):format(i, host));
			end
		end
	end);

	it("agrees on random JIDs", function ()
		math.randomseed(SEED);
		local pieces = {
			"a", "b", "z", "A", "Z", "0", "9", "-", "_", ".", "..", "@", "/", "\\", "\\20", "\\5c", "\\2f",
			"\\3A", " ", "\"", "&", "'", ":", "<", ">", "\0", "\9", "\127", "x", "user", "host", "example",
			"com", "Res", "xn--", "xn--bcher-kva", "é", "É", "ß", "İ", "ı", "Σ", "ς", "ﬀ", "\204\184",
			"\226\128\139", "\194\173", "\239\187\191", "\216\167", "\215\144", "\239\188\161", "例", "😀",
			"\128", "\255", "\192\128", "\224\128", "\237\160\128", "\244\144\128\128", "\194",
		};
		local function part(max)
			local n = math.random(0, max);
			local t = {};
			for i = 1, n do t[i] = pieces[math.random(#pieces)]; end
			return table.concat(t);
		end
		local problems = {};
		for _ = 1, ITER do
			local shape = math.random(10);
			local j;
			if shape <= 6 then
				local node, host, res = part(4), part(5), part(4);
				j = (math.random(3) > 1 and (node .. "@") or "") .. host .. (math.random(2) > 1 and ("/" .. res) or "");
			elseif shape <= 8 then
				j = part(12);
			elseif shape == 9 then
				-- long parts near util.encodings' 1024-byte limit
				local len = 1020 + math.random(0, 6);
				local c = ({ "a", "A", "é", "-" })[math.random(4)];
				local long = c:rep(len // #c);
				j = ({ long .. "@h", "n@" .. long, "n@h/" .. long })[math.random(3)];
			else
				j = part(3) .. "@" .. part(3) .. "." .. ("."):rep(math.random(0, 2)) .. (math.random(2) > 1 and "/" .. part(2) or "");
			end
			check_jid(j, problems);
			local acl = ({ j, part(4), (stock.bare(j) or part(2)), (stock.host(j) or "host"), j .. "x" })[math.random(5)];
			local d = differ("compare", j, acl) or differ("compare", acl, j);
			if d then problems[#problems + 1] = d; end
		end
		assert_none(problems);
	end);
end);
