# brisk.roster: SQLite's C API for storage, libsodium for checksums and encryption.
LIBS_roster = -lsqlite3 -lsodium
CFLAGS_roster =
