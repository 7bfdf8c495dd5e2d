#!/usr/bin/env bash
# Installs the official MCP conformance suite into .ci/conformance for tests/test_conformance.py: two pinned
# releases side by side, and the Node 22 they need from the npm package `node` (the machine's node may be
# older). Skips whatever is already installed at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_VERSION=22.23.3
SUITES=(0.1.16 0.2.0-alpha.12)
dir=.ci/conformance
install() { npm install --silent --no-audit --no-fund --prefix "$@"; }

command -v npm >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm; }
node="$dir/node-$NODE_VERSION/node_modules/.bin/node"
if [ -x "$node" ] && [ "$("$node" --version)" = "v$NODE_VERSION" ]; then
  echo "conformance: node $NODE_VERSION already installed"
else
  install "$dir/node-$NODE_VERSION" "node@$NODE_VERSION"
fi
export PATH="$PWD/$dir/node-$NODE_VERSION/node_modules/.bin:$PATH"
for suite in "${SUITES[@]}"; do
  bin="$dir/$suite/node_modules/.bin/conformance"
  if [ -x "$bin" ] && [ "$("$bin" --version)" = "$suite" ]; then
    echo "conformance: suite $suite already installed"
  else
    install "$dir/$suite" "@modelcontextprotocol/conformance@$suite"
  fi
done
echo "conformance: node $("$node" --version), suites ${SUITES[*]} in $dir"
