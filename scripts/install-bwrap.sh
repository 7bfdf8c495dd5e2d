#!/bin/bash
# Make bubblewrap (bwrap) available for the local driver's isolation="bwrap" on a Debian machine (root).
#
#   scripts/install-bwrap.sh     install Debian's bubblewrap if bwrap is missing; nothing else
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v bwrap >/dev/null; then
  echo "installing bubblewrap..."
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends bubblewrap >/dev/null
fi
echo "bwrap ready ($(bwrap --version))"
