"""The `memory` driver: sandboxes held in this process's memory, running a small subset of bash.

A real implementation of the driver contract (`sandbox_backends/base.py`) with no processes, no disk and
no engine to set up, so tests of the session layer run fast and the conformance suite holds a third,
independent driver to the contract. It ships as a plugin, found through its entry point only.

Each sandbox lives in `_SANDBOXES`, a table of this module keyed by sandbox id, the way an engine keeps
its containers: a new driver object (a restarted server) attaches by id and finds the files, the shell's
cwd and variables, the running command and the background jobs. A sandbox holds a file tree (folders,
files, symlinks) whose workspace is /workspace, with /tmp beside it.

Background jobs are anyio tasks on the memory engine, an event loop of its own on a daemon thread,
started on first use: they outlive the command, its caller and the driver object, as a container's
processes do, and stop when a command is interrupted, cancelled or times out, or the sandbox closes.
A job's output is dropped, as if it went to /dev/null. One event loop drives a sandbox's commands.

The shell, a subset of bash; anything else fails as bash would, with a message and exit code 127 for an
unknown command, 2 for syntax it does not know:
- lists: `;`, newlines, `&&`, `||`, `&` (background job), `( ... )` (subshell),
  `while LIST; do LIST; done`, `#` comments;
- words: '...', "...", `\\` escapes, `$NAME`, `${NAME}`, `$?`; unquoted expansions split on whitespace;
  `NAME=value` on its own sets a variable. No globs, pipes, `$(...)` or input redirections;
- redirections: `>`, `>>`, `2>`, `2>>`, `&>`, `>&2`, `2>&1`, `/dev/null` (stdout and stderr are one stream);
- commands: `:`, `true`, `false`, `echo [-n]`, `printf FORMAT [ARG...]` (%s %d %%, \\n \\t \\\\), `cd`,
  `pwd`, `export`, `unset`, `exit [N]`, `sleep SECONDS`, `cat FILE...`, `mkdir [-p]`, `rm [-f] FILE...`,
  `ln -s TARGET NAME`, `seq [FIRST] LAST` (the way to print a lot: streamed in 64 KiB chunks).

Its parts: `files` (the file tree), `parse` (the shell's words and lists), `shell` (running them, and the
commands), `driver` (the sandboxes, the driver and its plugin object: the part a driver author reads).
"""
