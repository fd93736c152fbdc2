-- brisk.iot.watch — watching a file descriptor from Prosody's event loop,
-- for brisk.mqtt's client (whose socket libmosquitto owns, and which Brisk
-- steps itself: read(), write()).
--
-- Every net.server backend of Prosody 0.12 and 13 has watchfd(fd,
-- onreadable, onwritable), but they differ in how the interest in writing
-- is switched on and off afterwards, which the client needs all the time
-- (only while libmosquitto has bytes to send):
--   epoll  (the default on both versions): setflags(read, write) works.
--   select: setflags swaps its lists (asking for "no write" takes the
--          socket out of the read list), on 0.12 and 13 alike.
--   event  (libevent): setflags cannot switch writing off once on, and
--          its handles have no close().
-- So epoll gets one watcher and setflags; the others get a read watcher
-- for the whole connection and a write watcher that exists only while
-- writing is wanted, created with watchfd and removed by closing it
-- (select: close(); event: its libevent events, the fields setflags
-- itself uses).
--
-- new(server) -> watch(fd, on_readable, on_writable) -> handle with
-- handle:want_write(on) and handle:close(). The callbacks get no
-- arguments. Closing from inside a callback is allowed.

local M = {};

-- Remove a watcher of the select or event backend.
local function close_watcher(w)
	if w.close then
		w:close();
		return;
	end
	-- server_event's handle: its libevent events are in these fields.
	for _, field in ipairs({ "wantread", "wantwrite" }) do
		local ev = w[field];
		if ev then
			ev:close();
			w[field] = nil;
		end
	end
end

function M.new(server)
	local backend = server.get_backend and server.get_backend() or "epoll";
	if backend == "epoll" then
		return function (fd, on_readable, on_writable)
			local writing = false;
			local w = server.watchfd(fd, function () on_readable(); end, function () on_writable(); end);
			w:setflags(true, false);
			local handle = {};
			function handle.want_write(_, on)
				on = not not on;
				if on ~= writing and w then
					writing = on;
					w:setflags(true, on);
				end
			end
			function handle.close()
				if w then w:close(); w = nil; end
			end
			return handle;
		end;
	end
	return function (fd, on_readable, on_writable)
		local r = server.watchfd(fd, function () on_readable(); end);
		local w;
		local handle = {};
		function handle.want_write(_, on)
			if on and not w and r then
				w = server.watchfd(fd, nil, function () on_writable(); end);
			elseif not on and w then
				close_watcher(w);
				w = nil;
			end
		end
		function handle.close()
			if w then close_watcher(w); w = nil; end
			if r then close_watcher(r); r = nil; end
		end
		return handle;
	end;
end

return M;
