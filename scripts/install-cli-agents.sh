#!/usr/bin/env bash
# Installs the coding-agent CLIs that the CLI agents (claude-code, codex, opencode) run, at pinned
# versions, from npm into the server's CLI cache folder. Sandboxes get the native binary from there
# (docker: mounted read-only; local: run in place): nothing is downloaded when a session starts.
#
#   scripts/install-cli-agents.sh [claude-code|codex|opencode ...]    (default: all)
#
# Folder: $MCP_SESSIONS_CLI_AGENTS_DIR, else ${XDG_CACHE_HOME:-~/.cache}/mcp-sessions/cli-agents; each CLI
# goes to <folder>/<name>-<version>/, marked complete only once its binary runs. What is there is skipped.
# Keep the versions in step with mcp_sessions/agents/cli/binaries.py (PINNED).
set -euo pipefail
dir=${MCP_SESSIONS_CLI_AGENTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mcp-sessions/cli-agents}
declare -A package=(
  [claude-code]="@anthropic-ai/claude-code@2.1.197"
  [codex]="@openai/codex@0.171.0"
  [opencode]="opencode-ai@1.18.33"
)
declare -A binary=(
  [claude-code]="node_modules/@anthropic-ai/claude-code-linux-x64/claude"
  [codex]="node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
  [opencode]="node_modules/opencode-linux-x64/bin/opencode"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(claude-code codex opencode)
command -v npm >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm; }
for name in "${names[@]}"; do
  spec=${package[$name]:-}
  [ -n "$spec" ] || { echo "unknown CLI '$name': use claude-code, codex or opencode" >&2; exit 2; }
  target="$dir/$name-${spec##*@}"
  if [ -f "$target/.complete" ]; then echo "$name: already installed in $target"; continue; fi
  rm -rf "$target.partial"
  mkdir -p "$target.partial"
  npm install --silent --no-audit --no-fund --prefix "$target.partial" "$spec"
  bin="$target.partial/${binary[$name]}"
  [ -x "$bin" ] || { echo "$name: the native binary is not at $bin (npm did not install the optional dependency?)" >&2; exit 1; }
  "$bin" --version >/dev/null
  touch "$target.partial/.complete"
  rm -rf "$target"
  mv "$target.partial" "$target"
  echo "$name: installed $spec in $target"
done
