#!/bin/sh
# Installs the Debian packages Brisk's build, specs, benchmarks and fuzzers
# need, but only those that are missing: a developer's machine is left alone,
# and a fresh CI machine (root, Debian's mirror only) gets everything.
set -eu

PKGS="prosody lua5.4 liblua5.4-dev libexpat1-dev libsodium-dev libsqlite3-dev
      sqlite3 lua-busted luarocks lua-socket lua-expat lua-dbi-sqlite3
      pkg-config gcc make git clang libclang-rt-14-dev gnuplot-nox procps
      util-linux valgrind"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian's prosody package starts a system service on install; policy-rc.d
# keeps it from grabbing port 5222 behind our backs (no-op without sysvinit).
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    made_policy=1
fi
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
[ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit 0
