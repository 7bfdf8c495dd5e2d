"""The local driver's bash runner: one long-lived shell per sandbox, its state also kept in a file.

(The docker driver's control shell runs each command in a bash of its own instead, so that nothing in
the sandbox can forge its exit code: see turn.py. The local driver has no such boundary to keep.)

The runner is `bash RUNNER STATE_DIR`, started as a session and process-group leader (`setsid`). It
reads run ids from stdin, one per line; for each it sources `RUN_ID.sh` in the shell itself, so `cd`,
variables (exported or not), functions, aliases, shell options and the job table carry from one command
to the next as in a terminal. A command's stdin is /dev/null and its output goes to `RUN_ID.out`, so
the output survives the server and background jobs never write into a closed pipe. After each command
the runner writes the state to `state.new` (`export -p`, functions, aliases, cwd), then the exit code
to `RUN_ID.rc` (whole once it ends with a newline), then `RUN_ID EXIT_CODE` on its stdout, which
wakes whoever drives it. `exit` in a command ends the shell the same way, through the EXIT trap.

A new runner restores `state.sh` before its first command. That is how the state outlives the shell:
an interrupt kills the shell's process group, and `exit`, `exec` or a server restart end it too; the
next command then runs in a new shell with the cwd, exported variables, functions and aliases of the
last command that finished (plain variables, options and jobs are gone). A command may `break` or
`continue` out of the runner's loop: the loop notices and finishes the command as usual.

The driver writes `run.pid` (the shell's pid, also its process group, and the run id) before it hands
a run to the shell; whoever stops a run writes `RUN_ID.interrupted` first. The runner forks nothing of
its own (a `mv` or a `$(...)` would double the cost of a short command), so it cannot rename the new
state into place atomically. Drivers do that when they clean up a run: `state.new` replaces `state.sh`
only if it ends with the `#complete` line, which proves it was written whole. A run killed before it
saved, or a full disk, leaves the previous state in force.

Several server processes may drive one sandbox, each with its own shell: a driver uses its shell again
only while `state.sh` is the state that shell saved last (`state_identity`); otherwise another shell has
run a command since, and a new runner picks up the state from the file.
"""

from __future__ import annotations

import os
from pathlib import Path

# The epilogue is kept in a variable and eval'ed, not in a function, so `declare -f` does not save it.
# `builtin` keeps user functions named `echo`, `read` or `export` out of the runner's way.
RUNNER = r"""
__sbx_dir=$1; __sbx_id=; __sbx_new=1
set --
__sbx_end='{ builtin export -p; builtin declare -f; builtin alias -p; builtin printf "cd -- %q\n" "$PWD"; builtin echo "#complete"; } > "$__sbx_dir/state.new" 2>/dev/null; builtin echo "$__sbx_rc" > "$__sbx_dir/$__sbx_id.rc"'
# The run id is cleared before the line goes out: bash runs the EXIT trap even when that write kills it
# (SIGPIPE, its reader gone), and the trap must not record the run again.
__sbx_tell='__sbx_told=$__sbx_id; __sbx_id=; builtin echo "$__sbx_told $__sbx_rc"'
trap '__sbx_rc=$?; if [[ -n $__sbx_id ]]; then builtin eval "$__sbx_end"; fi' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
shopt -s expand_aliases
while :; do
  while :; do
    if [[ -n $__sbx_id ]]; then  # the command left the loop with `continue` (or `break` below)
      __sbx_rc=$?; builtin eval "$__sbx_end"; builtin eval "$__sbx_tell"
    fi
    IFS= builtin read -r __sbx_id || exit 0
    if [[ -n $__sbx_new ]]; then
      __sbx_new=
      if [[ -f $__sbx_dir/state.sh ]]; then . "$__sbx_dir/state.sh" </dev/null >/dev/null 2>&1; fi
    fi
    . "$__sbx_dir/$__sbx_id.sh" </dev/null >>"$__sbx_dir/$__sbx_id.out" 2>&1
    __sbx_rc=$?; builtin eval "$__sbx_end"; builtin eval "$__sbx_tell"
  done
done
exit 0
"""

RUNNER_FILE = "runner.sh"
PID_FILE = "run.pid"
STATE_FILE = "state.sh"
NEW_STATE_FILE = "state.new"


STATE_COMPLETE = b"#complete\n"


def state_whole(state_dir: Path, name: str = NEW_STATE_FILE) -> bool:
    """Whether a saved state was written whole: it ends with the `#complete` line."""
    try:
        with open(state_dir / name, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - len(STATE_COMPLETE)))
            return f.read() == STATE_COMPLETE
    except OSError:
        return False


def promote_state(state_dir: Path) -> None:
    """Put the state a finished run saved in force, if it was written whole (see the module docstring).
    Another process may promote the same file at the same moment: losing that race is fine."""
    if state_whole(state_dir):
        try:
            os.replace(state_dir / NEW_STATE_FILE, state_dir / STATE_FILE)
        except FileNotFoundError:
            pass
    else:
        (state_dir / NEW_STATE_FILE).unlink(missing_ok=True)


def state_identity(state_dir: Path, name: str = STATE_FILE) -> tuple[int, int, int] | None:
    """What tells one saved state from another: inode, mtime and size (a rename keeps all three)."""
    try:
        st = os.stat(state_dir / name)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_rc(path: Path) -> int | None:
    """The exit code the runner wrote, or None while it is missing or not written whole."""
    try:
        text = path.read_text()
    except (OSError, ValueError):
        return None
    if not text.endswith("\n"):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def script_file(run_id: str) -> str:
    return f"{run_id}.sh"


def output_file(run_id: str) -> str:
    return f"{run_id}.out"


def rc_file(run_id: str) -> str:
    return f"{run_id}.rc"


def interrupted_file(run_id: str) -> str:
    """Written by whoever stops a run, so the process that started it reports `interrupted`, not a plain exit."""
    return f"{run_id}.interrupted"
