#!/usr/bin/env bash
# System packages the test suite needs beyond Python (installed only where missing).
# Kept separate so the README's commands stay two lines; CI calls it before them.
set -euo pipefail
need=()
# headless browser for the dashboard test; PostgreSQL server binaries for the registry test
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
