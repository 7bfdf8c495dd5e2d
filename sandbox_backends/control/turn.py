"""The turn shell: the bash that runs one command of the control shell, and the state it hands on.

The control shell (program.py) runs as root inside the sandbox; commands run as the sandbox user. A
command's exit code must come from somewhere nothing in the sandbox can write, so every command runs
in a bash of its own that the control shell started and reaps: the exit code is the kernel's `waitpid`
status of that bash, not a line or a file the sandbox user could forge.

To keep a command from paying for the bash it runs in, the control shell keeps one started ahead, idle
(a standby). It runs `bash -c '. DIR/turn.sh' bash DIR TOK` (the text below) as the sandbox user, in a
session of its own, from an execute-only copy of bash (so the kernel makes it non-dumpable: no other
process of the sandbox user can ptrace it or open its `/proc/PID/fd` or `/proc/PID/mem`), with:

    fd 0, 1, 2   /dev/null
    fd 3         a pipe: one byte comes on it when the command is handed over (EOF: never used, exit)
    fd 5         an unnamed file holding the state to restore, written just before that byte
    fd 252       the run's output file (`RUN.out` once handed over)
    fd 254       the file the state is saved to, `TOK.state`

All four are root's files in the control shell's folder: the sandbox user cannot open them by name or
through /proc, only use the descriptors it was given. The command is sourced from `DIR/TOK.sh` (root's,
readable, not writable) with those descriptors closed for its duration (bash keeps them close-on-exec
meanwhile), stdout and stderr on the output file and stdin on /dev/null.

After the command the shell saves its state to fd 254 and exits with the command's status:

    functions (`declare -f`), aliases (`alias -p`), `cd -- PWD`
    #vars
    every variable (`declare -p`), one a line
    #opts SHELLOPTS-at-start BASHOPTS-at-start SHELLOPTS-now BASHOPTS-now
    #complete

The control shell keeps only the user's variables and the options that changed (`compose_state` in
program.py) and gives that to the next command's shell: cwd, variables (exported or not), functions,
aliases and options carry from one command to the next as in a terminal. A command that ends its shell
(`exit`, a failure under `set -e`, a signal) saves through the EXIT trap what outlives a shell, as the
local driver's runner does: exported variables, functions, aliases and cwd. `exec` or SIGKILL save
nothing, and the state before the command stays in force. The job table does not carry: a background
job keeps running after its command, but the next command runs in another bash, where `jobs` and `%1`
do not find it.

An EXIT that comes from inside a function finds the descriptors of the `.` still closed (bash undoes
the redirections only when it leaves the top level), so the trap looks for fd 254 among the copies bash
keeps (10 and up) by comparing them with `TOK.state`, which it may stat but not open.

`\\builtin` and keywords keep a command's own functions and aliases (`echo`, `read`, `export`) out of
the shell's way; the `for` loop around the `.` catches a command's `break` and `continue`.
"""

from __future__ import annotations

TURN = r"""__sbx_dir=$1; __sbx_tok=$2; __sbx_go=; __sbx_done=
\builtin set --
\builtin trap '{ __sbx_rc=$?; if [[ -n $__sbx_go && -z $__sbx_done ]]; then __sbx_done=1; for __sbx_k in 254 {10..40}; do if [[ /dev/fd/$__sbx_k -ef $__sbx_dir/$__sbx_tok.state ]]; then { \builtin export -p; \builtin declare -f; \builtin alias -p; \builtin printf "cd -- %q\n" "$PWD"; \builtin echo "#complete"; } >&$__sbx_k; break; fi; done; fi; } 2>/dev/null' EXIT
\builtin trap '\builtin exit 130' INT
\builtin trap '\builtin exit 143' TERM
\builtin shopt -s expand_aliases
__sbx_o0=$SHELLOPTS; __sbx_b0=$BASHOPTS
\builtin read -r -n 1 -u 3 __sbx_go || \builtin exit 0
\builtin readonly __sbx_dir __sbx_tok __sbx_go
\builtin . /dev/fd/5 </dev/null >/dev/null 2>&1
__sbx_done=
for __sbx_once in 1; do \builtin . "$__sbx_dir/$__sbx_tok.sh" 3<&- 5<&- 254>&- >&252 2>&252 252>&-; done
__sbx_rc=$?; __sbx_o1=$SHELLOPTS; __sbx_b1=$BASHOPTS
\builtin set +eu
{ \builtin declare -f; \builtin alias -p; \builtin printf 'cd -- %q\n' "$PWD"; \builtin echo '#vars'; \builtin declare -p; \builtin printf '#opts %s %s %s %s\n' "$__sbx_o0" "$__sbx_b0" "$__sbx_o1" "$__sbx_b1"; \builtin echo '#complete'; } >&254 2>/dev/null
__sbx_done=1
\builtin exit "$__sbx_rc"
"""
