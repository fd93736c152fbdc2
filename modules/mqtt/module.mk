# brisk.mqtt: libmosquitto for MQTT, OpenSSL for its TLS context (tls.c).
LIBS_mqtt = -lmosquitto -lssl -lcrypto
