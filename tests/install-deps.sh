#!/usr/bin/env bash
# Installs what building and testing need, when missing (run as root; idempotent).
#
#   bash tests/install-deps.sh --build   only the build tool: cmake, for libopus' sys crate
#   bash tests/install-deps.sh           that, plus the Debian packages the tests use
#
# FreeRDP 3 comes from bookworm-backports, added with the same mirror and keyring as the
# machine's own Debian source. Chromium (the web client's tests drive it headless) comes from
# bookworm itself.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        echo "installing $* needs root (or sudo): $why" >&2
        exit 1
    fi
}

export DEBIAN_FRONTEND=noninteractive
if ! have cmake; then
    why="libopus (the audio codec) is built from source with cmake"
    as_root apt-get update -qq
    as_root apt-get install -y -qq cmake
fi
[ "${1:-}" = "--build" ] && exit 0

missing=0
for cmd in taskset prlimit setpriv strace freerdp-shadow-cli3 xfreerdp3 winpr-hash3 Xvfb xsetroot xdotool xwd chromium; do
    have "$cmd" || missing=1
done
((missing)) || exit 0

if [ "$(id -u)" != 0 ]; then
    echo "tests need Debian packages (FreeRDP 3 shadow server, Xvfb, Chromium); run as root to install them" >&2
    exit 1
fi

if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    src=/etc/apt/sources.list.d/debian.sources
    uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
    key=$(awk '/^Signed-By:/ {print $2; exit}' "$src")
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$key" > /etc/apt/sources.list.d/rdpwire-bookworm-backports.sources
fi

apt-get update -qq
apt-get install -y -qq util-linux strace xvfb x11-xserver-utils xdotool x11-apps chromium
apt-get install -y -qq -t bookworm-backports freerdp3-shadow-x11 freerdp3-x11 winpr3-utils
