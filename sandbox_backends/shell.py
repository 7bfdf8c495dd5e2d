"""The bash runner shared by the drivers: one process group per command, shell state kept in a file.

Each command runs as `bash RUNNER STATE_DIR RUN_ID`, started as a session and process-group leader
(`setsid`, or by `docker exec`, which does the same). The runner restores the state the previous
command left (`export -p`, functions, aliases, cwd), sources the command from `RUN_ID.sh`, and on
exit, whatever the cause, saves the state again and writes the exit code to `RUN_ID.rc`. Output goes
to `RUN_ID.out`, so it survives the server process and background jobs never write into a closed pipe.
While it runs, `run.pid` holds its pid (also the process group to signal) and the run id.
"""

from __future__ import annotations

RUNNER = r"""
__sbx_dir=$1; __sbx_id=$2
exec >>"$__sbx_dir/$__sbx_id.out" 2>&1 </dev/null
echo "$$ $__sbx_id" > "$__sbx_dir/run.pid"
__sbx_save() {
  __sbx_rc=$?
  {
    export -p
    for __sbx_f in $(compgen -A function); do
      case $__sbx_f in __sbx_*) ;; *) declare -f "$__sbx_f" ;; esac
    done
    alias -p
    printf 'cd -- %q\n' "$PWD"
  } > "$__sbx_dir/state.tmp" 2>/dev/null && mv -f "$__sbx_dir/state.tmp" "$__sbx_dir/state.sh"
  echo "$__sbx_rc" > "$__sbx_dir/$__sbx_id.rc"
  exit "$__sbx_rc"
}
trap __sbx_save EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
shopt -s expand_aliases
if [ -f "$__sbx_dir/state.sh" ]; then . "$__sbx_dir/state.sh" 2>/dev/null; fi
unset __sbx_f
. "$__sbx_dir/$__sbx_id.sh"
"""

RUNNER_FILE = "runner.sh"
PID_FILE = "run.pid"
INTERRUPTED_FILE = "interrupted"
"""Written by whoever stops a command, so the process that started it reports `interrupted`, not a plain exit."""


def script_file(run_id: str) -> str:
    return f"{run_id}.sh"


def output_file(run_id: str) -> str:
    return f"{run_id}.out"


def rc_file(run_id: str) -> str:
    return f"{run_id}.rc"
