#!/bin/bash
# Make a Docker engine and the default sandbox image available on a Debian 12 machine (root, no systemd).
#
#   scripts/start-docker.sh            install docker.io + mmdebstrap if missing, start dockerd if it is
#                                      not answering, wait until it is ready, build the image if absent
#
# Idempotent: each step is skipped when already done. dockerd runs with `--bridge=none --iptables=false`
# (sandboxes use network mode "none", and these machines have no docker0 bridge); its log goes to
# $DOCKERD_LOG (default /var/log/dockerd.log). SANDBOX_IMAGE overrides the image name.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here=$(cd "$(dirname "$0")" && pwd)
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}..."
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

DOCKER=docker
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi

if ! "$DOCKER" info >/dev/null 2>&1; then
  if pgrep -x dockerd >/dev/null; then
    echo "dockerd is running but not answering yet; waiting"
  else
    echo "starting dockerd (log: $LOG)"
    nohup dockerd --bridge=none --iptables=false >>"$LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 600); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not come up in 60 s; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
fi
echo "docker engine ready ($("$DOCKER" version --format '{{.Server.Version}}'))"

DOCKER="$DOCKER" "$here/build-sandbox-image.sh"
