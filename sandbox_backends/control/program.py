"""The control shell: the program that runs commands and serves files inside a sandbox, as root.

Not a module: a driver sends this file's text, with "@TURN@" filled in by `build_control_code`, into
`python3 -I -S -c CONTROL_BOOT mcp-sessions-control STATE_DIR WORKSPACE` run as root (see this package's
docstring for the protocol). It keeps to what it needs of root: CAP_SETUID and CAP_SETGID to start
commands as the sandbox user and to touch workspace files with that user's rights, CAP_KILL to stop
them. Its folder and files are root's, so nothing the sandbox user runs can read or change them, write
into its stdout, or answer for it. It imports only what a new container loads quickly: builtins and
os/select/signal (ctypes once a file is read or written). Long because it is sent and run as one
program, with nothing to import beside it.
"""

import _thread
import errno
import marshal
import os
import select
import signal
import stat
import sys
import time

if __name__ != "__main__":
    raise ImportError("program.py runs inside a sandbox (see sandbox_backends/control); it is not a module")

MARK, DIR, WS = sys.argv[1], sys.argv[2], sys.argv[3]
TURN = "@TURN@"
PID_FILE, STATE_FILE, TURN_FILE, BASH_COPY = "run.pid", "state.sh", "turn.sh", "bash"
GRACE = 0.3
CHUNK = "@CHUNK@"  # the most output one frame carries: the server refuses larger ones
READ_LIMIT_S = 4.0
"""The longest a file read may take in here before it is given up with an error. (Only regular files are
read, opened without blocking: a FIFO cannot hold the control shell up; the limit is for a slow disk.)
Reads are served on the main loop, which answers no ping meanwhile, and the server drops a connection
whose ping goes unanswered 6 s after its last frame: a slow read ends in this error, not a lost connection."""
ME = os.getpid()
DEVNULL = os.open(os.devnull, os.O_RDWR)
os.umask(0o022)
wlock = _thread.allocate_lock()


class Worker:
    """A thread that can be waited for. (The control shell imports nothing it can do without: in a new
    container json, subprocess and threading took 18 ms of its 40 ms start.)"""

    def __init__(self, fn, *args):
        self.done = _thread.allocate_lock()
        self.done.acquire()

        def run():
            try:
                fn(*args)
            finally:
                self.done.release()

        try:
            _thread.start_new_thread(run, ())
        except BaseException:
            self.done.release()
            raise

    def is_alive(self):
        return self.done.locked()


ESCAPES = {i: "\\u%04x" % i for i in range(32)}
ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def dumps(v):
    """JSON for the replies (what the server parses is JSON; what it sends here is marshal)."""
    if isinstance(v, str):
        return '"' + v.translate(ESCAPES) + '"'
    if v is None or v is True or v is False:
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "null"
    if isinstance(v, dict):
        return "{" + ",".join(dumps(str(k)) + ":" + dumps(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(dumps(x) for x in v) + "]"
    return dumps(str(v))


gone = [False]
"""The server's end of stdout is gone: nothing more is sent (a run still going is seen to its end)."""


def send(kind, payload):
    data = memoryview(kind + len(payload).to_bytes(4, "big") + payload)
    with wlock:
        try:
            while data and not gone[0]:
                data = data[os.write(1, data) :]
        except OSError:
            gone[0] = True


def reply(req, **kw):
    kw["req"] = req
    send(b"J", dumps(kw).encode("utf-8", "backslashreplace"))  # a lone surrogate becomes a \udcXX escape


def data_frame(kind, req, data):
    r = req.encode()
    send(kind, bytes([len(r)]) + r + data)


def path(name):
    return os.path.join(DIR, name)


def unlink(name):
    try:
        os.unlink(path(name))
    except OSError:
        pass


def write_whole(name, data, mode=0o600):
    """Write a file of the folder so that a reader sees the old one or the new one, never half (the
    temporary name is this control shell's: another one may write the same file at the same time)."""
    tmp = "%s.tmp%d" % (name, ME)
    fd = os.open(path(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(path(tmp), path(name))


def unnamed_file(name):
    """A file of the folder that no other process can open by name: made, opened and unlinked at once (the
    folder is root's, mode 0711). Not O_TMPFILE, which gVisor's tmpfs does not offer."""
    fd = os.open(path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.unlink(path(name))
    return fd


def read_all(fd):
    parts, offset = [], 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


# -- processes, by what the kernel knows of them -------------------------------------------------


def stat_of(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(b")") + 2 :].split()


def starttime(pid):
    """When the process started (clock ticks since boot): with the pid, it names one process for good."""
    st = stat_of(pid)
    return int(st[19]) if st is not None and len(st) > 19 else None


def alive(pid, start=None):
    st = stat_of(pid)
    if st is None or st[0] in (b"Z", b"X"):
        return False
    return start is None or (len(st) > 19 and int(st[19]) == start)


def real_uid(pid):
    """The real uid (a process cannot change it to root's without privileges no command has)."""
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def kill_others():
    """SIGKILL every process of the sandbox user, until none is left: everything that is not root's
    (init, the keepalive, control shells) but this control shell's idle standby."""
    for _ in range(100):
        keep = {sh.pid for sh in list(standbys)}
        victims = [p for p in pids() if p not in keep and alive(p) and real_uid(p) not in (0, None)]
        if not victims:
            return
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


# -- limits a command may find used up -------------------------------------------------------------

EXHAUSTED_S = 1.0
"""How long the sandbox may stay at its process limit while a command runs before the command is stopped
as one that cannot run: bash retries a fork that fails for about 15 s, and then exits 254, saying nothing
a caller could act on. (At the limit a fork fails at once: a second there is not a command that is busy.)"""
pids_files = []
watching = [0.0, None]
"""When the process use is looked at next, and since when the sandbox has been at its limit (or None)."""


def process_use():
    """(processes, limit) of the sandbox now: its pids cgroup (v1 or v2), else (gVisor, which keeps the limit as
    the sandbox user's RLIMIT_NPROC) that user's processes against it; None where no limit is known."""
    if not pids_files:
        for folder in ("/sys/fs/cgroup/pids/", "/sys/fs/cgroup/"):
            try:
                pids_files.append((os.open(folder + "pids.current", os.O_RDONLY), os.open(folder + "pids.max", os.O_RDONLY)))
                break
            except OSError:
                continue
        else:
            pids_files.append(None)
    try:
        if pids_files[0] is not None:
            most = os.pread(pids_files[0][1], 64, 0).strip()
            return None if most == b"max" else (int(os.pread(pids_files[0][0], 64, 0)), int(most))
        import resource  # only here (gVisor): the control shell's start imports nothing it can do without

        most = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if most == resource.RLIM_INFINITY or user[0] is None:
            return None
        return sum(1 for p in pids() if real_uid(p) == user[0][0]), most
    except (OSError, ValueError, IndexError):
        return None


def watch_limits():
    """While a command runs: one that stays at the process limit (forks fail: it cannot run) is stopped, and
    its result says so."""
    sh = current[0]
    now = time.monotonic()
    if sh is None or sh.exhausted is not None:
        watching[1] = None
        return
    if now < watching[0]:
        return
    watching[0] = now + 0.2
    use = process_use()
    if use is None or use[0] < use[1]:
        watching[1] = None
    elif watching[1] is None:
        watching[1] = now
    elif now - watching[1] >= EXHAUSTED_S:
        sh.exhausted = {"limit": "pids", "used": use[0], "max": use[1]}
        killpg(sh.pid, signal.SIGKILL)


def full_places():
    """The writable places with no room left (under 1 MiB): [{"place": "tmp" or "workspace", "mb": size}]."""
    found = []
    for place, where in (("tmp", "/tmp"), ("workspace", WS)):
        try:
            st = os.statvfs(where)
        except OSError:
            continue
        if st.f_blocks and st.f_bavail * st.f_frsize < (1 << 20):
            found.append({"place": place, "mb": st.f_blocks * st.f_frsize >> 20})
    return found


def group_alive(pgid):
    for p in pids():
        st = stat_of(p)
        if st is not None and len(st) > 2 and st[2] == str(pgid).encode() and st[0] not in (b"Z", b"X"):
            return True
    return False


def killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


oom_file = []


def oom_kills():
    """How many processes the kernel's OOM killer has killed in this sandbox (its memory cgroup, v2 or v1)."""
    if not oom_file:
        for name in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
            try:
                oom_file.append(os.open(name, os.O_RDONLY))
                break
            except OSError:
                continue
        else:
            oom_file.append(None)
    if oom_file[0] is None:
        return 0
    try:
        for line in os.pread(oom_file[0], 4096, 0).split(b"\n"):
            key, _, value = line.partition(b" ")
            if key == b"oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


# -- setting up: privileges, the sandbox user, the turn shell ------------------------------------


def capabilities():
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def runs_unreadable(program):
    """Whether a user who may not read `program` (execute-only) can run it: Linux lets it, gVisor does not."""
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(DEVNULL, 1)
            os.dup2(DEVNULL, 2)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.execve(program, ["bash", "-c", ":"], {})
        finally:
            os._exit(127)
    return os.waitpid(pid, 0)[1] == 0


def setup():
    """Check the privileges and the folder this needs, and install the turn shell: an error message, or None."""
    needed = (1 << 5) | (1 << 6) | (1 << 7)  # CAP_KILL, CAP_SETGID, CAP_SETUID
    if os.geteuid() != 0 or capabilities() & needed != needed:
        return "its control shell runs without the privileges it needs (root with CAP_SETUID, CAP_SETGID and CAP_KILL)"
    st = os.stat(DIR)
    if st.st_uid != 0 or st.st_mode & 0o022:
        return "its state folder %s is not root's alone" % DIR
    try:
        with open(path(TURN_FILE)) as f:
            same = f.read() == TURN
    except OSError:
        same = False
    if not same:
        write_whole(TURN_FILE, TURN.encode(), 0o644)
    if not os.path.exists(path(BASH_COPY)):
        found = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p and os.access(p + "/bash", os.X_OK)]
        if not found:
            return "its image has no bash"
        with open(found[0] + "/bash", "rb") as f:
            write_whole(BASH_COPY, f.read(), 0o111)  # execute-only: the kernel makes what runs it non-dumpable
        if not runs_unreadable(path(BASH_COPY)):
            # gVisor reads what it runs with the caller's rights: there the copy is readable, and what keeps
            # other processes of the user from a turn shell is gVisor's Yama ptrace scope (1: descendants only).
            os.chmod(path(BASH_COPY), 0o555)
    for name in os.listdir(DIR):  # what a control shell that was killed left: its standbys' files, a half write
        owner = name[3:].split("-")[0] if name.startswith("cmd") else name.rpartition(".tmp")[2]
        if owner.isdigit() and int(owner) != ME and not alive(int(owner)):
            unlink(name)
    return None


user = [None]
"""(uid, gid, groups) of the sandbox user, as the first hello names it."""


def entries(name):
    """The lines of /etc/passwd or /etc/group, split at ":" (those with at least four fields)."""
    try:
        with open(name) as f:
            return [fields for fields in (line.rstrip("\n").split(":") for line in f) if len(fields) > 3]
    except OSError:
        return []


def resolve_user(spec):
    """uid, gid and supplementary groups of `spec` ("uid:gid", "uid", "name" or "name:group"), as docker resolves them."""
    name, _, group = str(spec).partition(":")
    passwd = {f[0]: (int(f[2]), int(f[3])) for f in entries("/etc/passwd") if f[2].isdigit() and f[3].isdigit()}
    groups = {f[0]: (int(f[2]), f[3].split(",")) for f in entries("/etc/group") if f[2].isdigit()}
    if name.isdigit():
        uid = int(name)
        login = next((n for n, (u, _) in passwd.items() if u == uid), None)
        gid = passwd[login][1] if login else uid
    elif name in passwd:
        login, (uid, gid) = name, passwd[name]
    else:
        raise ValueError("no user %r in the image" % name)
    if group:
        if group.isdigit():
            gid = int(group)
        elif group in groups:
            gid = groups[group][0]
        else:
            raise ValueError("no group %r in the image" % group)
    if uid == 0:
        raise ValueError("commands may not run as root")
    extra = sorted({g for g, members in groups.values() if login and login in members} | {gid})
    return uid, gid, extra


def workspace_writable():
    uid, _, extra = user[0]
    st = os.stat(WS)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o200)
    if st.st_gid in extra:
        return bool(st.st_mode & 0o020)
    return bool(st.st_mode & 0o002)


# -- turn shells: a standby started ahead, then the command it runs --------------------------------

STANDBYS = 2
"""Shells kept started ahead: with two, commands sent back to back find one ready while the next starts."""
standbys = []
wanted = [None]
"""The environment standbys are started with (hello's, then each command's); None before hello."""
quiet_until = [0.0]
last_busy = [0.0]
"""When the last request came in or the last result went out (monotonic)."""
QUIET_S = 0.03
spawned = [0]
UNSET_ENV = ("BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS")
"""Variables bash would act on at start, before the turn shell's own code: the state restores them if a command set them."""


class Shell:
    """A turn shell (turn.py): a standby until it is handed a run, then that run's command."""

    def __init__(self, env):
        spawned[0] += 1
        self.tok = "cmd%d-%d" % (ME, spawned[0])
        """Names its script (TOK.sh) and the file it saves its state to (TOK.state)."""
        self.env = env
        self.run = None
        self.status = None
        self.result = None
        """(exit code, OOM kills) once it ended, as recorded."""
        self.exhausted = None
        """The limit that stopped its command ({"limit": "pids", "used", "max"}), if one did."""
        self.state = None
        """The state it was given to restore: a save that is the same is not written again."""
        self.out = self.saved = self.given = self.go = None
        try:
            self.out = os.open(path(self.tok + ".out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            self.saved = os.open(path(self.tok + ".state"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self.given = unnamed_file(self.tok + ".given")  # readable by the shell through fd 5, by nobody else
            go_r, self.go = os.pipe()
        except OSError:
            self.close()
            raise
        uid, gid, groups = user[0]
        argv = ["bash", "-c", ". " + path(TURN_FILE), "bash", DIR, self.tok]
        env = {k: v for k, v in env.items() if k not in UNSET_ENV}
        plan = [(DEVNULL, 0), (DEVNULL, 1), (DEVNULL, 2), (go_r, 3), (self.given, 5), (self.out, 252), (self.saved, 254)]
        try:
            self.pid = os.fork()
            if self.pid == 0:
                child(plan, uid, gid, groups, argv, env)
        except OSError:
            self.close()
            raise
        finally:
            os.close(go_r)
        self.start = starttime(self.pid)

    def files(self, run):
        """Name its output file after the run it is handed (others find a run's output and exit code by its id)."""
        os.replace(path(self.tok + ".out"), path(run + ".out"))

    def close(self):
        """Let it go: an idle one reads EOF and exits (reap() collects it)."""
        for name in ("go", "out", "saved", "given"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        if self.run is None:
            unlink(self.tok + ".out")
            unlink(self.tok + ".state")
            unlink(self.tok + ".sh")


def child(plan, uid, gid, groups, argv, env):
    """In the forked child: the descriptors in place, a session of its own, the sandbox user, bash."""
    try:
        for i, (src, _) in enumerate(plan):
            os.dup2(src, 300 + i)
        for i, (_, dst) in enumerate(plan):
            os.dup2(300 + i, dst)
        os.closerange(300, 300 + len(plan))
        os.setsid()
        try:  # the OOM killer takes a command's process before the control shell (lowering it needs privileges)
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("500")
        except OSError:
            pass
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; commands expect the defaults
            signal.signal(sig, signal.SIG_DFL)
        os.execve(path(BASH_COPY), argv, env)
    finally:
        os._exit(127)


def take_standby(env):
    wanted[0] = env
    while standbys:
        sh = standbys.pop(0)
        if sh.env == env and sh.status is None:
            return sh
        sh.close()
    return Shell(env)


def refill_due(now):
    """When the next standby should be started: None if none is wanted. Starting a bash takes about a
    millisecond of CPU, which the server wants while it takes a result in: with no standby left, not
    before the server acknowledged the last result; with one left, only once all has been quiet a while."""
    if wanted[0] is None or closing[0] or len(standbys) >= STANDBYS:
        return None
    if standbys:
        return max(now, last_busy[0] + QUIET_S)
    return max(now, quiet_until[0])


def refill():
    """Start one more shell ahead (in the main thread: fork must run where signal handlers may be set)."""
    try:
        standbys.append(Shell(wanted[0]))
    except OSError:
        quiet_until[0] = time.monotonic() + 1.0  # out of processes, say: try again later


def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        sh = current[0]
        if sh is not None and sh.pid == pid:
            finish(sh, status)
        for t in [t for t in terminals.values() if t.pid == pid]:
            terminal_ended(t, status)
        for sh in [sh for sh in standbys if sh.pid == pid]:  # killed (a `stop`), or bash did not start
            sh.status = status
            sh.close()
            standbys.remove(sh)
            quiet_until[0] = time.monotonic() + 0.2


# -- shell state -------------------------------------------------------------------------------

SPECIAL = frozenset(
    name.encode()
    for name in (
        "_", "COLUMNS", "LINES", "EPOCHREALTIME", "EPOCHSECONDS", "EUID", "FUNCNAME", "GROUPS", "HISTCMD", "HOSTTYPE",
        "LINENO", "MACHTYPE", "OSTYPE", "PIPESTATUS", "PPID", "PWD", "RANDOM", "SECONDS", "SHELLOPTS", "SHLVL",
        "SRANDOM", "UID", "DIRSTACK", "COMP_WORDBREAKS",
    )
)  # fmt: skip
"""Variables of bash's own (with those starting BASH and the turn shell's __sbx_): not carried."""
KEPT_OFF = frozenset(("noexec", "onecmd"))
"""Options that would stop the next shell before it ran its command: not carried."""


def compose_state(raw):
    """What the next turn shell restores, from what the last one saved (turn.py): bytes, or None if the save
    was not whole. Saved on exit: as is. Saved after the command: its variables without bash's own, and
    only the options that changed, `errexit` last so that nothing after it can end the restore."""
    if not raw.endswith(b"\n#complete\n"):
        return None
    text = raw[: -len(b"#complete\n")]
    head, marker, rest = text.rpartition(b"\n#vars\n")
    if not marker:
        return text
    var_lines, _, opts = rest.rpartition(b"#opts ")
    kept = []
    for line in var_lines.split(b"\n"):  # `declare -FLAGS NAME[=VALUE]`, a line each (values are quoted)
        space = line.find(b" ", 9)
        if not line.startswith(b"declare -") or space < 0:
            continue
        equals = line.find(b"=", space)
        name = line[space + 1 : equals if equals >= 0 else len(line)]
        if name not in SPECIAL and not name.startswith((b"BASH", b"__sbx_")):
            kept.append(line)
    lists = [set(x.split(":")) - {""} for x in opts.decode("latin-1").rstrip("\n").split(" ")]
    changes = []
    if len(lists) == 4:
        was_set, was_shopt, now_set, now_shopt = lists
        changes += ["set -o " + o for o in sorted(now_set - was_set - KEPT_OFF) if o != "errexit"]
        changes += ["set +o " + o for o in sorted(was_set - now_set)]
        changes += ["shopt -s " + o for o in sorted(now_shopt - was_shopt)]
        changes += ["shopt -u " + o for o in sorted(was_shopt - now_shopt)]
        if "errexit" in now_set - was_set:
            changes.append("set -o errexit")
    block = ("{ " + "; ".join(changes) + "; } || :\n").encode() if changes else b""
    return head + b"\n" + b"\n".join(kept) + b"\n" + block


def given_state():
    try:
        with open(path(STATE_FILE), "rb") as f:
            return f.read()
    except OSError:
        return b""


# -- runs --------------------------------------------------------------------------------------

current = [None]
"""The shell running this control shell's command, until it is reaped."""
closing = [False]
"""The server's end of stdin is closed: exit once the command (if any) has ended and been recorded."""
followers = []


def current_run():
    """What run.pid says: (shell pid, its start, run id, owner's pid, owner's start, OOM kills at the start,
    the shell's token)."""
    try:
        with open(path(PID_FILE)) as f:
            fields = f.read().split()
        return (int(fields[0]), int(fields[1]), fields[2], int(fields[3]), int(fields[4]), int(fields[5]), fields[6])
    except (OSError, ValueError, IndexError):
        return None


def read_rc(run):
    """(exit code or None, OOM kills) as the control shell that ran it recorded, or None before that."""
    try:
        with open(path(run + ".rc")) as f:
            rc, oom = f.read().split()
        return (None if rc == "-" else int(rc)), int(oom)
    except (OSError, ValueError):
        return None


def run_active(cur):
    """Running: no exit code recorded, its output not cleaned up, and its shell (or the control shell that
    records its exit code) alive."""
    pid, start, run, owner, owner_start, _, _ = cur
    return read_rc(run) is None and os.path.exists(path(run + ".out")) and (alive(pid, start) or alive(owner, owner_start))


def cleanup(run):
    """Remove a run's files: the output before the exit code, so another control shell never sees a finished
    run without either (see run_active)."""
    cur = current_run()
    if cur is not None and cur[2] == run:
        unlink(PID_FILE)
        unlink(cur[6] + ".sh")
        unlink(cur[6] + ".state")
    for suffix in (".out", ".rc", ".interrupted"):
        unlink(run + suffix)


def finish(sh, status):
    """The shell of this control shell's run ended: record its state, then its exit code (whole, in that
    order: whoever sees the exit code finds the state in force)."""
    sh.status = status
    current[0] = None
    rc = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    state = compose_state(read_all(sh.saved))
    if state is not None and state != sh.state:
        write_whole(STATE_FILE, state)
    sh.result = (rc, max(0, oom_kills() - sh.oom0))
    write_whole(sh.run + ".rc", ("%d %d\n" % sh.result).encode())
    sh.close()
    unlink(sh.tok + ".state")
    unlink(sh.tok + ".sh")


class Follower:
    def __init__(self, req, run, fd, shell=None, cur=None):
        self.req, self.run, self.fd, self.shell, self.cur, self.sent = req, run, fd, shell, cur, 0
        self.announce = False
        self.t0 = time.monotonic()
        self.trimmed = 0


def start_run(req, msg):
    run = msg["run"]
    if terminals:
        reply(req, error="busy", message="A person's terminal is open in this sandbox (mcp-sessions attach).")
        return
    cur = current_run()
    if cur is not None:
        if run_active(cur):
            reply(req, error="busy", message="A command is already running in this sandbox.")
            return
        cleanup(cur[2])
    script = msg["script"].encode("utf-8", "surrogateescape")
    env = dict(os.environ)
    env.update(msg.get("env") or {})
    state = given_state()
    for attempt in (0, 1):
        sh = None
        try:
            sh = take_standby(env)
            write_whole(sh.tok + ".sh", script, 0o644)
            sh.files(run)
            sh.run = run
            os.pwrite(sh.given, state, 0)
            os.ftruncate(sh.given, len(state))
            sh.state = state
            sh.oom0 = oom_kills()
            record = (sh.pid, sh.start, run, ME, MY_START, sh.oom0, sh.tok)
            write_whole(PID_FILE, ("%d %d %s %d %d %d %s\n" % record).encode())
            current[0] = sh
            os.write(sh.go, b"g")  # the shell restores the state and runs the command
            os.close(sh.go)
            sh.go = None
            break
        except OSError as e:
            current[0] = None
            if sh is not None:  # it died before it got the run: the next one takes over the output's name
                sh.run = None
                sh.close()
            if attempt:
                cleanup(run)
                use = process_use()
                if e.errno == errno.EAGAIN and use is not None and use[0] >= use[1]:  # the command cannot run: say why
                    exhausted = {"limit": "pids", "used": use[0], "max": use[1]}
                    reply(req, ev="exit", run=run, rc=None, oom=0, interrupted=False, bytes=0, exhausted=exhausted)
                    return
                reply(req, error="spawn", message="Cannot start the command: %s." % (e.strerror or e))
                return
    f = Follower(req, run, os.open(path(run + ".out"), os.O_RDONLY), shell=sh)
    f.announce = True  # "started" goes out only if the command outlives the first poll
    followers.append(f)


def follow(req, msg):
    cur = current_run()
    run = msg.get("run") or (cur[2] if cur else None)
    try:
        fd = os.open(path(run + ".out"), os.O_RDONLY) if run else None
    except OSError:
        fd = None
    if fd is None:
        reply(req, ev="none", run=run)
        return
    offset = int(msg.get("offset") or 0)
    os.lseek(fd, offset, os.SEEK_SET)
    mine = cur is not None and cur[2] == run
    f = Follower(req, run, fd, cur=cur if mine else None)
    f.sent = offset
    reply(req, ev="following", run=run, pid=cur[0] if mine else 0, running=bool(mine and run_active(cur)))
    followers.append(f)


def stop(req, mark, background=False):
    """Stop the running command and everything of the sandbox user's; with none running, `background` (an
    interrupt) still stops what earlier commands left running."""
    cur = current_run()
    if cur is None or not run_active(cur):
        if background:
            kill_others()
        reply(req, ok=True, was_running=False, run=cur[2] if cur else None)
        return
    pid, start, run = cur[0], cur[1], cur[2]
    if mark:
        os.close(os.open(path(run + ".interrupted"), os.O_WRONLY | os.O_CREAT, 0o600))
    if alive(pid, start):
        for sig in (signal.SIGINT, signal.SIGTERM):
            killpg(pid, sig)
            end = time.monotonic() + GRACE
            while time.monotonic() < end and alive(pid, start):
                time.sleep(0.005)
            if not alive(pid, start):
                break
        killpg(pid, signal.SIGKILL)
    kill_others()
    end = time.monotonic() + GRACE
    while time.monotonic() < end and group_alive(pid):
        time.sleep(0.005)
    reply(req, ok=True, was_running=True, run=run)


fallocate = []  # loaded on first use: importing ctypes costs more than most commands


def load_fallocate():
    if not fallocate:
        fn = None
        if libc() is not None:
            fn = libc().fallocate
            fn.argtypes = [ctypes_mod[0].c_int, ctypes_mod[0].c_int, ctypes_mod[0].c_longlong, ctypes_mod[0].c_longlong]
        fallocate.append(fn)
    return fallocate[0]


PUNCH_HOLE = 0x03  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
KEEP_HEAD, KEEP_BEHIND, TRIM_STEP = 1 << 20, 16 << 20, 32 << 20


def trim(f):
    """Free the middle of a long output file once it has been sent: it lives on the sandbox's /run."""
    start = max(f.trimmed, KEEP_HEAD)
    end = (f.sent - KEEP_BEHIND) & ~0xFFFF
    if end - start < TRIM_STEP or load_fallocate() is None:
        return
    try:
        wfd = os.open(path(f.run + ".out"), os.O_WRONLY)
    except OSError:
        return
    try:
        if load_fallocate()(wfd, PUNCH_HOLE, start, end - start) == 0:
            f.trimmed = end
        else:
            f.trimmed = 1 << 62  # not supported here: stop trying
    finally:
        os.close(wfd)


def pump(f, limit):
    sent = 0
    while limit is None or sent < limit:
        data = os.read(f.fd, CHUNK)
        if not data:
            break
        f.sent += len(data)
        sent += len(data)
        data_frame(b"O", f.req, data)
    trim(f)


def finished(f):
    """The run's result, once it is over: (exit code or None, OOM kills); None while it runs."""
    if f.shell is not None:
        return f.shell.result
    got = read_rc(f.run)
    if got is not None:
        return got
    cur = f.cur
    if cur is None:
        return (None, 0)
    pid, start, _, owner, owner_start, oom0, _ = cur
    if alive(owner, owner_start):
        return None
    if alive(pid, start):  # nobody left to record its exit code: stop it
        killpg(pid, signal.SIGKILL)
    return (None, max(0, oom_kills() - oom0))


def pump_all():
    for f in list(followers):
        result = finished(f)
        if result is None:
            if f.announce and time.monotonic() - f.t0 > 0.015:
                f.announce = False
                reply(f.req, ev="started", run=f.run, pid=f.shell.pid)
            pump(f, 8 * CHUNK)
            continue
        end = os.fstat(f.fd).st_size
        while f.sent < end:
            data = os.read(f.fd, min(CHUNK, end - f.sent))
            if not data:
                break
            f.sent += len(data)
            data_frame(b"O", f.req, data)
        os.close(f.fd)
        followers.remove(f)
        interrupted = os.path.exists(path(f.run + ".interrupted"))
        exhausted = f.shell.exhausted if f.shell is not None else None
        full = full_places() if result[0] else []  # a command that failed for want of room: say where
        reply(
            f.req,
            ev="exit",
            run=f.run,
            rc=result[0],
            oom=result[1],
            interrupted=interrupted,
            bytes=f.sent,
            exhausted=exhausted,
            full=full,
        )
        if f.shell is not None:
            quiet_until[0] = last_busy[0] = time.monotonic()
            quiet_until[0] += 0.05  # until the server acknowledges (see refill_due)


# -- files, with the sandbox user's rights -------------------------------------------------------

ctypes_mod = []
libc_lock = _thread.allocate_lock()


def libc():
    with libc_lock:
        if not ctypes_mod:
            try:
                import ctypes

                ctypes_mod.append(ctypes)
                ctypes_mod.append(ctypes.CDLL(None, use_errno=True))
            except Exception:
                ctypes_mod.extend((None, None))
    return ctypes_mod[1]


class AsUser:
    """This thread's file system uid and gid set to the sandbox user's (setfsuid is per thread): what it
    opens, makes and resolves is what that user could, and what it makes is that user's."""

    def __enter__(self):
        lib = libc()
        uid, gid, _ = user[0]
        lib.setfsgid(gid)
        lib.setfsuid(uid)
        if lib.setfsuid(-1) != uid:  # it answers the current one
            raise OSError(1, "cannot take the sandbox user's file rights")
        return self

    def __exit__(self, *exc):
        libc().setfsuid(0)
        libc().setfsgid(0)


fsuid = []
"""[True] where this kernel has setfsuid (Linux); [False] where it does not (gVisor), or without ctypes."""


def as_user(fn, *args):
    """`fn(*args)` with the sandbox user's file rights; it returns (an open descriptor or None, a marshal-able
    value). With setfsuid, in this thread; without, in a child process of that user, which hands back the
    descriptor over a socket (SCM_RIGHTS) and the value beside it: the same rights, a fork dearer."""
    if not fsuid:
        lib = libc()
        fsuid.append(lib is not None and lib.setfsuid(-1) == 0)
    if fsuid[0]:
        with AsUser():
            return fn(*args)
    import socket  # only here: the control shell's start imports nothing it can do without

    mine, theirs = socket.socketpair()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                # Nothing of the control shell's may stay open once this is the sandbox user's process: under
                # gVisor others of that user can open its descriptors through /proc (the control stream!).
                for fd in (0, 1, 2):
                    os.dup2(DEVNULL, fd)
                for name in os.listdir("/proc/self/fd"):
                    if int(name) > 2 and int(name) != theirs.fileno():
                        try:
                            os.close(int(name))
                        except OSError:
                            pass
                uid, gid, groups = user[0]
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                try:
                    fd, value = fn(*args)
                    answer, fds = (None, value), [] if fd is None else [fd]
                except OSError as e:
                    answer, fds = (e.errno, e.strerror or str(e)), []
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(__import__("array").array("i", fds))))]
                theirs.sendmsg([marshal.dumps(answer)], rights if fds else [])
            finally:
                os._exit(0)
        theirs.close()
        data, ancillary, _flags, _addr = mine.recvmsg(1 << 16, socket.CMSG_SPACE(4))
    finally:
        mine.close()
        try:
            theirs.close()
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # the main loop's reap() took it
    fd = None
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(raw) >= 4:
            fd = int.from_bytes(raw[:4], sys.byteorder, signed=True)
    if not data:
        raise OSError(5, "the process that opens files as the sandbox user ended without an answer")
    errno, value = marshal.loads(data)
    if errno is not None:
        raise OSError(errno, value)
    return fd, value


def inside(p):
    if "\0" in p:
        return None
    full = os.path.realpath(p if os.path.isabs(p) else os.path.join(WS, p))
    if full != WS and not full.startswith(WS + "/"):
        return None
    return full


def opened_inside(fd):
    """Whether the file opened is inside the workspace: a folder swapped for a symlink after `inside` would lead out."""
    try:
        where = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return False
    return where == WS or where.startswith(WS + "/")


KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def file_error(req, e):
    if e.errno == errno.ENXIO:  # a FIFO opened for writing, non-blocking, with no reader
        reply(req, error="not_regular", kind=KINDS[stat.S_IFIFO])
        return
    kind = {2: "not_found", 21: "is_dir", 20: "not_dir", 40: "not_allowed", 13: "denied"}.get(e.errno, "os")
    reply(req, error=kind, message=e.strerror or str(e))


def open_inside(name, flags, writing):
    """(descriptor, None) of a workspace file opened without blocking or following a last symlink (run with the
    sandbox user's rights, by `as_user`; `writing` makes its folders); (None, None) for a path that leads out of
    the workspace (or, to write, is the workspace)."""
    full = inside(name)
    if full is None or (writing and full == WS):
        return None, None
    if writing:
        os.makedirs(os.path.dirname(full), exist_ok=True)
    return os.open(full, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW, 0o644), None


def checked_regular(req, fd):
    """`fd` if it is a regular file inside the workspace; else closed, the reason replied, and None."""
    st = os.fstat(fd)
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG and opened_inside(fd):
        return fd
    os.close(fd)
    if kind == stat.S_IFDIR:
        reply(req, error="is_dir", message="is a directory")
    elif kind != stat.S_IFREG:
        reply(req, error="not_regular", kind=KINDS.get(kind, "not a regular file"))
    else:
        reply(req, error="not_allowed")
    return None


def read_file(req, msg):
    limit = int(msg["max"])
    deadline = time.monotonic() + READ_LIMIT_S
    parts, size = [], 0
    try:
        fd, _ = as_user(open_inside, msg["path"], os.O_RDONLY, False)
        if fd is None:
            reply(req, error="not_allowed")
            return
        fd = checked_regular(req, fd)
        if fd is not None:
            try:
                while size <= limit:  # the limit holds while reading: a file may grow after any stat
                    if time.monotonic() > deadline:
                        reply(req, error="timeout", seconds=READ_LIMIT_S)
                        return
                    chunk = os.read(fd, min(CHUNK, limit + 1 - size))
                    if not chunk:
                        break
                    parts.append(chunk)
                    size += len(chunk)
            finally:
                os.close(fd)
    except OSError as e:
        file_error(req, e)
        return
    if fd is None:
        return
    if size > limit:
        reply(req, error="too_big", size=size)
        return
    data_frame(b"D", req, b"".join(parts))


def write_file(req, msg, payload):
    try:
        fd, _ = as_user(open_inside, msg["path"], os.O_WRONLY | os.O_CREAT, True)
        if fd is None:
            reply(req, error="not_allowed")
            return
        fd = checked_regular(req, fd)
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as e:
        file_error(req, e)
        return
    reply(req, ok=True, size=len(payload))


# -- a person's terminal: an interactive bash on a PTY, as the sandbox user -----------------------

TERMINAL_RC = b"""
PS1='(sandbox) \\w\\$ '
\\builtin trap '{ \\builtin export -p; \\builtin declare -f; \\builtin alias -p; \\builtin printf "cd -- %q\\n" "$PWD"; \\builtin echo "#complete"; } >&254 2>/dev/null' EXIT
\\builtin exec 5<&-
"""
"""Run after the saved state, as the terminal's rc file: a prompt that says where it is, and on exit the state
saved the way a turn shell saves it when its command ends the shell (exported variables, functions,
aliases, cwd), which the next command restores."""
terminals = {}
"""The open terminal (at most one) by the id of its `attach` request."""


class Terminal:
    def __init__(self, req, pid, master, saved, tok):
        self.req, self.pid, self.master, self.saved, self.tok = req, pid, master, saved, tok
        self.open = True
        """Its output is still read (the PTY has not reported the end)."""


def winsize(fd, rows, cols):
    import fcntl
    import termios

    size = b"".join(max(1, min(int(n), 1000)).to_bytes(2, sys.byteorder) for n in (rows, cols)) + bytes(4)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


def terminal_child(slave, given, saved, env):
    """In the forked child: a session whose controlling terminal is the PTY, the state to restore on fd 5, the
    state file on fd 254, the sandbox user, an interactive bash."""
    try:
        import fcntl
        import termios

        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for src, dst in ((slave, 300), (given, 301), (saved, 302)):
            os.dup2(src, dst)
        for src, dst in ((300, 0), (300, 1), (300, 2), (301, 5), (302, 254)):
            os.dup2(src, dst)
        os.closerange(300, 303)
        uid, gid, groups = user[0]
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(path(BASH_COPY), ["bash", "--rcfile", "/dev/fd/5", "-i"], env)
    finally:
        os._exit(127)


def open_terminal(req, msg):
    """`attach {rows, cols, env}`: `open`, the terminal's output as O frames, then `exit {rc}` once its bash has
    ended and its state is saved for the next command. Refused while a command runs (and commands while it is open)."""
    cur = current_run()
    if terminals or (cur is not None and run_active(cur)):
        reply(req, error="busy", message="A command is running in this sandbox." if not terminals else "A terminal is open.")
        return
    env = {k: v for k, v in (wanted[0] or os.environ).items() if k not in UNSET_ENV}
    env.update(msg.get("env") or {})
    spawned[0] += 1
    tok = "term%d-%d" % (ME, spawned[0])
    master, slave = os.openpty()
    given = saved = None
    try:
        winsize(master, msg.get("rows", 24), msg.get("cols", 80))
        saved = os.open(path(tok + ".state"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        given = unnamed_file(tok + ".given")
        os.write(given, given_state() + TERMINAL_RC)
        pid = os.fork()
        if pid == 0:
            terminal_child(slave, given, saved, env)
    except OSError as e:
        os.close(master)
        if saved is not None:
            os.close(saved)
        reply(req, error="os", message=e.strerror or str(e))
        return
    finally:
        os.close(slave)
        if given is not None:
            os.close(given)
    os.set_blocking(master, False)
    terminals[req] = Terminal(req, pid, master, saved, tok)
    reply(req, ev="open", pid=pid)


def terminal_of(msg):
    return terminals.get(msg.get("term"))


def terminal_input(msg, payload):
    """Keys for the terminal; no answer. What the PTY cannot take now is dropped (a paste into a stuck shell)."""
    t = terminal_of(msg)
    try:
        if t is not None and t.open:
            os.write(t.master, payload)
    except OSError:
        pass


def terminal_resize(msg):
    t = terminal_of(msg)
    try:
        if t is not None and t.open:
            winsize(t.master, msg.get("rows", 24), msg.get("cols", 80))
    except (OSError, ValueError, TypeError):
        pass


def terminal_hangup(msg):
    """The person left: hang up, as closing a terminal window does (bash saves its state and exits)."""
    t = terminal_of(msg)
    if t is not None:
        killpg(t.pid, signal.SIGHUP)


def pump_terminals():
    for t in list(terminals.values()):
        while t.open:
            try:
                chunk = os.read(t.master, 65536)
            except BlockingIOError:
                break
            except OSError:  # EIO: every process holding the PTY has closed it
                chunk = b""
            if not chunk:
                t.open = False
                break
            data_frame(b"O", t.req, chunk)


def terminal_ended(t, status):
    """Its bash ended: the rest of its output, its state saved (as a command's would be), then `exit`."""
    pump_terminals()
    del terminals[t.req]
    rc = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    state = compose_state(read_all(t.saved))
    if state is not None:
        write_whole(STATE_FILE, state)
    for fd in (t.master, t.saved):
        os.close(fd)
    unlink(t.tok + ".state")
    reply(t.req, ev="exit", rc=rc, saved=state is not None)


# -- listing a folder, with the sandbox user's rights --------------------------------------------

LIST_SCAN = 100000
"""The most names of one folder read to sort them (sandbox_backends/base.py LIST_SCAN_LIMIT); past it the
rest is counted as "at least"."""
LIST_BYTES = 40000
"""The most the listed names may take as JSON: the answer is one frame, which the server caps at 64 KiB (and
without setfsuid the listing comes back from a child process in one 64 KiB message)."""
ENTRY_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "folder", stat.S_IFLNK: "symlink"}


def list_inside(name, most):
    """(None, answer) for the folder `name`: ("ok", path relative to the workspace, [[name, kind, size, mtime]],
    names counted, all counted), ("not_dir", what it is) or ("not_allowed",). Opened without following a last
    symlink and checked to be inside the workspace once open (a folder swapped for a symlink would lead out);
    entries are lstat'ed, never followed. Run as the sandbox user (`as_user`)."""
    full = inside(name)
    if full is None:
        return None, ("not_allowed",)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ENOTDIR:
            raise
        kind = stat.S_IFMT(os.lstat(full).st_mode)  # never opened: a FIFO is named, not waited on
        return None, ("not_dir", KINDS.get(kind, "a file"))
    try:
        if not opened_inside(fd):
            return None, ("not_allowed",)
        names, counted, complete = [], 0, True
        with os.scandir(fd) as found:
            for entry in found:
                counted += 1
                if counted > LIST_SCAN:
                    counted, complete = LIST_SCAN, False
                    break
                names.append(entry.name)
        names.sort()
        listed, size = [], 0
        for entry_name in names[:most]:
            try:
                st = os.lstat(entry_name, dir_fd=fd)
            except FileNotFoundError:
                counted -= 1  # deleted meanwhile
                continue
            size += len(dumps(entry_name)) + 40
            if size > LIST_BYTES:
                break
            kind = ENTRY_KINDS.get(stat.S_IFMT(st.st_mode), "other")
            listed.append([entry_name, kind, st.st_size, int(st.st_mtime)])
        where = os.path.relpath(full, WS)
        return None, ("ok", "" if where == "." else where, listed, counted, complete)
    finally:
        os.close(fd)


def list_folder(req, msg):
    try:
        _fd, answer = as_user(list_inside, msg["path"], int(msg["max"]))
    except OSError as e:
        file_error(req, e)
        return
    if answer[0] == "ok":
        reply(req, ok=True, path=answer[1], entries=answer[2], total=answer[3], all=answer[4])
    elif answer[0] == "not_dir":
        reply(req, error="not_dir", kind=answer[1])
    else:
        reply(req, error="not_allowed")


# -- the shell state, carried over a pause or into a fork -----------------------------------------


def get_state(req, limit):
    """The state the next command starts with (cwd, variables, functions, aliases): what a sandbox stopped
    for a pause, or forked, gives the shell it starts next."""
    state = given_state()
    if len(state) > limit:
        reply(req, error="too_big", size=len(state))
        return
    data_frame(b"D", req, state)


def set_state(req, payload):
    """Make `payload` (what get_state gave) the state the next command starts with."""
    write_whole(STATE_FILE, payload)
    reply(req, ok=True)


# -- the workspace's size, with the sandbox user's rights ----------------------------------------

MEASURE_LIMIT_S = 30.0
"""The longest measuring the workspace may take (in a thread: requests are answered meanwhile)."""


def measure(req):
    """The workspace's use as `du -sx` counts it (allocated blocks, each hard-linked file once, symlinks not
    followed, this filesystem only; sandbox_backends/disk.py counts a local workspace alike), walked with the
    sandbox user's rights, and the first path that user cannot read: what is in it is not counted, so the
    server takes the workspace as over its limit. Measured here, as root, not by a `du` of the sandbox user,
    whose output any process of that user could write into or whose memory it could change."""
    _fd, (kb, unreadable) = as_user(walk, time.monotonic() + MEASURE_LIMIT_S)
    if kb is None:
        reply(req, error="timeout", seconds=MEASURE_LIMIT_S)
    else:
        reply(req, ok=True, kb=kb, unreadable=unreadable)


def walk(deadline):
    """(None, (KiB used, the first unreadable path)) of the workspace, or (None, (None, None)) past the deadline."""
    top = os.lstat(WS)
    blocks, seen, unreadable, pending, counted = top.st_blocks, set(), None, [WS], 0
    while pending:
        folder = pending.pop()
        try:
            listing = os.scandir(folder)
        except FileNotFoundError:
            continue  # deleted while measured
        except OSError:
            unreadable = unreadable or folder
            continue
        with listing:
            for entry in listing:
                counted += 1
                if counted % 1000 == 0 and time.monotonic() > deadline:
                    return None, (None, None)
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError:
                    unreadable = unreadable or entry.path
                    continue
                if st.st_dev != top.st_dev:
                    continue
                folder_entry = stat.S_ISDIR(st.st_mode)
                if st.st_nlink > 1 and not folder_entry:
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                blocks += st.st_blocks
                if folder_entry:
                    pending.append(entry.path)
    return None, ((blocks + 1) // 2, unreadable)


# -- requests ----------------------------------------------------------------------------------

TERMINAL_OPS = {
    "input": terminal_input,
    "resize": lambda msg, _payload: terminal_resize(msg),
    "hangup": lambda msg, _payload: terminal_hangup(msg),
}
"""Requests for an open terminal, never answered (the terminal's own frames say what happened)."""


# -- byte streams: TCP on 127.0.0.1 in here, relayed to the server as S frames -----------------------
# A `connect` request opens a connection to a port inside; a `listen` request listens on one (as root, so
# the port is the control shell's, not the sandbox user's) and announces each connection it accepts with
# an `accept` answer naming the stream. A stream's id is the request's (connect) or the `sid` announced.
# Data goes both ways in windows: at most SWINDOW bytes unacknowledged each way (`sack` from the server,
# `ack` answers from here), so nothing here or in the server buffers more than that per stream. The
# server's `shut` half-closes (after what it sent is written), `sclose` ends a stream or a listener (a
# stream once what the server sent is written, like a TCP close, or after LINGER_S if the peer does not
# read it); one ends by itself once both directions are over or the socket fails. The last answer of a
# stream or a listener is `closed`.

SCHUNK = "@SCHUNK@"
SWINDOW = "@SWINDOW@"
MAX_STREAMS = "@STREAMS@"
LINGER_S = 30.0
streams = {}
listeners = {}
accepted = [0]


class Stream:
    def __init__(self, sid, sock, connecting=False, port=0):
        sock.setblocking(False)
        self.sid, self.sock, self.connecting, self.port = sid, sock, connecting, port
        self.credit = SWINDOW  # bytes the server has room for
        self.out = bytearray()  # from the server, not yet written to the socket
        self.acked = 0
        self.eof = self.shut = self.wr_closed = False
        self.closing = None  # when the server closed it: what it sent is still being written


def port_of(req, msg, least):
    port = msg.get("port")
    if type(port) is not int or not least <= port <= 65535:
        reply(req, error="bad_request", message="a port is a number from %d to 65535, not %r" % (least, port))
        return None
    if not room():
        reply(req, error="too_many", message="%d streams are open on this connection, the most it takes" % MAX_STREAMS)
        return None
    return port


def room():
    """Whether another stream may open: MAX_STREAMS open, and as many again closed and still lingering."""
    closing = sum(1 for st in streams.values() if st.closing)
    return len(streams) - closing < MAX_STREAMS and closing < MAX_STREAMS


def stream_connect(req, msg):
    import socket  # only here, like the file helpers

    port = port_of(req, msg, 1)
    if port is None:
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex(("127.0.0.1", port))
    if err in (0, errno.EINPROGRESS):
        streams[req] = Stream(req, sock, connecting=bool(err), port=port)
        if not err:
            reply(req, ev="open")
        return
    sock.close()
    connect_failed(req, port, err)


def connect_failed(req, port, err):
    if err == errno.ECONNREFUSED:
        reply(req, error="refused", message="nothing listens on 127.0.0.1:%d in the sandbox" % port)
    else:
        reply(req, error="connect", message="cannot connect to 127.0.0.1:%d: %s" % (port, os.strerror(err)))


def stream_listen(req, msg):
    import socket

    port = port_of(req, msg, 0)
    if port is None:
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        taken = e.errno == errno.EADDRINUSE
        reply(req, error="in_use" if taken else "listen", message="cannot listen on 127.0.0.1:%d: %s" % (port, e.strerror))
        return
    sock.setblocking(False)
    listeners[req] = sock
    reply(req, ev="listening", port=sock.getsockname()[1])


def stream_accept(req, sock):
    try:
        conn, _addr = sock.accept()
    except OSError:
        return  # taken back by the peer, or out of descriptors: the next one may do
    if not room():
        conn.close()
        return
    accepted[0] += 1
    sid = "a%d" % accepted[0]
    streams[sid] = Stream(sid, conn)
    reply(req, ev="accept", sid=sid)


def stream_op(op, sid, msg, payload):
    """A request on a stream (or listener) the server opened; one that has ended meanwhile is ignored:
    its `closed` is on its way to the server."""
    if op == "sclose":
        sock = listeners.pop(sid, None)
        if sock is not None:
            sock.close()
            reply(sid, ev="closed")
        elif sid in streams:
            st = streams[sid]
            st.shut = True
            st.closing = time.monotonic()
            try:
                linger(st, True)
            except OSError as e:
                stream_end(st, e.strerror or e)
        return
    st = streams.get(sid)
    if st is None:
        return
    if op == "sdata" and not st.shut:
        st.out += payload
    elif op == "sack":
        st.credit += max(0, int(msg.get("n") or 0))
    elif op == "shut":
        st.shut = True


def stream_end(st, err=None):
    del streams[st.sid]
    st.sock.close()
    if err is None:
        reply(st.sid, ev="closed")
    else:
        reply(st.sid, ev="closed", error="reset", message=str(err))


def stream_fds():
    readable = [st.sock for st in streams.values() if st.closing or (not st.connecting and not st.eof and st.credit > 0)]
    writable = [st.sock for st in streams.values() if st.connecting or st.out]
    return readable + list(listeners.values()), writable


def pump_streams(readable, writable):
    for req, sock in list(listeners.items()):
        if sock in readable:
            stream_accept(req, sock)
    for st in list(streams.values()):
        sock = st.sock
        try:
            if st.connecting:
                if sock in writable:
                    err = sock.getsockopt(1, 4)  # SOL_SOCKET, SO_ERROR
                    if err:
                        del streams[st.sid]
                        sock.close()
                        connect_failed(st.sid, st.port, err)
                        continue
                    st.connecting = False
                    reply(st.sid, ev="open")
                continue
            if st.out and sock in writable:
                try:
                    n = sock.send(st.out)
                except BlockingIOError:
                    n = 0
                del st.out[:n]
                st.acked += n
            if st.acked and (not st.out or st.acked >= SWINDOW // 4):
                reply(st.sid, ev="ack", n=st.acked)
                st.acked = 0
            if st.shut and not st.out and not st.wr_closed:
                sock.shutdown(1)  # SHUT_WR: the peer reads its end of file
                st.wr_closed = True
            if st.closing:
                linger(st, sock in readable)
                continue
            if sock in readable:
                try:
                    data = sock.recv(min(st.credit, SCHUNK))
                except BlockingIOError:
                    data = None
                if data:
                    st.credit -= len(data)
                    data_frame(b"S", st.sid, data)
                elif data is not None:
                    st.eof = True
                    reply(st.sid, ev="eof")
            if st.eof and st.wr_closed:
                stream_end(st)
        except OSError as e:
            stream_end(st, e.strerror or e)


def linger(st, readable):
    """A stream the server closed: what comes in is dropped (a socket closed with unread data would send
    the peer a reset, which may cost it what it has not read yet); it ends once what the server sent is
    written, or after LINGER_S."""
    if not st.out and not st.wr_closed:
        st.sock.shutdown(1)
        st.wr_closed = True
    if readable:
        try:
            st.sock.recv(SCHUNK)
        except BlockingIOError:
            pass
    if st.wr_closed or time.monotonic() - st.closing > LINGER_S:
        stream_end(st)


def lingering():
    return any(st.closing for st in streams.values())


def close_streams():
    for st in list(streams.values()):
        st.sock.close()
    for sock in listeners.values():
        sock.close()
    streams.clear()
    listeners.clear()


def guarded(fn, req, *args):
    try:
        fn(req, *args)
    except Exception as e:
        reply(req, error="internal", message="%s: %s" % (type(e).__name__, e))


def in_thread(fn, req, *args):
    try:
        Worker(guarded, fn, req, *args)
    except RuntimeError:
        guarded(fn, req, *args)  # no thread left under the process limit: do it inline


def hello(req, msg):
    if SETUP_ERROR:
        reply(req, error="setup", message=SETUP_ERROR)
        return
    try:
        who = resolve_user(msg.get("user") or "1000:1000")
    except (ValueError, KeyError) as e:
        reply(req, error="user", message=str(e))
        return
    if user[0] is None:
        user[0] = who
        os.setgroups(who[2])  # file access as the user (AsUser) counts its groups, not root's
    env = dict(os.environ)
    env.update(msg.get("env") or {})
    if msg.get("shells", True):  # a connection only for byte streams starts no shells ahead
        wanted[0] = env
    reply(req, ok=True, pid=ME, ws_writable=workspace_writable(), python=sys.version.split()[0])


def handle(msg, payload):
    op, req = msg.get("op"), msg.get("req", "")
    last_busy[0] = time.monotonic()
    try:
        if op == "hello":
            hello(req, msg)
        elif op == "ping":
            reply(req, ok=True)
        elif user[0] is None:
            reply(req, error="bad_request", message="hello comes first")
        elif op == "run":
            start_run(req, msg)
        elif op == "follow":
            follow(req, msg)
        elif op == "stop":
            in_thread(stop, req, bool(msg.get("mark", True)), bool(msg.get("background")))
        elif op == "done":
            cleanup(msg["run"])
            quiet_until[0] = 0.0
        elif op == "read":
            read_file(req, msg)
        elif op == "write":
            write_file(req, msg, payload)
        elif op == "measure":
            in_thread(measure, req)
        elif op == "connect":
            stream_connect(req, msg)
        elif op == "listen":
            stream_listen(req, msg)
        elif op in ("sdata", "sack", "shut", "sclose"):
            stream_op(op, req, msg, payload)
        elif op == "list":
            in_thread(list_folder, req, msg)
        elif op == "attach":
            open_terminal(req, msg)
        elif op in TERMINAL_OPS:
            TERMINAL_OPS[op](msg, payload)
        elif op == "get_state":
            get_state(req, int(msg["max"]))
        elif op == "set_state":
            set_state(req, payload)
        else:
            reply(req, error="bad_request", message="unknown op %r" % (op,))
    except Exception as e:
        reply(req, error="internal", message="%s: %s" % (type(e).__name__, e))


def main():
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    inbuf = bytearray()
    pending = None
    while True:
        fds = [sig_r] if closing[0] else [0, sig_r]
        sfds, wfds = stream_fds() if streams or listeners else ([], [])
        fds += [t.master for t in terminals.values() if t.open]
        now = time.monotonic()
        due = refill_due(now)
        timeout = None if due is None else due - now
        if followers:
            timeout = 0.02 if timeout is None else min(timeout, 0.02)
        elif streams and lingering():
            timeout = 1.0 if timeout is None else min(timeout, 1.0)
        ready, writable, _ = select.select(fds + sfds, wfds, [], timeout)
        if sig_r in ready:
            try:
                os.read(sig_r, 4096)
            except BlockingIOError:
                pass
        if 0 in ready:
            chunk = os.read(0, CHUNK)
            if not chunk:  # the server is gone: see the command (if any) to its recorded end, then go
                closing[0] = True
                gone[0] = True
                del followers[:]
                for sh in standbys:
                    sh.close()
                del standbys[:]
                close_streams()
                for t in terminals.values():
                    killpg(t.pid, signal.SIGHUP)
            inbuf += chunk
            while not closing[0]:  # frames: 4-byte size, a marshalled dict, then its payload of msg["size"] bytes
                if pending is not None:
                    if len(inbuf) < pending["size"]:
                        break
                    payload = bytes(inbuf[: pending["size"]])
                    del inbuf[: pending["size"]]
                    msg, pending = pending, None
                    handle(msg, payload)
                    continue
                if len(inbuf) < 4:
                    break
                size = int.from_bytes(inbuf[:4], "big")
                if len(inbuf) < 4 + size:
                    break
                msg = marshal.loads(bytes(inbuf[4 : 4 + size]))
                del inbuf[: 4 + size]
                if msg.get("size"):
                    pending = msg
                else:
                    handle(msg, b"")
        if streams or listeners:
            pump_streams(ready, writable)
        watch_limits()
        pump_terminals()
        reap()
        pump_all()
        if closing[0] and current[0] is None and not terminals:
            return
        now = time.monotonic()
        due = refill_due(now)
        if not ready and due is not None and due <= now:
            refill()  # nothing else to do: start a shell ahead


MY_START = starttime(ME)
try:
    SETUP_ERROR = setup()
except OSError as e:
    SETUP_ERROR = "its control shell could not set up: %s" % e
try:
    main()
except KeyboardInterrupt:
    pass
