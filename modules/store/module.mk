# brisk.store: SQLite's C API for storage, libsodium for checksums and encryption.
LIBS_store = -lsqlite3 -lsodium
CFLAGS_store =
