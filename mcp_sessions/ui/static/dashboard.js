// The dashboard: pages filled in from the REST API (/api/v1) and the session's event stream.
// Every value is put in the page as text (textContent), never as markup.
"use strict";

const API = "/api/v1";
const HEADERS = { "X-MCP-Sessions-UI": "1" }; // the gate asks it of a cookie-authenticated change
const EVENT_TYPES = [
  "session.created", "phase", "status", "turn.queued", "turn.started", "text.delta", "tool.started",
  "tool.output", "tool.completed", "model.sampled", "approval.requested", "approval.answered", "approval.unanswered", "turn.completed", "turn.failed",
  "turn.interrupted", "session.failed", "session.closed", "egress", "checkpoint.saved", "checkpoint.restored",
];
const TURN_ENDS = new Set(["turn.completed", "turn.failed", "turn.interrupted", "session.failed", "session.closed"]);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(API + path, { ...options, headers: { ...HEADERS, ...(options.headers || {}) } });
  if (response.status === 401) {
    location.href = "/ui/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("signed out");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
  return body;
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function badge(status) {
  return el("span", status, "badge status-" + status);
}

// -- the sessions list ---------------------------------------------------------------------------

function sessionsPage() {
  const form = document.getElementById("filters");
  const tbody = document.querySelector("#sessions tbody");
  const summary = document.getElementById("summary");
  const next = document.getElementById("next");
  const first = document.getElementById("first");
  const overseer = document.body.dataset.overseer === "1";
  let cursor = null;
  let nextCursor = null;

  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    for (const [name, value] of new FormData(form)) if (value) q.append(name, String(value));
    if (cursor) q.set("cursor", cursor);
    let page;
    try {
      page = await api("/sessions?" + q);
    } catch (e) {
      summary.textContent = "Could not load the sessions: " + e.message;
      return;
    }
    tbody.replaceChildren(...page.sessions.map(row));
    summary.textContent = page.total === 1 ? "1 session" : `${page.total} sessions`;
    nextCursor = page.next_cursor;
    next.hidden = !nextCursor;
    first.hidden = !cursor;
  }

  function row(s) {
    const tr = el("tr");
    tr.dataset.session = s.id;
    const link = el("a", s.title || s.id);
    link.href = "/ui/sessions/" + encodeURIComponent(s.id);
    const name = el("td");
    name.append(link);
    if (s.title) name.append(el("div", s.id, "muted small"));
    for (const tag of s.tags) name.append(el("span", tag, "tag"));
    const status = el("td");
    status.append(badge(s.status));
    const why = s.failure_reason || s.close_reason;
    if (why) status.append(el("div", why, "muted small"));
    tr.append(name, status, el("td", `${s.driver} / ${s.agent}`), el("td", s.turns, "num"),
      el("td", ago(s.last_activity_at)), el("td", s.preview || "", "preview"));
    if (overseer) tr.append(el("td", s.owner || "–", "owner"));
    return tr;
  }

  form.addEventListener("input", () => { cursor = null; load(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  next.addEventListener("click", () => { cursor = nextCursor; load(); });
  first.addEventListener("click", () => { cursor = null; load(); });
  load();
  setInterval(() => { if (!document.hidden) load(); }, 2000);
}

// -- tool calls waiting for an answer (permission_mode "ask") ------------------------------------

// What the session's events say waits: shown until its approval.answered event or the turn's end arrives,
// which every open page of the session hears, whichever page (or caller) answered.
function approvalPanel(section, answer) {
  const waiting = new Map(); // request_id -> the approval.requested event's data
  const SHOWN_CHARS = 2000; // approvals.py shortens each string of the input to this for the event

  function field(name, value) {
    const row = el("div", null, "approval-field");
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    row.append(el("span", name, "approval-key"), el("pre", text));
    return row;
  }

  function card(id, asked) {
    const node = el("article", null, "approval");
    node.dataset.request = id;
    const input = asked.input || {};
    node.append(el("h2", "Allow this tool call?"), el("p", asked.tool, "tool-name"));
    const shown = el("div", null, "approval-input");
    shown.append(...Object.entries(input).map(([k, v]) => field(k, v)));
    node.append(shown);
    const note = el("p", null, "approval-note");
    note.setAttribute("role", "alert");
    const message = el("input");
    message.type = "text";
    message.name = "message";
    message.placeholder = "Why not (the agent reads it; optional)";
    const allow = el("button", "Allow", "allow");
    const deny = el("button", "Deny", "deny");
    const edited = el("textarea");
    edited.name = "updated_input";
    edited.rows = 6;
    edited.spellcheck = false;
    edited.value = JSON.stringify(input, null, 2);
    const allowEdited = el("button", "Allow with this input", "allow-edited");
    const buttons = [allow, deny, allowEdited];
    for (const b of buttons) b.type = "button";

    async function send(body, what) {
      for (const b of buttons) b.disabled = true;
      note.className = "approval-note";
      note.textContent = what + "…";
      try {
        await answer({ request_id: id, ...body });
        note.textContent = what + ": the agent goes on.";
      } catch (e) {
        note.className = "approval-note error";
        note.textContent = e.message;
        for (const b of buttons) b.disabled = false;
      }
    }

    allow.addEventListener("click", () => send({ decision: "allow" }, "Allowed"));
    deny.addEventListener("click", () =>
      send({ decision: "deny", ...(message.value.trim() ? { message: message.value.trim() } : {}) }, "Denied"));
    allowEdited.addEventListener("click", () => {
      let parsed;
      try {
        parsed = JSON.parse(edited.value);
      } catch (e) {
        note.className = "approval-note error";
        note.textContent = `The edited input is not valid JSON (${e.message}). Correct it, or press Allow to run the call as asked.`;
        return;
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        note.className = "approval-note error";
        note.textContent = "The edited input must be a JSON object ({ … }) of the tool's parameters, like the one shown.";
        return;
      }
      send({ decision: "allow", updated_input: parsed }, "Allowed with your input");
    });

    const row = el("div", null, "approval-buttons");
    row.append(allow, deny, message);
    const edit = el("details", null, "approval-edit");
    edit.append(el("summary", "Allow with edited input"), edited, allowEdited);
    if (Object.values(input).some((v) => typeof v === "string" && v.length >= SHOWN_CHARS)) {
      edit.append(el("p", `Strings are shown up to ${SHOWN_CHARS} characters: what this field holds is what runs.`, "muted small"));
    }
    node.append(row, edit, note);
    return node;
  }

  function show() {
    for (const node of [...section.children]) if (!waiting.has(node.dataset.request)) node.remove();
    const shown = new Set([...section.children].map((n) => n.dataset.request));
    for (const [id, asked] of waiting) if (!shown.has(id)) section.append(card(id, asked));
  }

  return {
    event(e) {
      if (e.type === "approval.requested") waiting.set(e.data.request_id, e.data);
      else if (e.type === "approval.answered") waiting.delete(e.data.request_id);
      else if (TURN_ENDS.has(e.type)) waiting.clear(); // an ended turn waits for nothing
      else return;
      show();
    },
  };
}

// -- one session ---------------------------------------------------------------------------------

function sessionPage() {
  const sid = document.body.dataset.session;
  const path = "/sessions/" + encodeURIComponent(sid);
  const state = document.getElementById("state");
  const facts = document.getElementById("facts");
  const transcript = document.getElementById("transcript");
  const live = document.getElementById("live");
  const events = document.getElementById("events");
  const notice = document.getElementById("notice");
  let stream = null;
  let cursor = 0;

  function showState(s) {
    document.getElementById("title").textContent = s.title || s.id;
    document.title = (s.title || s.id) + " · mcp-sessions";
    state.replaceChildren(badge(s.status));
    if (s.status === "creating" || s.phase_detail) state.append(el("span", " " + s.phase + (s.phase_detail ? ": " + s.phase_detail : "")));
    const why = s.failure_reason || s.close_reason;
    if (why) state.append(el("div", why, "reason"));
    document.getElementById("interrupt").disabled = s.status !== "busy";
    document.getElementById("pause").disabled = s.status !== "ready";
    document.getElementById("fork").disabled = !["ready", "busy", "paused"].includes(s.status);
    document.getElementById("close").disabled = s.status === "dead";
    document.querySelector("#send button").disabled = s.status === "dead" || s.status === "failed";
    const usage = s.usage || {};
    const rows = [
      ["id", s.id], ["driver / agent", `${s.driver} / ${s.agent}`], ["model", s.model || "–"],
      ["turns", s.turns], ["tokens", usage.total_tokens || 0],
      ["cost", "$" + Number(usage.cost_usd || 0).toFixed(4)], ["created", new Date(s.created_at).toLocaleString()],
      ["last activity", ago(s.last_activity_at)], ["workspace", s.workspace || "–"],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  }

  function block(b) {
    if (b.type === "text") return el("div", b.text, "text");
    if (b.type === "tool_use") {
      const node = el("div", null, "tool-call");
      node.append(el("span", b.name, "tool-name"), el("pre", JSON.stringify(b.input, null, 2)));
      return node;
    }
    if (b.type === "tool_result") return el("pre", b.content, b.is_error ? "tool-result error" : "tool-result");
    if (b.type === "image") { // sent with a message: shown from its data (the page's policy allows data: images only)
      const img = el("img", null, "image");
      img.alt = `${b.media_type} image`;
      img.src = `data:${b.media_type};base64,${b.data}`;
      return img;
    }
    return el("div", `[${b.type}]`, "muted");
  }

  function message(m) {
    const li = el("li", null, "msg role-" + m.role + (m.undone ? " undone" : ""));
    li.dataset.turn = m.turn;
    li.append(el("div", `${m.role} · turn ${m.turn}${m.undone ? " · undone by a restore" : ""}`, "who"), ...m.content.map(block));
    return li;
  }

  const turnRows = new Map();
  function showTurn(e) {
    const d = e.data;
    const usage = d.usage || {};
    const tr = el("tr");
    tr.dataset.turn = d.turn;
    tr.append(el("td", d.turn, "num"), el("td", e.type.slice(5)), el("td", d.exit_code ?? "–", "num"),
      el("td", d.duration_s == null ? "–" : Number(d.duration_s).toFixed(2) + " s", "num"),
      el("td", usage.total_tokens || 0, "num"), el("td", "$" + Number(usage.cost_usd || 0).toFixed(4), "num"),
      el("td", d.reason || "", "small"));
    const tbody = document.querySelector("#turns tbody");
    const old = turnRows.get(d.turn);
    if (old) old.replaceWith(tr); else tbody.prepend(tr);
    turnRows.set(d.turn, tr);
  }

  function showEvent(e) {
    const li = el("li", null, "event");
    li.append(el("span", new Date(e.time).toLocaleTimeString(), "muted"), el("span", " " + e.type + " ", "etype"));
    const detail = e.data.text !== undefined ? String(e.data.text).slice(0, 200) : JSON.stringify(e.data).slice(0, 200);
    li.append(el("span", detail, "small"));
    events.prepend(li);
    while (events.children.length > 200) events.lastChild.remove();
  }

  // The workspace: one folder at a time, its folders opened in place, its files downloaded by the browser
  // (a plain link: the cookie signs the GET in, as it does the page).
  const files = document.querySelector("#files tbody");
  const filesNote = document.getElementById("files-note");
  const crumbs = document.getElementById("crumbs");
  let folder = ""; // the folder asked for last: a turn's end reads it again
  let asked = 0; // listings answer out of order: only the last one asked for is shown

  function size(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(1)} MiB`;
  }

  function folderButton(label, target) {
    const b = el("button", label, "link");
    b.type = "button";
    b.dataset.folder = target;
    b.addEventListener("click", () => showFolder(target));
    return b;
  }

  function fileRow(f) {
    const tr = el("tr");
    tr.dataset.path = f.path;
    const name = el("td");
    if (f.kind === "folder") {
      name.append(folderButton(f.name + "/", f.path));
    } else if (f.kind === "file" || f.kind === "symlink") {
      const a = el("a", f.name);
      a.href = `${API}${path}/files/download?path=${encodeURIComponent(f.path)}`;
      a.setAttribute("download", f.name);
      name.append(a);
      if (f.kind === "symlink") name.append(el("span", " symlink", "muted small"));
    } else {
      name.append(el("span", f.name), el("span", " (FIFO, socket or device)", "muted small"));
    }
    tr.append(name, el("td", f.kind === "folder" ? "–" : size(f.size), "num"), el("td", ago(f.modified_at), "small"));
    return tr;
  }

  async function showFolder(target) {
    const mine = ++asked;
    folder = target;
    let view;
    try {
      view = await api(`${path}/files?path=${encodeURIComponent(target)}`);
    } catch (e) {
      if (mine === asked) filesNote.textContent = e.message;
      return;
    }
    if (mine !== asked) return;
    const parts = view.path ? view.path.split("/") : [];
    crumbs.replaceChildren(folderButton("workspace", ""));
    parts.forEach((part, i) => crumbs.append(el("span", " / "), folderButton(part, parts.slice(0, i + 1).join("/"))));
    files.replaceChildren(...view.entries.map(fileRow));
    filesNote.textContent = view.more ? `${view.more_exact ? "" : "at least "}${view.more} more not shown` :
      (view.entries.length ? "" : "This folder is empty.");
  }

  // The transcript is read whole once, then from its last turn on (that turn may still grow): a long session
  // is not sent again at each event. A restore marks earlier messages undone, so it reads it whole again.
  // Reads run one at a time; the events that arrive meanwhile make one more read, not one each.
  let shownTurn = 0;
  let wantWhole = true;
  let reading = null;
  let again = false;

  async function load() {
    const from = wantWhole ? 0 : shownTurn;
    const view = await api(path + (from ? `?messages_from_turn=${from}` : ""));
    showState(view.session);
    const fresh = view.messages.map(message);
    if (from) {
      for (const li of [...transcript.children]) if (Number(li.dataset.turn) >= from) li.remove();
      transcript.append(...fresh);
    } else {
      transcript.replaceChildren(...fresh);
      wantWhole = false;
    }
    if (view.messages.length) shownTurn = view.messages[view.messages.length - 1].turn;
  }

  function refresh(whole = false) {
    if (whole) wantWhole = true;
    if (reading) {
      again = true;
      return reading;
    }
    reading = (async () => {
      try {
        do {
          again = false;
          await load();
        } while (again);
      } finally {
        reading = null;
      }
    })();
    return reading;
  }

  function follow() {
    if (stream) stream.close();
    stream = new EventSource(`${API}${path}/stream?last_event_id=${cursor}`);
    for (const type of EVENT_TYPES) {
      stream.addEventListener(type, (m) => {
        const e = JSON.parse(m.data);
        // a reconnecting EventSource asks again from the URL's position: what this page has shown is skipped
        if (e.seq <= cursor) return;
        cursor = e.seq;
        showEvent(e);
        approvals.event(e);
        if (type.startsWith("turn.") && type !== "turn.started" && type !== "turn.queued") showTurn(e);
        if (type === "tool.output" || type === "text.delta") {
          live.hidden = false;
          live.textContent += e.data.text || "";
          live.scrollTop = live.scrollHeight;
        } else if (type === "turn.started") {
          live.textContent = "";
          live.hidden = false;
          refresh();
        } else if (type === "checkpoint.restored") {
          showFolder(folder);
          refresh(true);
        } else if (TURN_ENDS.has(type) || type === "status" || type === "phase") {
          if (TURN_ENDS.has(type)) live.hidden = true;
          if (TURN_ENDS.has(type) || type === "status") showFolder(folder); // a turn may have changed the workspace
          refresh();
        }
      });
    }
  }

  async function act(button, what, request) {
    button.disabled = true;
    notice.textContent = what + "…";
    try {
      const reply = await request();
      notice.textContent = reply.message || "Done.";
    } catch (e) {
      notice.textContent = e.message;
    }
    refresh();
  }

  document.getElementById("interrupt").addEventListener("click", (e) =>
    act(e.target, "Interrupting", () => api(path + "/interrupt", { method: "POST" })));
  const tool = (name, body) => api("/tools/" + name, {
    method: "POST", body: JSON.stringify({ session_id: sid, ...body }), headers: { "Content-Type": "application/json" },
  });
  const approvals = approvalPanel(document.getElementById("approvals"), (body) => tool("answer_approval", body));
  document.getElementById("pause").addEventListener("click", (e) =>
    act(e.target, "Pausing", () => tool("pause_session", {}).then(() => ({ message: "Paused: a message resumes it." }))));
  document.getElementById("fork").addEventListener("click", (e) =>
    act(e.target, "Forking", async () => {
      const fork = await tool("fork_session", { wait_s: 50 });
      location.href = "/ui/sessions/" + encodeURIComponent(fork.id);
      return { message: "Forked as " + fork.id };
    }));
  document.getElementById("close").addEventListener("click", (e) => {
    if (confirm("Close this session? Its sandbox is freed; the transcript stays.")) {
      act(e.target, "Closing", () => api(path + "/close", { method: "POST" }));
    }
  });
  document.getElementById("send").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = e.target.elements.text.value;
    if (!text.trim()) return;
    act(e.target.querySelector("button"), "Sending", () =>
      api(path + "/messages?wait_s=0", {
        method: "POST", body: JSON.stringify({ text }), headers: { "Content-Type": "application/json" },
      })).then(() => { e.target.elements.text.value = ""; });
  });

  refresh()
    .then(() => { showFolder(""); follow(); }) // from the first event: the turns table is made from their ends
    .catch((e) => { state.textContent = e.message; });
}

const page = document.body.dataset.page;
if (page === "sessions") sessionsPage();
if (page === "session") sessionPage();
