#!/bin/sh
# Adds mcp-sessions to Claude Code for the current project (use --scope user for every project).
claude mcp add sessions -- /path/to/mcp-sessions/.venv/bin/mcp-sessions --driver local
