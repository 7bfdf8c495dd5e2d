"""The dashboard's pages: a frame each, filled in by dashboard.js from the REST API."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from .. import __version__

HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · mcp-sessions</title>
<link rel="stylesheet" href="/ui/static/dashboard.css">
</head><body data-page="{page}"{extra}>
<header><a class="brand" href="/ui">mcp-sessions</a><span class="version">{version}</span>{logout}</header>
<main>
"""
FOOT = """</main>
<script src="/ui/static/dashboard.js"></script>
</body></html>
"""
LOGOUT = '<form method="post" action="/ui/logout" class="logout"><button type="submit">Sign out</button></form>'
STATUSES = ("creating", "ready", "busy", "paused", "failed", "dead")


def _frame(title: str, page: str, body: str, *, signed_in: bool, extra: str = "") -> str:
    head = HEAD.format(
        title=escape(title), page=page, extra=extra, version=escape(__version__), logout=LOGOUT if signed_in else ""
    )
    return head + body + FOOT


def sessions_page(*, signed_in: bool, overseer: bool = False) -> str:
    """`overseer`: the caller sees every owner's sessions, so the list has an owner filter and column."""
    options = "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    owner = '\n  <label>owner <input name="owner" size="8"></label>' if overseer else ""
    owner_th = "<th>owner</th>" if overseer else ""
    body = f"""<h1>Sessions</h1>
<form id="filters" class="filters">
  <label>status <select name="status"><option value="">any</option>{options}</select></label>
  <label>tag <input name="tag" size="10"></label>
  <label>driver <input name="driver" size="8"></label>
  <label>agent <input name="agent" size="8"></label>{owner}
</form>
<p id="summary" class="muted">Loading…</p>
<table id="sessions"><thead><tr>
<th>session</th><th>status</th><th>driver / agent</th><th>turns</th><th>last activity</th><th>first message</th>{owner_th}
</tr></thead><tbody></tbody></table>
<p class="pager"><button id="first" type="button" hidden>First page</button>
<button id="next" type="button" hidden>Next page</button></p>
"""
    return _frame("Sessions", "sessions", body, signed_in=signed_in, extra=' data-overseer="1"' if overseer else "")


def session_page(session_id: str, *, signed_in: bool) -> str:
    sid = escape(session_id)
    body = f"""<p><a href="/ui">← sessions</a></p>
<h1 id="title">{sid}</h1>
<p id="state" class="state">Loading…</p>
<p class="actions">
  <button id="interrupt" type="button">Interrupt</button>
  <button id="pause" type="button" title="Stop its sandbox, keep its workspace; a message resumes it">Pause</button>
  <button id="fork" type="button" title="A new session from this one's workspace and conversation">Fork</button>
  <button id="close" type="button">Close</button>
  <span id="notice" role="status"></span>
</p>
<section id="approvals" class="approvals" aria-live="polite"></section>
<dl id="facts" class="facts"></dl>
<h2>Conversation</h2>
<ol id="transcript" class="transcript"></ol>
<pre id="live" class="output" hidden></pre>
<form id="send" class="send"><textarea name="text" rows="2" placeholder="A message for the session"></textarea>
<button type="submit">Send</button></form>
<section id="workspace"><h2>Files</h2>
<nav id="crumbs" class="crumbs" aria-label="folder"></nav>
<table id="files"><thead><tr><th>name</th><th>size</th><th>modified</th></tr></thead><tbody></tbody></table>
<p id="files-note" class="muted small" role="status"></p></section>
<h2>Turns</h2>
<table id="turns"><thead><tr><th>turn</th><th>status</th><th>exit</th><th>duration</th><th>tokens</th><th>cost</th>
<th>reason</th></tr></thead><tbody></tbody></table>
<h2>Events</h2>
<ol id="events" class="events" reversed></ol>
"""
    return _frame(session_id, "session", body, signed_in=signed_in, extra=f' data-session="{sid}"')


def login_page(target: str, error: str | None = None) -> str:
    said = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = f"""<h1>Sign in</h1>{said}
<form method="post" action="/ui/login?next={escape(quote(target))}" class="login">
<label>Token <input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button type="submit">Sign in</button></form>
<p class="muted">A token from the server's <code>--tokens-file</code> or <code>MCP_SESSIONS_TOKENS</code>;
it is kept in a cookie this site's scripts cannot read.</p>
"""
    return _frame("Sign in", "login", body, signed_in=False)
