-- brisk.patch.xmppstream — brisk.xml's stream parser in place of Prosody's
-- util.xmppstream.new.
--
-- new(core): the constructor Brisk puts in util.xmppstream.new, for this
-- Prosody: streams parsed in C (brisk.xml.parser, given util.stanza's
-- stanza_mt and whether this stock parser has a child quota), with
-- session.open_stream set as stock's new sets it. Streams Brisk does not
-- serve go to stock's new: without an error or a handlestanza callback
-- stock raises from its own Lua source, which Brisk could not reproduce
-- (Prosody's servers always pass both).
--
-- install(core): util.xmppstream.new becomes that constructor; the handle
-- maps stock's new to it, for rebinding the copies modules took when they
-- loaded (mod_c2s, mod_s2s, mod_component, mod_bosh, util.adminstream...);
-- undo() restores stock's where Brisk's is still in place. Streams keep the
-- parser they were created with.
local prosody_lib = require "brisk.prosody".lib;

local M = {};

-- The C core (see brisk.patch).
M.core = "brisk.xml";

-- Stock's new, taken from util.xmppstream the first time (later, the
-- library may hold Brisk's).
local stock_new;

function M.stock()
	if not stock_new then
		stock_new = prosody_lib "util.xmppstream".new;
		assert(type(stock_new) == "function", "util.xmppstream has no function new");
	end
	return stock_new;
end

-- Does this stock parser have Prosody 0.12's child quota (max_elements,
-- through set_stanza_size_limit)? 13 dropped it. Its handler factory
-- answers: 0.12's comes with set_max_elements.
local function has_child_quota()
	local _, meta = prosody_lib "util.xmppstream".new_sax_handlers({}, {});
	return type(meta) == "table" and meta.set_max_elements ~= nil;
end

-- One constructor per C core and Prosody: built once, so that installing
-- twice, or comparing with what is installed, sees the same function.
local built = setmetatable({}, { __mode = "k" });

function M.new(core)
	if built[core] then return built[core]; end
	local st = prosody_lib "util.stanza";
	local stock = M.stock();
	local c_new = core.parser(st.stanza_mt, has_child_quota());
	local function new(session, stream_callbacks, stanza_size_limit, ex)
		if type(stream_callbacks) ~= "table" or not stream_callbacks.error
		or not stream_callbacks.handlestanza then
			return stock(session, stream_callbacks, stanza_size_limit, ex);
		end
		-- stock's ex.max_elements only reaches LuaExpat, which ignores it
		local stream = c_new(session, stream_callbacks, stanza_size_limit);
		-- The stream header, exactly as stock's open_stream writes it (its
		-- attribute table built by the same constructor, so the same order;
		-- its parameter named as stock's, so errors read the same).
		function session.open_stream(session, from, to) -- luacheck: ignore 432/session
			local send = session.sends2s or session.send;
			local attr = {
				["xmlns:stream"] = "http://etherx.jabber.org/streams";
				["xml:lang"] = "en";
				xmlns = stream_callbacks.default_ns;
				version = session.version and (session.version > 0 and "1.0" or nil);
				id = session.streamid or "";
				from = from or session.host; to = to;
			};
			if session.stream_attrs then
				session:stream_attrs(from, to, attr);
			end
			send("<?xml version='1.0'?>" .. st.stanza("stream:stream", attr):top_tag());
			return true;
		end
		return stream;
	end
	built[core] = new;
	return new;
end

function M.install(core)
	local lib = prosody_lib "util.xmppstream";
	local stock, brisk = M.stock(), M.new(core);
	local mine = lib.new ~= brisk;
	if mine then lib.new = brisk; end
	return {
		name = mine and "util.xmppstream.new" or nil;
		map = { [stock] = brisk };
		-- Brisk's constructor holds stock's as its fallback: never rebound.
		skip = { [brisk] = true };
		undo = function ()
			if mine and lib.new == brisk then lib.new = stock; end
		end;
	};
end

return M;
