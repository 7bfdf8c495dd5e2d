#!/bin/bash
# Make PostgreSQL's server programs available for the tests of the PostgreSQL store, on a Debian machine (root).
#
#   scripts/install-postgres.sh     install Debian's postgresql if initdb is missing; nothing else
#
# No cluster is started here: the tests start a throwaway one of their own (tests/postgres_support.py), as
# the `postgres` user the package creates when run as root: initdb into a temporary folder, then pg_ctl on
# a free port of 127.0.0.1 and a socket in that folder, stopped and removed at the end of the run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
  echo "installing postgresql..."
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends postgresql >/dev/null
fi
echo "postgresql ready ($("$(bindir)/postgres" --version))"
