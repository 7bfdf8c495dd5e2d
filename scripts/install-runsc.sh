#!/bin/bash
# Make gVisor (runsc) available to the Docker engine as the runtime `runsc`, for isolation="gvisor".
#
#   scripts/install-runsc.sh     install Debian's runsc if missing, register it in /etc/docker/daemon.json,
#                                and make a running dockerd read it again (SIGHUP: no restart, no
#                                container stops)
#
# Idempotent: each step is skipped when already done. The runtime gets `--network=none`: sandboxes have
# no network anyway, and without it runsc refuses to start on an engine run with `--bridge=none`
# ("cannot run with network enabled in root network namespace"). DOCKER_DAEMON_JSON overrides the path.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CONFIG=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}

if ! command -v runsc >/dev/null; then
  echo "installing runsc..."
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends runsc >/dev/null
fi
RUNSC=$(command -v runsc)

# Add (or correct) the one entry, keeping whatever else the file holds.
changed=$(python3 - "$CONFIG" "$RUNSC" <<'EOF'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read()
    config = json.loads(text) if text.strip() else {}
want = {"path": runsc, "runtimeArgs": ["--network=none"]}
if config.get("runtimes", {}).get("runsc") == want:
    print("no")
    sys.exit()
config.setdefault("runtimes", {})["runsc"] = want
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
print("yes")
EOF
)
[ "$changed" = yes ] && echo "registered runsc in $CONFIG"

DOCKER=docker
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi
registered() { "$DOCKER" info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' 2>/dev/null | grep -qw runsc; }

if pid=$(pgrep -xo dockerd); then
  if [ "$changed" = yes ] || ! registered; then
    echo "asking dockerd ($pid) to read $CONFIG again"
    kill -HUP "$pid"
    for _ in $(seq 1 100); do
      registered && break
      sleep 0.1
    done
    registered || { echo "dockerd did not take the runsc runtime; see its log" >&2; exit 1; }
  fi
  echo "runsc runtime ready ($("$RUNSC" --version | head -1))"
else
  echo "dockerd is not running; it reads $CONFIG when it starts"
fi
