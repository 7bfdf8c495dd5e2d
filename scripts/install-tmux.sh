#!/bin/bash
# Make tmux available for the tests of `mcp-sessions attach`, which drive it in a real terminal (root, Debian).
#
#   scripts/install-tmux.sh     install Debian's tmux if it is missing; nothing else
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v tmux >/dev/null; then
  echo "installing tmux..."
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends tmux >/dev/null
fi
echo "tmux ready ($(tmux -V))"
