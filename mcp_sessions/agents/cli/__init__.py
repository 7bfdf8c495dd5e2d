"""Coding-agent CLIs run in the session's sandbox (Claude Code first): their pinned binaries, the model-API
proxy that keeps keys in the server, and the streams that join a CLI process to its agent."""
