#!/usr/bin/env bash
# make run: start Prosody (Debian's 0.12, or 13 with PROSODY=13: the Makefile
# passes it to make env) in the foreground on loopback with
# examples/prosody.cfg.lua and every Brisk module, creating the run folder and
# two demo accounts on first start. Ctrl-C stops it cleanly.
#
# Environment: BRISK_RUN_DIR (default ./run), BRISK_C2S_PORT (5222),
# BRISK_HTTP_PORT (5280), BRISK_LOG_LEVEL (info).
#
# BRISK_MQTT=1 also starts a private mosquitto on 127.0.0.1 (port
# BRISK_MQTT_PORT, default 1883; its files in $BRISK_RUN_DIR/mosquitto) and
# points mod_brisk_iot's iot_mqtt at it; it stops with Prosody. Needs Debian's
# mosquitto (scripts/deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
eval "$(make -s env)"

export BRISK_ROOT="$root"
export BRISK_RUN_DIR="${BRISK_RUN_DIR:-$root/run}"
export BRISK_C2S_PORT="${BRISK_C2S_PORT:-5222}"
export BRISK_HTTP_PORT="${BRISK_HTTP_PORT:-5280}"
if [ "$(id -u)" -eq 0 ]; then export BRISK_RUN_AS_ROOT=1; fi
config="$root/examples/prosody.cfg.lua"

mkdir -p "$BRISK_RUN_DIR/data" "$BRISK_RUN_DIR/certs"

# A stale pid file from a killed run would make Prosody refuse to start.
if [ -f "$BRISK_RUN_DIR/prosody.pid" ]; then
    pid=$(cat "$BRISK_RUN_DIR/prosody.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "Prosody is already running from $BRISK_RUN_DIR (pid $pid)" >&2
        exit 1
    fi
    rm -f "$BRISK_RUN_DIR/prosody.pid"
fi

# Two demo accounts, created once (prosodyctl exits non-zero if the user exists).
for user in alice bob; do
    if [ ! -e "$BRISK_RUN_DIR/data/localhost/accounts/$user.dat" ]; then
        "$BRISK_PROSODY_BIN/prosodyctl" --config "$config" register "$user" localhost "$user" >/dev/null
    fi
done

echo "Brisk: Prosody $BRISK_PROSODY on 127.0.0.1:$BRISK_C2S_PORT with Brisk modules; data in $BRISK_RUN_DIR"
echo "Brisk: log in as alice@localhost (password alice) or bob@localhost (password bob)"
echo "Brisk: with any XMPP client; plain SASL without TLS is allowed on loopback only. Ctrl-C stops."

if [ "${BRISK_MQTT:-}" != 1 ]; then
    exec "$BRISK_PROSODY_BIN/prosody" --config "$config" -F
fi

# A private MQTT broker for mod_brisk_iot (examples/prosody.cfg.lua reads
# BRISK_MQTT_BROKER). Persistence on, so that the fleet's retained state
# survives restarts of either side.
if ! command -v mosquitto >/dev/null 2>&1; then
    echo "Brisk: BRISK_MQTT=1 needs mosquitto (apt-get install mosquitto mosquitto-clients)" >&2
    exit 1
fi
mqtt_port="${BRISK_MQTT_PORT:-1883}"
mqtt_dir="$BRISK_RUN_DIR/mosquitto"
mkdir -p "$mqtt_dir"
{
    echo "listener $mqtt_port 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence true"
    echo "persistence_location $mqtt_dir/"
    echo "log_dest file $mqtt_dir/mosquitto.log"
    # As root mosquitto would switch to its own user, who cannot write here.
    if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
} >"$mqtt_dir/mosquitto.conf"
mosquitto -c "$mqtt_dir/mosquitto.conf" &
mqtt_pid=$!
trap 'kill "$mqtt_pid" 2>/dev/null; wait "$mqtt_pid" 2>/dev/null' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break
    kill -0 "$mqtt_pid" 2>/dev/null || { echo "Brisk: mosquitto did not start, see $mqtt_dir/mosquitto.log" >&2; exit 1; }
    sleep 0.1
done
export BRISK_MQTT_BROKER="mqtt://127.0.0.1:$mqtt_port"
echo "Brisk: MQTT broker (mosquitto) on 127.0.0.1:$mqtt_port; watch the fleet with"
echo "Brisk:   mosquitto_sub -p $mqtt_port -t 'brisk/#' -v"
# Not exec: the trap stops mosquitto when Prosody has stopped.
"$BRISK_PROSODY_BIN/prosody" --config "$config" -F
