#!/usr/bin/env bash
# The PostgreSQL server binaries (initdb, pg_ctl) that the tests start their own server from:
# Debian's `postgresql` package, installed with apt-get when missing (as root, or through sudo).
# Does nothing when they are present. Used by README's test command and .ci/run.
set -euo pipefail

have_server() {
  local dir
  for dir in "${SPOOKY_PG_BINDIR:-}" "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "PostgreSQL server binaries: $dir"
      return 0
    fi
  done
  return 1
}

have_server && exit 0
if [ "$(id -u)" = "0" ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "the tests need PostgreSQL's server binaries; as root run:" >&2
  echo "  apt-get update && apt-get install -y postgresql" >&2
  exit 1
fi
echo "installing Debian's postgresql package (the tests start their own server from it)"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
have_server || { echo "postgresql is installed but no initdb/pg_ctl was found" >&2; exit 1; }
