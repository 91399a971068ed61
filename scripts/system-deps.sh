#!/usr/bin/env bash
# System packages the tests use that PyPI does not ship: a compose client to validate deploy/ (Debian's
# docker-compose when the docker CLI has no compose plugin), Chromium for the browser test (Playwright
# drives Debian's chromium; `playwright install` would download a browser), PostgreSQL (a SQL catalog source)
# and redis-server (the Celery broker), both started by test fixtures on free loopback ports in temporary
# folders. Installed only when missing, as root with apt; elsewhere it says what is missing and the tests
# that need it skip with that reason.
set -euo pipefail
want=()
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  want+=(docker-compose)
fi
command -v chromium >/dev/null 2>&1 || want+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq update >/dev/null || true
  apt-get -qq install -y --no-install-recommends "${want[@]}" >/dev/null \
    || echo "system-deps: could not install ${want[*]} (the tests that need them will skip)" >&2
  # Debian starts the services it installs; the tests run their own on free ports.
  for svc in redis-server postgresql; do
    if printf '%s\n' "${want[@]}" | grep -qx "$svc"; then service "$svc" stop >/dev/null 2>&1 || true; fi
  done
else
  echo "system-deps: not root or no apt-get; missing: ${want[*]} (the tests that need them will skip)" >&2
fi
