#!/bin/sh
# Installs what Brisk's build, specs, benchmarks and fuzzers need, but only
# what is missing: a developer's machine is left alone, and a fresh CI machine
# (root, Debian's mirror only) gets everything.
#
# 1. Debian 12 packages, Prosody 0.12 (the system's) with the packages its
#    Debian package recommends, so that it starts without warnings.
# 2. Prosody 13 beside it, never over it: the `prosody` package of Debian's
#    bookworm-backports suite is downloaded and unpacked into build/prosody-13/
#    (its dependencies are the same Debian 12 packages 0.12 uses), and its
#    prosody, prosodyctl and prosody-migrator scripts are copied into
#    build/prosody-13/bin/ with their CFG_* lines pointing at that tree.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

PKGS="prosody lua5.4 liblua5.4-dev libexpat1-dev libsodium-dev libsqlite3-dev
      sqlite3 lua-busted luarocks lua-socket lua-expat lua-dbi-sqlite3
      lua-unbound lua-event lua-readline
      pkg-config gcc make git clang libclang-rt-14-dev gnuplot-nox procps
      util-linux valgrind openssl libssl-dev mosquitto mosquitto-clients libmosquitto-dev"

# The Prosody 13 release Brisk is tested against (../upstream-specs names
# it); if the suite has moved on to a newer 13.x, that one is taken instead.
P13_VERSION="13.0.1-1~bpo12+1"
P13_DIR="$root/build/prosody-13"
BPO_LIST=/etc/apt/sources.list.d/brisk-bookworm-backports.sources

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
updated=

apt_update() {
    [ -n "$updated" ] && return 0
    $SUDO apt-get update -qq
    updated=1
}

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    apt_update
    # Debian's prosody package starts a system service on install; policy-rc.d
    # keeps it from grabbing port 5222 behind our backs (no-op without sysvinit).
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        made_policy=1
    fi
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

# --- Prosody 13 -------------------------------------------------------------
[ -x "$P13_DIR/bin/prosody" ] && [ -f "$P13_DIR/version" ] && exit 0

# bookworm-backports, signed by Debian's archive key. Its packages have apt
# priority 100, so nothing is ever upgraded to them unless asked by name.
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deps: adding Debian's bookworm-backports suite ($BPO_LIST)"
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
        $SUDO tee "$BPO_LIST" >/dev/null
    updated=
fi
if ! apt-cache show "prosody=$P13_VERSION" >/dev/null 2>&1; then
    apt_update
fi
want="prosody=$P13_VERSION"
if ! apt-cache show "$want" >/dev/null 2>&1; then
    want="prosody/bookworm-backports"
fi

echo "deps: unpacking Prosody 13 ($want) into build/prosody-13"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
# As root apt drops to the _apt user for downloads, which may not write here.
(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "$want")
deb=$(ls "$tmp"/prosody_*.deb)
rm -rf "$P13_DIR"
mkdir -p "$P13_DIR/bin" "$P13_DIR/data"
dpkg-deb -x "$deb" "$P13_DIR/root"
lib="$P13_DIR/root/usr/lib/prosody"
for tool in prosody prosodyctl prosody-migrator; do
    sed -e "s|^CFG_SOURCEDIR=.*|CFG_SOURCEDIR='$lib';|" \
        -e "s|^CFG_CONFIGDIR=.*|CFG_CONFIGDIR='$P13_DIR/root/etc/prosody';|" \
        -e "s|^CFG_PLUGINDIR=.*|CFG_PLUGINDIR='$lib/modules/';|" \
        -e "s|^CFG_DATADIR=.*|CFG_DATADIR='$P13_DIR/data';|" \
        "$P13_DIR/root/usr/bin/$tool" >"$P13_DIR/bin/$tool"
    chmod 755 "$P13_DIR/bin/$tool"
    grep -q "^CFG_SOURCEDIR='$lib';" "$P13_DIR/bin/$tool" || {
        echo "deps: $tool of $want has no CFG_SOURCEDIR line to point at build/prosody-13" >&2
        exit 1
    }
done
dpkg-deb -f "$deb" Version >"$P13_DIR/version"
echo "deps: Prosody $(cat "$P13_DIR/version") ready in build/prosody-13"
