-- spec/foundation_luarocks_spec.lua — `luarocks make` from a copy of the
-- checkout, offline, and a Prosody that loads Brisk from what it installed:
-- once as a per-Prosody tree (<data>/custom_plugins, Prosody's
-- installer_plugin_path) and once as a prefix named in plugin_paths, the way
-- a system-wide install under /usr/local is used.
local prosody = require "spec.helpers.prosody";
local st = require "util.stanza";
local q = prosody.shell_quote;

local function sh(cmd)
	local f = assert(io.popen(cmd .. " 2>&1"));
	local out = f:read("a");
	local ok = f:close();
	return out, ok;
end

-- A copy of the checkout's files (tracked and new, not build/), so the
-- install builds from source exactly as a user's luarocks would.
local function copy_checkout()
	local dir = sh("mktemp -d /tmp/brisk-rock-XXXXXX"):gsub("%s+$", "");
	local out, ok = sh(string.format(
		"cd %s && git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C %s",
		q(prosody.root), q(dir)));
	assert(ok, out);
	return dir;
end

local function luarocks_make(src, tree)
	-- luarocks keeps its cache under $HOME; CI may run with none set.
	local out, ok = sh(string.format("cd %s && env -u LUA_PATH -u LUA_CPATH HOME=%s luarocks --lua-version 5.4 --tree %s make brisk-scm-1.rockspec",
		q(src), q(os.getenv("HOME") or (src .. "/.home")), q(tree)));
	assert(ok, "luarocks make failed:\n" .. out);
	return out;
end

-- Every Brisk module from the install: the parser and serializer carry the
-- chat, mod_brisk_util's C util.jid and timer heap route it, mod_storage_brisk
-- stores the roster item, mod_brisk_iot sees bob.
local everything = {
	modules = { "brisk_xml", "brisk_util" };
	storage = { roster = "brisk" };
	host_modules = { "brisk_iot" };
};

local function chat(srv)
	local log = srv:log_text();
	assert.truthy(log:match("mod_brisk_xml\tinfo\t"), "mod_brisk_xml did not load:\n" .. log);
	assert.truthy(log:match("mod_brisk_util\tinfo\tbrisk%.util [^\n]*installed: replaced util%.jid, util%.indexedbheap"),
		"mod_brisk_util did not load:\n" .. log);
	local alice = srv:connect("alice", "pw", "a");
	local set = alice:iq(st.iq({ type = "set", id = "r1" }):tag("query", { xmlns = "jabber:iq:roster" })
		:tag("item", { jid = "bob@localhost" }));
	assert.equal("result", set and set.attr.type);
	local bob = srv:connect("bob", "pw", "b");
	bob:send(st.presence());
	alice:send(st.message({ to = "bob@localhost/b" }):text_tag("body", "from the rock"));
	local msg = bob:receive(5, function (s) return s.name == "message"; end);
	assert.truthy(msg);
	assert.equal("from the rock", msg:get_child_text("body"));
	alice:close();
	bob:close();
	assert.truthy(io.open(srv.dir .. "/data/brisk.sqlite"), "mod_storage_brisk wrote no database");
	assert.truthy(srv:log_text():match("brisk_iot"), "mod_brisk_iot did not load");
end

describe("luarocks make", function ()
	local src;
	setup(function () src = copy_checkout(); end);
	teardown(function () if src then os.execute("rm -rf " .. q(src)); end end);

	it("installs into a per-Prosody tree that Prosody loads from", function ()
		local srv = prosody.start{
			isolated = true;
			modules = everything.modules, storage = everything.storage, host_modules = everything.host_modules;
			-- Prosody resolves the default "custom_plugins" against its
			-- compiled-in data folder (/var/lib/prosody on Debian), not
			-- data_path, so a test server names its own.
			config = { installer_plugin_path = "%{dir}/custom_plugins" };
			accounts = { alice = "pw", bob = "pw" };
			prepare = function (srv)
				luarocks_make(src, srv.dir .. "/custom_plugins");
			end;
		};
		local ok, err = pcall(function ()
			chat(srv);
			assert.same({}, srv:errors());
		end);
		srv:stop();
		assert(ok, err);
	end);

	it("installs into a prefix used through plugin_paths", function ()
		local tree = sh("mktemp -d /tmp/brisk-tree-XXXXXX"):gsub("%s+$", "");
		luarocks_make(src, tree);
		-- Exactly the production Lua of lualib/ is installed: no test helpers.
		local function lua_files(root)
			return (sh(("cd %s && find . -name '*.lua' | sort"):format(q(root))));
		end
		assert.equal(lua_files(src .. "/lualib"), lua_files(tree .. "/share/lua/5.4"));
		local srv = prosody.start{
			isolated = true;
			modules = everything.modules, storage = everything.storage, host_modules = everything.host_modules;
			config = { plugin_paths = { tree .. "/share/lua/5.4", prosody.root .. "/spec/helpers/plugins" } };
			-- /usr/local/{share,lib}/lua/5.4 are on Lua's default paths; a
			-- test prefix is not, so name it as those would be.
			env = {
				LUA_PATH = tree .. "/share/lua/5.4/?.lua;;";
				LUA_CPATH = tree .. "/lib/lua/5.4/?.so;;";
			};
			accounts = { alice = "pw", bob = "pw" };
		};
		local ok, err = pcall(function ()
			chat(srv);
			assert.same({}, srv:errors());
		end);
		srv:stop();
		os.execute("rm -rf " .. q(tree));
		assert(ok, err);
	end);
end);
