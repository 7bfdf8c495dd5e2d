#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser tests (Playwright drives it; its own browser
# download is not reachable from CI). Skips what is already installed.
set -euo pipefail
if command -v chromium >/dev/null; then echo "chromium: already installed ($(chromium --version 2>/dev/null))"; exit 0; fi
apt-get update -q && apt-get install -y -q --no-install-recommends chromium
echo "chromium: installed ($(chromium --version 2>/dev/null))"
