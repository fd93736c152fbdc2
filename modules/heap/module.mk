# brisk.heap: calls into Lua's API go straight through the GOT (no PLT stubs): the methods are a few API calls each.
CFLAGS_heap = -fno-plt
