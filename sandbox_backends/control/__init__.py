"""The control shell: one long-lived python3 program in a sandbox that runs its commands and serves its files.

A driver that reaches a sandbox only through processes it starts there (a `docker exec`, say) would pay
that start on every command (50-80 ms for a `docker exec` here). Instead it starts one control shell per
connection, with stdin and stdout attached, and frames requests over that byte stream. The docker driver
(`sandbox_backends.docker`) uses it; any driver with a byte stream into a sandbox's python3 can. The local
driver shares only the bash runner.

- `program.py`: the control shell itself. Not imported: its text is sent over stdin.
- `runner.py`: the bash runner the control shell (and the local driver) keeps, and the state-file helpers.
- `client.py`: the server's side, over a transport the driver gives it; it knows nothing of the driver.
  `frames.py` says what it accepts from a control shell, `pacing.py` how much of the server one may take.

The driver starts a tiny bootstrap (`CONTROL_BOOT`) that reads the program from stdin, so `ps` in the
sandbox stays readable. Then the server writes requests and the control shell answers in frames on stdout:

    request  (server -> control)   length (4 bytes, big-endian) + a marshalled dict; {"size": n} means n
                                   raw bytes follow it (marshal: the control shell needs no json import)
    response (control -> server)   kind (1 byte) + length (4 bytes, big-endian) + payload
        J  a JSON object with "req", the id of the request it answers (at most 64 KiB)
        O  output of a command:   len(req) (1 byte) + req + bytes (at most the control shell's chunk, 1 MiB)
        D  content of a file:     len(req) (1 byte) + req + bytes (only for a read, at most its `max`)

Requests (each carries "req", an id chosen by the server; several may be in flight):
- `run {run, script, env}` hands the run to the control shell's runner (`runner.py`: one long-lived bash
  in a session of its own that sources each command in turn), streams the run's output file as O frames
  and ends with `exit {rc, interrupted}` (`started` is sent too, once the command has run for 15 ms).
  A command thus costs no process start or exit of its own. A spare runner is kept started for when
  the runner ends (`exit`, an interrupt); it restores the saved state before its first command.
- `stop {mark}` sends SIGINT, SIGTERM, then SIGKILL to the runner's process group, the command's
  (0.3 s apart, so it is over within about 1 s), then SIGKILLs every other process in the sandbox
  except PID 1, the keepalive, control shells and their idle runners (so `setsid` escapees go too);
  `mark` writes the `interrupted` marker.
- `follow {run, offset}` streams a run another control shell started, from an offset: that is how a
  new connection resumes a command after the old one died, and how `take_over` collects a command
  whose server is gone.
- `done {run}` acknowledges a result; only then are the run's files removed, so a result survives the
  server's death until someone has read it.
- `read {path, max}` / `write {path}` + bytes serve workspace files, paths resolved inside the
  sandbox (symlinks included); about 8x faster than docker's put_archive/get_archive.
- `ping {}` is answered `{ok}` at once: the server sends it when a request has waited a second for
  anything, and drops a connection that leaves it unanswered for 5 s (`client.py`), so a command may be
  silent for hours but a stuck control shell is noticed in seconds.

Anything in the sandbox runs as the same user as the control shell and could write into its stdout,
so the server treats frames as untrusted: a malformed or oversized one ends the connection (the next
request reconnects), never the server.

The runner's state (the state dir the control shell is given: saved shell state, per-run script, output,
exit code) survives the server. Output already sent is punched out of the middle of the output file, so a
long-running, chatty command does not fill it. The sandbox needs bash and python3 (3.8 or later).
"""
