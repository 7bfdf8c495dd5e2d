#!/usr/bin/env bash
# Installs the MCP Inspector CLI into .ci/inspector for the tests that drive the server with it.
# 0.15.0 is the newest release whose engines field accepts Node 20.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.ci/inspector/node_modules/.bin/mcp-inspector
if [ -x "$bin" ]; then echo "inspector: already installed"; exit 0; fi
command -v npm >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm; }
npm install --silent --no-audit --no-fund --prefix .ci/inspector @modelcontextprotocol/inspector@0.15.0
echo "inspector: installed $("$bin" --help >/dev/null 2>&1 && echo ok)"
