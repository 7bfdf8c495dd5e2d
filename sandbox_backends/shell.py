"""The bash runner shared by the drivers: one process group per command, shell state kept in a file.

Each command runs as `bash RUNNER STATE_DIR RUN_ID`, started as a session and process-group leader
(`setsid`, or by `docker exec`, which does the same). The runner restores the state the previous
command left (`export -p`, functions, aliases, cwd) from `state.sh`, sources the command from
`RUN_ID.sh`, and on exit, whatever the cause, writes the new state to `state.new` and then the exit
code to `RUN_ID.rc`. Output goes to `RUN_ID.out`, so it survives the server process and background
jobs never write into a closed pipe. While it runs, `run.pid` holds its pid (also the process group to
signal) and the run id; whoever stops it writes `RUN_ID.interrupted` first.

The runner forks nothing of its own (a `mv` or a `$(...)` would double the cost of a short command),
so it cannot rename the new state into place atomically. Drivers do that when they clean up a run:
`state.new` replaces `state.sh` only if it ends with the `#complete` line, which proves it was written
whole. A run killed before its trap finished, or a full disk, leaves the previous state in force.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNNER = r"""
__sbx_dir=$1; __sbx_id=$2
exec >>"$__sbx_dir/$__sbx_id.out" 2>&1 </dev/null
echo "$$ $__sbx_id" > "$__sbx_dir/run.pid"
__sbx_save() {
  __sbx_rc=$?
  unset -f __sbx_save
  { export -p; declare -f; alias -p; printf 'cd -- %q\n' "$PWD"; echo '#complete'; } > "$__sbx_dir/state.new" 2>/dev/null
  echo "$__sbx_rc" > "$__sbx_dir/$__sbx_id.rc"
  exit "$__sbx_rc"
}
trap __sbx_save EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
shopt -s expand_aliases
if [ -f "$__sbx_dir/state.sh" ]; then . "$__sbx_dir/state.sh" 2>/dev/null; fi
. "$__sbx_dir/$__sbx_id.sh"
"""

RUNNER_FILE = "runner.sh"
PID_FILE = "run.pid"
STATE_FILE = "state.sh"
NEW_STATE_FILE = "state.new"


STATE_COMPLETE = b"#complete\n"


def promote_state(state_dir: Path) -> None:
    """Put the state a finished run saved in force, if it was written whole (see the module docstring)."""
    new = state_dir / NEW_STATE_FILE
    try:
        with open(new, "rb") as f:
            f.seek(max(0, new.stat().st_size - len(STATE_COMPLETE)))
            complete = f.read() == STATE_COMPLETE
    except FileNotFoundError:
        return
    if complete:
        os.replace(new, state_dir / STATE_FILE)
    else:
        new.unlink(missing_ok=True)


def script_file(run_id: str) -> str:
    return f"{run_id}.sh"


def output_file(run_id: str) -> str:
    return f"{run_id}.out"


def rc_file(run_id: str) -> str:
    return f"{run_id}.rc"


def interrupted_file(run_id: str) -> str:
    """Written by whoever stops a run, so the process that started it reports `interrupted`, not a plain exit."""
    return f"{run_id}.interrupted"
