"""The control shell: the program that runs commands and serves files inside a sandbox, as the sandbox user.

Not a module: a driver sends this file's text, with the "@NAME@" strings filled in by
`build_control_code`, into `python3 -I -S -c CONTROL_BOOT mcp-sessions-control STATE_DIR WORKSPACE`
(see this package's docstring for the protocol). The marker argument keeps it out of the kill sweeps. It imports
only what a new container loads quickly: builtins and os/select/signal. Long because it is sent and run as
one program, with nothing to import beside it.
"""

import _thread
import marshal
import os
import select
import signal
import sys
import time

if __name__ != "__main__":
    raise ImportError("program.py runs inside a sandbox (see sandbox_backends/control); it is not a module")

MARK, DIR, WS = sys.argv[1], sys.argv[2], sys.argv[3]
RUNNER = "@RUNNER@"
PID_FILE, RUNNER_FILE = "@PID_FILE@", "@RUNNER_FILE@"
STATE_FILE, NEW_STATE_FILE, STATE_COMPLETE = "@STATE_FILE@", "@NEW_STATE_FILE@", "@STATE_COMPLETE@"
GRACE = 0.3
CHUNK = "@CHUNK@"  # the most output one frame carries: the server refuses larger ones
os.umask(0o022)
os.makedirs(DIR, mode=0o700, exist_ok=True)
WS = os.path.realpath(WS)
RUNNER_PATH = os.path.join(DIR, RUNNER_FILE)
try:
    with open(RUNNER_PATH) as f:
        same = f.read() == RUNNER
except OSError:
    same = False
if not same:
    with open(RUNNER_PATH + ".tmp", "w") as f:
        f.write(RUNNER)
    os.replace(RUNNER_PATH + ".tmp", RUNNER_PATH)
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

    def join(self):
        with self.done:
            pass


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


def send(kind, payload):
    data = memoryview(kind + len(payload).to_bytes(4, "big") + payload)
    with wlock:
        while data:
            data = data[os.write(1, data) :]


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


def stat_of(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(b")") + 2 :].split()


def alive(pid):
    st = stat_of(pid)
    return st is not None and st[0] not in (b"Z", b"X")


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def current_run():
    try:
        with open(path(PID_FILE)) as f:
            pid, run = f.read().split()
        return int(pid), run
    except (OSError, ValueError):
        return None


def starttime(pid):
    st = stat_of(pid)
    return st[19].decode() if st is not None and len(st) > 19 else None


def run_alive(pid, run):
    if not alive(pid):
        return False
    try:
        with open(path(run + ".start")) as f:
            return f.read().strip() == starttime(pid)
    except OSError:
        return True


def pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def ppid_of(pid):
    st = stat_of(pid)
    return int(st[1]) if st is not None and len(st) > 1 else 0


def protected(pid, running):
    """PID 1, the keepalive, control shells and their idle runners are not the user's processes."""
    if pid in (1, os.getpid()):
        return True
    argv = cmdline(pid)
    if not argv or argv == [b""] or argv[0] == b"mcp-keepalive" or MARK.encode() in argv:
        return True
    return pid != running and RUNNER_PATH.encode() in argv and MARK.encode() in cmdline(ppid_of(pid))


def kill_others(running):
    """SIGKILL every process but PID 1, the keepalive and control shells, until none is left."""
    for _ in range(100):
        victims = [p for p in pids() if alive(p) and not protected(p, running)]
        if not victims:
            return
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


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


def stop(req, mark):
    cur = current_run()
    if cur is None or not run_active(*cur):
        reply(req, ok=True, was_running=False, run=cur[1] if cur else None)
        return
    pid, run = cur
    if mark:
        open(path(run + ".interrupted"), "w").close()
    for sig in (signal.SIGINT, signal.SIGTERM):
        killpg(pid, sig)
        end = time.monotonic() + GRACE
        while time.monotonic() < end and alive(pid):
            time.sleep(0.005)
        if not alive(pid):
            break
    killpg(pid, signal.SIGKILL)
    kill_others(pid)
    end = time.monotonic() + GRACE
    while time.monotonic() < end and group_alive(pid):
        time.sleep(0.005)
    reply(req, ok=True, was_running=True, run=run)


def whole(name):
    """Whether a saved state was written whole: it ends with the marker line."""
    try:
        with open(path(name), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - len(STATE_COMPLETE)))
            return f.read() == STATE_COMPLETE
    except OSError:
        return False


def promote_state():
    """The runner writes state.new and forks no mv; a whole one (ending with the marker) goes in force.
    Another control shell may promote the same file at the same moment: losing that race is fine."""
    if whole(NEW_STATE_FILE):
        try:
            os.replace(path(NEW_STATE_FILE), path(STATE_FILE))
        except FileNotFoundError:
            pass
    else:
        unlink(NEW_STATE_FILE)


def cleanup(run):
    """Put the run's state in force and remove its files. The output goes before the exit code, so another
    control shell never sees a finished run without either (see run_active). Once a later run is current,
    its start has promoted this run's state already, and state.new is the later run's, half written: it is
    left alone (a late acknowledgement of this run must not discard it)."""
    cur = current_run()
    if cur is None or cur[1] == run:
        promote_state()
        unlink(PID_FILE)
    for suffix in (".out", ".rc", ".sh", ".start", ".interrupted"):
        unlink(run + suffix)


followers = []
STANDBYS = 1
RUNNER_ARGV = ["bash", "--noprofile", "--norc", RUNNER_PATH, DIR]


class Shell:
    """A long-lived runner (see runner.py): commands are sourced in it one after another."""

    def __init__(self, env):
        self.env = env
        self.pid, self.stdin, self.out = spawn(RUNNER_ARGV, env)
        self.returncode = None
        os.set_blocking(self.out, False)
        self.state = None  # identity of the state its last command saved: it is used again only while in force
        self.done = None
        self.buf = b""

    def alive(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.returncode is None

    def drain(self):
        """Read its "RUN_ID EXIT_CODE" lines: the last run it finished and is back from, ready for the next."""
        if self.out is None:
            return
        try:
            while True:
                chunk = os.read(self.out, 4096)
                if not chunk:
                    break
                self.buf += chunk
                lines = self.buf.split(b"\n")
                self.buf = lines.pop()[-256:]
                if lines and lines[-1]:
                    self.done = lines[-1].split()[0].decode(errors="replace")
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.close_out()

    def close_out(self):
        if self.out is not None:
            os.close(self.out)
            self.out = None

    def retire(self):
        if self.stdin is not None:
            os.close(self.stdin)  # it reads EOF and exits
            self.stdin = None
        retired.append(self)


def spawn(argv, env):
    """Start `argv` in a new session in the workspace (the control shell's own cwd), on pipes: (pid, stdin
    fd, stdout fd). Every other descriptor of this process is close-on-exec, as Python makes them."""
    in_r, in_w = os.pipe()
    try:
        out_r, out_w = os.pipe()
    except OSError:
        os.close(in_r)
        os.close(in_w)
        raise
    try:
        pid = os.posix_spawnp(
            argv[0],
            argv,
            env,
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except BaseException:
        os.close(in_w)
        os.close(out_r)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    return pid, in_w, out_r


session = [None]
standbys = []
retired = []
last_env = [None]


def fill_standbys(env):
    while len(standbys) < STANDBYS and last_env[0] == env:
        try:
            standbys.append(Shell(env))
        except OSError:
            return


spawner = None


def refill(env):
    """Start the spare shell in a thread, so the main loop stays free to answer."""
    global spawner
    last_env[0] = env
    if len(standbys) < STANDBYS and (spawner is None or not spawner.is_alive()):
        try:
            spawner = Worker(fill_standbys, env)
        except RuntimeError:
            spawner = None


def take_standby(env):
    while True:
        if not standbys and spawner is not None and spawner.is_alive() and last_env[0] == env:
            spawner.join()
        if not standbys:
            return None
        sh = standbys.pop(0)
        if sh.env == env and sh.alive():
            return sh
        sh.retire()


def state_identity(name):
    try:
        st = os.stat(path(name))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def take_shell(env):
    """The session shell if its state is the one in force, else a fresh runner, which restores the file."""
    sh = session[0]
    if sh is not None:
        if sh.alive() and sh.env == env and sh.state is not None and sh.state == state_identity(STATE_FILE):
            return sh
        sh.retire()
        session[0] = None
    sh = take_standby(env) or Shell(env)
    session[0] = sh
    refill(env)
    return sh


def read_rc(run):
    """The exit code the runner wrote, or None while it is missing or not written whole."""
    try:
        with open(path(run + ".rc")) as fh:
            text = fh.read()
        return int(text) if text.endswith("\n") else None
    except (OSError, ValueError):
        return None


def run_active(pid, run):
    """Running: no exit code yet, its output not cleaned up, and its runner alive (runners outlive runs)."""
    return read_rc(run) is None and os.path.exists(path(run + ".out")) and run_alive(pid, run)


class Follower:
    def __init__(self, req, run, pid, fd, shell):
        self.req, self.run, self.pid, self.fd, self.shell, self.sent = req, run, pid, fd, shell, 0
        self.announce = False
        self.t0 = time.monotonic()
        self.trimmed = 0


def start_run(req, msg):
    run = msg["run"]
    cur = current_run()
    if cur is not None:
        if run_active(*cur):
            reply(req, error="busy", message="A command is already running in this sandbox.")
            return
        cleanup(cur[1])
    with open(path(run + ".sh"), "w") as f:
        f.write(msg["script"])
    os.close(os.open(path(run + ".out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    env = dict(os.environ)
    env.update(msg.get("env") or {})
    for attempt in (0, 1):
        try:
            sh = take_shell(env)
            mark_started(run, sh.pid)
            os.write(sh.stdin, run.encode() + b"\n")
            break
        except OSError as e:
            if session[0] is not None:
                session[0].retire()
                session[0] = None
            if attempt:
                cleanup(run)
                reply(req, error="spawn", message="Cannot start the command: %s." % (e.strerror or e))
                return
    f = Follower(req, run, sh.pid, os.open(path(run + ".out"), os.O_RDONLY), sh)
    f.announce = True  # "started" goes out only if the command outlives the first poll
    followers.append(f)


def mark_started(run, pid):
    with open(path(run + ".start"), "w") as f:
        f.write("%s\n" % starttime(pid))
    with open(path(PID_FILE + ".tmp"), "w") as f:
        f.write("%d %s\n" % (pid, run))
    os.replace(path(PID_FILE + ".tmp"), path(PID_FILE))


def follow(req, msg):
    cur = current_run()
    run = msg.get("run") or (cur[1] if cur else None)
    try:
        fd = os.open(path(run + ".out"), os.O_RDONLY) if run else None
    except OSError:
        fd = None
    if fd is None:
        reply(req, ev="none", run=run)
        return
    offset = int(msg.get("offset") or 0)
    os.lseek(fd, offset, os.SEEK_SET)
    pid = cur[0] if cur and cur[1] == run else 0
    sh = session[0]
    f = Follower(req, run, pid, fd, sh if sh is not None and pid and sh.pid == pid else None)
    f.sent = offset
    reply(req, ev="following", run=run, pid=pid, running=bool(pid and run_active(pid, run)))
    followers.append(f)


fallocate = []  # loaded on first use: importing ctypes costs more than most commands


def load_fallocate():
    if not fallocate:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        except Exception:
            fn = None
        fallocate.append(fn)
    return fallocate[0]


PUNCH_HOLE = 0x03  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
KEEP_HEAD, KEEP_BEHIND, TRIM_STEP = 1 << 20, 16 << 20, 32 << 20


def trim(f):
    """Free the middle of a long output file once it has been sent: it lives on the sandbox's /tmp."""
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


def reap():
    sh = session[0]
    if sh is not None:
        sh.drain()
        if not sh.alive() and not any(f.shell is sh for f in followers):
            sh.close_out()
            session[0] = None
    for sh in list(standbys):
        if not sh.alive():
            standbys.remove(sh)
            sh.close_out()
            if last_env[0] is not None:
                refill(last_env[0])
    for sh in list(retired):
        if not sh.alive():
            retired.remove(sh)
            sh.close_out()


def finished(f):
    """Whether the run is over: its shell said so (or died); for a run another control started, its files."""
    if f.shell is not None:
        return f.shell.done == f.run or not f.shell.alive()
    return read_rc(f.run) is not None or not (f.pid and run_alive(f.pid, f.run))


def pump_all():
    reap()
    for f in list(followers):
        if not finished(f):
            if f.announce and time.monotonic() - f.t0 > 0.015:
                f.announce = False
                reply(f.req, ev="started", run=f.run, pid=f.pid)
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
        rc = read_rc(f.run)
        sh = f.shell
        if rc is None and sh is not None and sh.returncode is not None:
            code = sh.returncode
            rc = 128 - code if code < 0 else code
        if sh is not None:
            # Back at its loop with the state saved: the next command may run in it while that state is in force.
            sh.state = state_identity(NEW_STATE_FILE) if sh.done == f.run and whole(NEW_STATE_FILE) else None
        reply(f.req, ev="exit", run=f.run, rc=rc, interrupted=os.path.exists(path(f.run + ".interrupted")), bytes=f.sent)


def inside(p):
    if "\0" in p:
        return None
    full = os.path.realpath(p if os.path.isabs(p) else os.path.join(WS, p))
    if full != WS and not full.startswith(WS + "/"):
        return None
    return full


def file_error(req, e):
    kind = {2: "not_found", 21: "is_dir", 20: "not_dir"}.get(e.errno, "os")
    reply(req, error=kind, message=e.strerror or str(e))


def read_file(req, msg):
    full = inside(msg["path"])
    if full is None:
        reply(req, error="not_allowed")
        return
    limit = int(msg["max"])
    try:
        with open(full, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                reply(req, error="too_big", size=size)
                return
            data = fh.read(limit + 1)
    except OSError as e:
        file_error(req, e)
        return
    if len(data) > limit:
        reply(req, error="too_big", size=len(data))
        return
    data_frame(b"D", req, data)


def write_file(req, msg, payload):
    full = inside(msg["path"])
    if full is None or full == WS:
        reply(req, error="not_allowed")
        return
    try:
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
    except OSError as e:
        file_error(req, e)
        return
    reply(req, ok=True, size=len(payload))


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


def handle(msg, payload):
    op, req = msg.get("op"), msg.get("req", "")
    try:
        if op == "hello":
            env = dict(os.environ)
            env.update(msg.get("env") or {})
            refill(env)
            reply(req, ok=True, pid=os.getpid(), ws_writable=os.access(WS, os.W_OK), python=sys.version.split()[0])
        elif op == "ping":
            reply(req, ok=True)
        elif op == "run":
            start_run(req, msg)
        elif op == "follow":
            follow(req, msg)
        elif op == "stop":
            in_thread(stop, req, bool(msg.get("mark", True)))
        elif op == "done":
            cleanup(msg["run"])
        elif op == "read":
            read_file(req, msg)
        elif op == "write":
            write_file(req, msg, payload)
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
        sh = session[0]
        fds = [0, sig_r] if sh is None or sh.out is None else [0, sig_r, sh.out]
        ready = select.select(fds, [], [], 0.02 if followers else None)[0]
        if sig_r in ready:
            try:
                os.read(sig_r, 4096)
            except BlockingIOError:
                pass
        if 0 in ready:
            chunk = os.read(0, CHUNK)
            if not chunk:
                return
            inbuf += chunk
            while True:  # frames: 4-byte size, a marshalled dict, then its payload of msg["size"] bytes
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
        pump_all()


try:
    main()
except (BrokenPipeError, KeyboardInterrupt):
    pass
