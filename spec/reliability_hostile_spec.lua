-- spec/reliability_hostile_spec.lua — hostile clients against a live Prosody
-- with every Brisk module that exists, compared with stock Prosody.
--
-- Every attack runs on a stock server and on a Brisk server started side by
-- side. For each: the attacker must see the same thing on both (stream error
-- condition, text and extra children, disconnect or not, and what the victim
-- received), the server stays up, and a probe pair of other clients keeps
-- exchanging messages during the attack with a bounded worst round trip.
-- At the end the Brisk server's log may hold no error the stock one lacks.
local prosody = require "spec.helpers.prosody";
local H = require "spec.helpers.hostile";
local st = require "util.stanza";

-- Generous: the machine is shared and the ASan pass is several times slower.
local LATENCY_BOUND = tonumber(os.getenv("BRISK_LATENCY_BOUND")) or 2.0;
local ACCOUNTS = { alice = "pw", bob = "pw", carol = "pw", dave = "pw" };
local VICTIM = "bob@localhost/target";
local verbose = os.getenv("BRISK_VERBOSE") == "1";

local function server(opts)
	local s = { srv = prosody.start(opts) };
	s.probe = H.probe(s.srv, "carol", "dave", "pw");
	s.bob = s.srv:connect("bob", "pw", "target");
	s.bob:send(st.presence());
	-- alice lets bob see her presence (for the presence flood).
	local alice = s.srv:connect("alice", "pw", "setup");
	alice:send(st.presence());
	s.bob:send(st.presence({ to = "alice@localhost", type = "subscribe" }));
	assert(alice:receive(5, function (p) return p.name == "presence" and p.attr.type == "subscribe"; end),
		"no subscription request");
	alice:send(st.presence({ to = "bob@localhost", type = "subscribed" }));
	-- Approval shows as alice's current presence arriving at bob.
	assert(s.bob:receive(5, function (p)
		return p.name == "presence" and p.attr.from == "alice@localhost/setup" and not p.attr.type;
	end), "no subscription approval");
	alice:close();
	-- Forget the setup traffic; from now on bob is read raw (see H.victim).
	while s.bob:receive(0.2) do end
	s.bob = H.victim(s.bob);
	return s;
end

local mods = H.brisk_modules();
local stock, brisk;

-- What the victim got from one attack: the stanzas with id `id` (or all
-- messages from the attacker when id is nil), summarized.
local function victim_got(s, id, wait)
	local got = {};
	while true do
		local m = s.bob:take(wait or 0.3, function (x)
			return x.name == "message" and (id == nil or x.attr.id == id);
		end);
		if not m then break; end
		local body = m:get_child_text("body");
		local depth, node = 0, m;
		while node.tags[1] do depth = depth + 1; node = node.tags[1]; end
		local nattr = 0;
		for _ in pairs(m.attr) do nattr = nattr + 1; end
		got[#got + 1] = string.format("message body=%s bytes=%d depth=%d attrs=%d",
			body and ("%q"):format(body:sub(1, 40)) or "-", body and #body or 0, depth, nattr);
		wait = 0.3;
	end
	return #got > 0 and table.concat(got, "; ") or "nothing";
end

local function show(name, o)
	if not verbose then return; end
	local parts = {};
	for _, k in ipairs{ "closed", "condition", "text", "extra", "after", "bytes_sent", "seconds", "probe_worst", "probe_count" } do
		if o[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(o[k]); end
	end
	print(name .. ": " .. table.concat(parts, " "));
end

-- Run `attack` (built fresh for each server by make_attack) on both servers.
local function duel(name, make_attack)
	local results = {};
	for _, which in ipairs{ { "stock", stock }, { "brisk", brisk } } do
		local label, s = which[1], which[2];
		local o = H.run(s.srv, s.probe, make_attack(s));
		show(label .. " " .. name, o);
		assert.is_true(o.alive, label .. " server died during: " .. name);
		assert.equal(0, o.probe_lost, label .. ": probe messages lost during: " .. name);
		assert.is_true(o.probe_worst < LATENCY_BOUND, string.format(
			"%s: probe round trip %.3f s during %s", label, o.probe_worst, name));
		results[label] = o;
	end
	assert.same(H.comparable(results.stock), H.comparable(results.brisk));
	return results.stock, results.brisk;
end

local function auth_attack(chunks, extra)
	return function (s)
		local a = { connect = "auth", user = "alice", password = "pw", chunks = chunks };
		for k, v in pairs(extra or {}) do a[k] = v; end
		if a.victim_id ~= false then
			local id = a.victim_id;
			a.after = function () return victim_got(s, id); end;
		end
		return a;
	end;
end

local function bytes_attack(data, extra)
	return auth_attack(function (yield) yield(data); end, extra);
end

local function msg_open(id, attrs)
	return "<message to='" .. VICTIM .. "' type='chat' id='" .. id .. "'" .. (attrs or "") .. ">";
end

describe("hostile clients (Brisk modules: " .. H.describe_modules(mods) .. ")", function ()
	setup(function ()
		stock = server{ accounts = ACCOUNTS };
		brisk = server(H.brisk_options({ accounts = ACCOUNTS }, mods));
		stock.rss0, brisk.rss0 = stock.srv:rss_kb(), brisk.srv:rss_kb();
	end);
	teardown(function ()
		for _, s in ipairs{ stock, brisk } do
			if s then s.srv:stop(); end
		end
	end);

	describe("partial data", function ()
		it("a message trickled one byte at a time is delivered whole", function ()
			local _, b = duel("trickled message", auth_attack(function (yield)
				local data = msg_open("trickle") .. "<body>h\195\169llo &amp; &#x263A; bye</body></message>";
				for i = 1, #data do yield(data:sub(i, i)); end
			end, { victim_id = "trickle" }));
			assert.is_false(b.closed);
			assert.matches("message body=\"h\195\169llo & \226\152\186 bye\"", b.after, 1, true);
		end);

		it("a stream header and SASL trickled one byte at a time get features and success", function ()
			duel("trickled stream", function ()
				return {
					connect = "raw", settle = 0.3;
					chunks = function (yield)
						local data = H.stream_header("localhost");
						for i = 1, #data do yield(data:sub(i, i)); end
						-- Debian's libexpat re-parses a token that arrives in
						-- pieces only once its buffered bytes have doubled
						-- (stock and Brisk alike): whitespace, allowed after the
						-- header, completes it however TCP cut the bytes.
						yield(string.rep(" ", 512));
					end;
					after = function (conn)
						conn:wait_closed(0.3);
						local got = conn:received();
						return got:match("<stream:features") and "features" or ("no features: " .. got);
					end;
				};
			end);
		end);
	end);

	describe("size", function ()
		local function big_body(total)
			return function (yield)
				if not yield(msg_open("big") .. "<body>") then return; end
				local chunk = string.rep("a", 65536);
				for _ = 1, total // 65536 do
					if not yield(chunk) then return; end
				end
				yield("</body></message>");
			end;
		end

		it("a 10 MB stanza gets policy-violation (stanza-too-big) and a disconnect", function ()
			local _, b = duel("10 MB stanza", auth_attack(big_body(10 * 1024 * 1024), { victim_id = "big" }));
			assert.is_true(b.closed);
			assert.equal("policy-violation", b.condition);
			assert.equal("nothing", b.after);
			assert.is_true(b.bytes_sent < 10 * 1024 * 1024);
		end);

		it("a 10 MB stanza before authentication is cut off the same way", function ()
			local _, b = duel("10 MB unauthenticated", function ()
				return { connect = "stream", chunks = function (yield)
					yield("<iq type='get' id='x'><query xmlns='jabber:iq:version'>");
					local chunk = string.rep("<a/>", 4096);
					for _ = 1, 10 * 1024 * 1024 // #chunk do
						if not yield(chunk) then return; end
					end
				end };
			end);
			assert.is_true(b.closed);
			assert.equal("policy-violation", b.condition);
		end);

		local function nested(id, n)
			return auth_attack(function (yield)
				if not yield(msg_open(id)) then return; end
				local step = math.min(n, 1000);
				for _ = 1, n // step do
					if not yield(string.rep("<a>", step)) then return; end
				end
				for _ = 1, n // step do
					if not yield(string.rep("</a>", step)) then return; end
				end
				yield("</message>");
			end, { victim_id = id });
		end

		it("100k nested elements", function ()
			local _, b = duel("100k nested", nested("deep", 100000));
			assert.is_true(b.closed);
		end);

		it("20k nested elements inside the size limit", function ()
			duel("20k nested", nested("deep20k", 20000));
		end);

		it("200 nested elements are delivered", function ()
			local _, b = duel("200 nested", nested("deep200", 200));
			assert.matches("depth=200", b.after, 1, true);
		end);

		it("a start tag with millions of attributes", function ()
			local _, b = duel("millions of attributes", auth_attack(function (yield)
				if not yield("<message to='" .. VICTIM .. "' id='attrs'") then return; end
				local n = 0;
				for _ = 1, 400 do -- 400 × 5000 = 2 million attributes offered
					local parts = {};
					for i = 1, 5000 do parts[i] = " a" .. (n + i) .. "=''"; end
					n = n + 5000;
					if not yield(table.concat(parts)) then return; end
				end
				yield("/>");
			end, { victim_id = "attrs" }));
			assert.is_true(b.closed);
		end);

		local function attributes(id, n)
			return auth_attack(function (yield)
				local parts = { "<message to='" .. VICTIM .. "' id='" .. id .. "'" };
				for i = 1, n do parts[#parts + 1] = " a" .. i .. "='" .. i .. "'"; end
				parts[#parts + 1] = "><body>many</body></message>";
				yield(table.concat(parts));
			end, { victim_id = id });
		end

		it("20k attributes (over the size limit)", function ()
			duel("20k attributes", attributes("attrs20k", 20000));
		end);

		it("5000 attributes inside the size limit", function ()
			duel("5000 attributes", attributes("attrs5k", 5000));
		end);

		it("1000 attributes are delivered", function ()
			local _, b = duel("1000 attributes", attributes("attrs1k", 1000));
			assert.matches("attrs=1004", b.after, 1, true);
		end);

		it("the same attribute twice", function ()
			local _, b = duel("duplicate attribute", bytes_attack(
				"<message to='" .. VICTIM .. "' id='dup' a='1' a='2'><body>x</body></message>", { victim_id = "dup" }));
			assert.is_true(b.closed);
			assert.equal("not-well-formed", b.condition);
		end);
	end);

	describe("bad bytes", function ()
		local cases = {
			{ "invalid UTF-8 in text", "<body>\195\40</body>" },
			{ "a lone continuation byte", "<body>a\128b</body>" },
			{ "an overlong encoding", "<body>\192\175</body>" },
			{ "a UTF-16 surrogate in UTF-8", "<body>\237\160\128</body>" },
			{ "a 5-byte sequence", "<body>\248\136\128\128\128</body>" },
			{ "a code point above U+10FFFF", "<body>\244\144\128\128</body>" },
			{ "invalid UTF-8 in an attribute", "<body xml:lang='\255'>x</body>" },
			{ "invalid UTF-8 in an element name", "<b\255dy>x</b\255dy>" },
			{ "a NUL byte in text", "<body>a\0b</body>" },
			{ "a NUL byte in an attribute", "<body xml:lang='e\0n'>x</body>" },
			{ "a control character", "<body>a\1b</body>" },
			{ "a character reference to NUL", "<body>a&#0;b</body>" },
			{ "a character reference to a surrogate", "<body>a&#xD800;b</body>" },
			{ "an undefined entity", "<body>&lol9;</body>" },
		};
		for i, case in ipairs(cases) do
			it(case[1], function ()
				local id = "bad" .. i;
				local _, b = duel(case[1], bytes_attack(msg_open(id) .. case[2] .. "</message>", { victim_id = id }));
				assert.is_true(b.closed);
				assert.equal("not-well-formed", b.condition);
				assert.equal("nothing", b.after);
			end);
		end

		it("a NUL byte in the stream header", function ()
			local _, b = duel("NUL in header", function ()
				return { connect = "raw", chunks = function (yield)
					yield("<?xml version='1.0'?><stream:stream xmlns='jabber:client' to='local\0host' "
						.. "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
				end };
			end);
			assert.is_true(b.closed);
		end);
	end);

	describe("DTDs and restricted XML", function ()
		local lol = { "<!ENTITY lol0 'lol'>" };
		for i = 1, 9 do
			lol[#lol + 1] = "<!ENTITY lol" .. i .. " '" .. string.rep("&lol" .. (i - 1) .. ";", 10) .. "'>";
		end
		local bomb = "<!DOCTYPE stream:stream [" .. table.concat(lol) .. "]>";

		it("billion laughs before the stream header", function ()
			local _, b = duel("billion laughs", function ()
				return { connect = "raw", chunks = function (yield)
					yield("<?xml version='1.0'?>" .. bomb .. H.stream_header("localhost"):gsub("^<%?xml[^>]*>", "")
						.. "<message to='" .. VICTIM .. "'><body>&lol9;</body></message>");
				end };
			end);
			assert.is_true(b.closed);
			assert.equal("not-well-formed", b.condition);
		end);

		it("an external entity (XXE) before the stream header", function ()
			local _, b = duel("XXE", function ()
				return { connect = "raw", chunks = function (yield)
					yield("<!DOCTYPE x [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>" .. H.stream_header("localhost")
						.. "<message to='" .. VICTIM .. "'><body>&xxe;</body></message>");
				end };
			end);
			assert.is_true(b.closed);
			assert.equal("not-well-formed", b.condition);
		end);

		local mid = {
			{ "a DOCTYPE mid-stream", bomb },
			{ "a comment mid-stream", "<!-- hello -->" },
			{ "a comment inside a stanza", msg_open("c1") .. "<!-- hello --><body>x</body></message>" },
			{ "a processing instruction", msg_open("c2") .. "<?php echo 1; ?><body>x</body></message>" },
			{ "a CDATA section", msg_open("c3") .. "<body><![CDATA[<a>&amp;]]></body></message>" },
			{ "an XML declaration mid-stream", "<?xml version='1.0'?>" .. msg_open("c4") .. "<body>x</body></message>" },
			{ "an encoding declaration for UTF-16", "<?xml version='1.0' encoding='UTF-16'?>" },
			{ "a text node at the top level", "hello" },
			{ "an element outside jabber:client", "<foo xmlns='urn:x'/>" .. msg_open("c5") .. "<body>after</body></message>" },
			{ "a top-level element with an unbound prefix", "<x:message/>" },
		};
		for _, case in ipairs(mid) do
			it(case[1], function ()
				duel(case[1], bytes_attack(case[2], { settle = 2 }));
			end);
		end

		it("a DOCTYPE with a stanza-sized internal subset", function ()
			local subset = {};
			for i = 1, 20000 do subset[i] = "<!ENTITY e" .. i .. " 'x'>"; end
			duel("big DOCTYPE", function ()
				return { connect = "raw", chunks = function (yield)
					yield("<!DOCTYPE stream:stream [" .. table.concat(subset) .. "]>" .. H.stream_header("localhost"));
				end };
			end);
		end);
	end);

	describe("stream restarts in odd places", function ()
		local header = H.stream_header("localhost");
		local cases = {
			{ "a second stream header after binding", header },
			{ "a stream header inside a stanza", msg_open("r1") .. header .. "<body>x</body></message>" },
			{ "a stream close then a new header", "</stream:stream>" .. header },
			{ "a stream close inside a stanza", msg_open("r2") .. "<body>x</stream:stream>" },
			{ "a stream header with another namespace", "<stream:stream xmlns:stream='urn:bogus' xmlns='jabber:client'>" },
		};
		for _, case in ipairs(cases) do
			it(case[1], function ()
				duel(case[1], bytes_attack(case[2], { settle = 2 }));
			end);
		end

		it("two stream headers before features", function ()
			duel("double header", function ()
				return { connect = "raw", settle = 2, chunks = function (yield) yield(header .. header); end };
			end);
		end);

		it("a stream restart in the middle of SASL", function ()
			duel("restart mid-SASL", function ()
				return { connect = "stream", settle = 2, chunks = function (yield)
					yield("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNl" .. header);
				end };
			end);
		end);

		it("garbage instead of a stream header", function ()
			duel("garbage header", function ()
				return { connect = "raw", chunks = function (yield) yield("GET / HTTP/1.1\r\nHost: x\r\n\r\n"); end };
			end);
		end);

		it("a stanza before the stream header", function ()
			duel("stanza first", function ()
				return { connect = "raw", chunks = function (yield) yield("<message><body>x</body></message>"); end };
			end);
		end);
	end);

	describe("dropped connections", function ()
		it("30 connections dropped mid-header, mid-SASL and mid-stanza leave nothing behind", function ()
			for _, s in ipairs{ stock, brisk } do
				local srv = s.srv;
				local cuts = {
					function () local c = H.raw(srv); c:send(H.stream_header("localhost"):sub(1, 40)); return c; end;
					function () local c = H.adopt(srv:open_stream());
						c:send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFs"); return c; end;
					function () local c = H.adopt(srv:connect("alice", "pw", "drop"));
						c:send(msg_open("dropped") .. "<body>half"); return c; end;
				};
				for i = 1, 30 do
					local c = cuts[(i - 1) % #cuts + 1]();
					c:drain(0.01);
					c:close();
					s.probe:ping();
				end
				assert.equal("nothing", victim_got(s, "dropped"));
				assert.is_true(prosody.pid_alive(srv.pid));
				assert.truthy(s.probe:ping(), "probe failed after dropped connections");
			end
		end);
	end);

	describe("floods", function ()
		it("3000 presence changes from one device reach the subscriber in order", function ()
			local counts = {};
			for _, which in ipairs{ { "stock", stock }, { "brisk", brisk } } do
				local label, s = which[1], which[2];
				local a = auth_attack(function (yield)
					for i = 1, 30 do
						local parts = {};
						for j = 1, 100 do
							parts[j] = "<presence><status>" .. ((i - 1) * 100 + j) .. "</status></presence>";
						end
						if not yield(table.concat(parts)) then return; end
					end
				end, { victim_id = false, resource = "flood" })(s);
				local o = H.run(s.srv, s.probe, a);
				assert.is_true(o.alive);
				assert.is_false(o.closed);
				assert.equal(0, o.probe_lost);
				assert.is_true(o.probe_worst < LATENCY_BOUND, string.format(
					"%s: probe round trip %.3f s during presence flood", label, o.probe_worst));
				-- The flood's connection was dropped after sending; bob sees
				-- every status in order, then the unavailable presence.
				local n, last, in_order = 0, 0, true;
				while true do
					local p = s.bob:take(5, function (x)
						return x.name == "presence" and x.attr.from == "alice@localhost/flood";
					end);
					if not p then break; end
					if p.attr.type == "unavailable" then break; end
					local v = tonumber(p:get_child_text("status"));
					if v ~= last + 1 then in_order = false; end
					last = v or last;
					n = n + 1;
				end
				counts[label] = { n = n, last = last, in_order = in_order };
				if verbose then print(label, "presence flood", n, last, o.probe_worst); end
			end
			assert.same({ n = 3000, last = 3000, in_order = true }, counts.brisk);
			assert.same(counts.stock, counts.brisk);
		end);
	end);

	it("the Brisk server logged no error the stock server did not", function ()
		for _, s in ipairs{ stock, brisk } do
			assert.truthy(s.probe:ping(), "probe failed at the end");
		end
		assert.same({}, H.extra_errors(brisk.srv, stock.srv));
		-- Memory after every attack: Brisk may not keep more than stock does
		-- (a generous 8 MB of allowance for allocator noise).
		local grew = {};
		for _, s in ipairs{ stock, brisk } do grew[#grew + 1] = s.srv:rss_kb() - s.rss0; end
		print(("\nreliability_hostile: RSS growth over all attacks: stock %d kB, Brisk %d kB"):format(grew[1], grew[2]));
		if os.getenv("BRISK_ASAN") ~= "1" then -- ASan's quarantine makes RSS meaningless
			assert.is_true(grew[2] <= grew[1] + 8192, "the Brisk server kept more memory than stock after the attacks");
		end
	end);
end);
