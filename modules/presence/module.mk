# brisk.presence: libsodium for webhook signatures (HMAC-SHA256).
LIBS_presence = -lsodium
