"""The control shell: one long-lived python3 program in a sandbox that runs its commands and serves its files.

A driver that reaches a sandbox only through processes it starts there (a `docker exec`, say) would pay
that start on every command (50-80 ms for a `docker exec` here). Instead it starts one control shell per
connection, with stdin and stdout attached, and frames requests over that byte stream. The docker driver
(`sandbox_backends.docker`) uses it; any driver with a byte stream into a sandbox's python3, run as root
with CAP_SETUID, CAP_SETGID and CAP_KILL, can.

- `program.py`: the control shell itself. Not imported: its text is sent over stdin.
- `turn.py`: the bash each command runs in (a turn shell), and the state it hands to the next one.
- `client.py`: the server's side, over a transport the driver gives it; it knows nothing of the driver.
  `frames.py` says what it accepts from a control shell, `pacing.py` how much of the server one may take.
- `runner.py`: the local driver's long-lived bash runner (the local driver has no control shell).

The driver starts a tiny bootstrap (`CONTROL_BOOT`) that reads the program from stdin, so `ps` in the
sandbox stays readable. Then the server writes requests and the control shell answers in frames on stdout:

    request  (server -> control)   length (4 bytes, big-endian) + a marshalled dict; {"size": n} means n
                                   raw bytes follow it (marshal: the control shell needs no json import)
    response (control -> server)   kind (1 byte) + length (4 bytes, big-endian) + payload
        J  a JSON object with "req", the id of the request it answers (at most 64 KiB)
        O  output of a command:   len(req) (1 byte) + req + bytes (at most the control shell's chunk, 1 MiB)
        D  content of a file:     len(req) (1 byte) + req + bytes (only for a read, at most its `max`)
        S  a byte stream's data:  len(id) (1 byte) + id + bytes (at most 64 KiB, and within the stream's window)

Requests (each carries "req", an id chosen by the server; several may be in flight):
- `hello {env, user}` comes first: `user` is who commands run as ("uid:gid", default "1000:1000"). An
  error `setup` says the control shell lacks its privileges or its root-only folder (a container made
  otherwise), `user` that the user is unknown or root.
- `run {run, script, env}` hands the command to a turn shell (`turn.py`) the control shell started ahead
  as the sandbox user, streams the run's output file as O frames and ends with
  `exit {rc, oom, interrupted, bytes}` (`started` is sent too, once the command has run for 15 ms).
  `rc` is the `waitpid` status of the turn shell, which the control shell started and reaps itself;
  `oom` is how many processes the kernel's OOM killer killed in the sandbox while the command ran.
  Each command runs in a new bash, which restores the state the previous one saved.
- `stop {mark}` sends SIGINT, SIGTERM, then SIGKILL to the turn shell's process group (0.3 s apart, so
  it is over within about 1 s), then SIGKILLs every other process of the sandbox user (the real uid
  in /proc: what a process calls itself does not count) but its own idle turn shell; root's processes
  (init, the keepalive, control shells) are left. `mark` writes the `interrupted` marker.
- `follow {run, offset}` streams a run another control shell started, from an offset: that is how a
  new connection resumes a command after the old one died, and how `take_over` collects a command
  whose server is gone. A control shell whose connection ends sees its command to the end and records
  its exit code before it exits, so the result survives the server.
- `done {run}` acknowledges a result; only then are the run's files removed, so a result survives the
  server's death until someone has read it.
- `read {path, max}` / `write {path}` + bytes serve workspace files with the sandbox user's rights
  (the control shell takes that user's file system uid while it does), paths resolved inside the
  sandbox (symlinks included); regular files only (a FIFO or device is refused, opened without
  blocking), the size limit kept while reading, a read given up after 4 s (served on the main loop,
  which answers no ping meanwhile: well within the server's patience). About 8x faster than docker's
  put_archive/get_archive.
- `measure {}` answers `{kb, unreadable}`: the workspace's use as `du -sx` counts it, walked in a thread
  with the sandbox user's rights, and the first path that user cannot read (or null); given up after
  30 s. For a workspace whose size no filesystem keeps: the server's own measure, which nothing in the
  sandbox can write into.
- Byte streams (`streams.py`: the server's side): `connect {port}` opens a TCP connection to
  127.0.0.1:port inside and answers `{ev: open}` (or an error: `refused` when nothing listens there);
  `listen {port}` listens on 127.0.0.1:port inside, as root (0: a free port), answers `{ev: listening,
  port}` and then `{ev: accept, sid}` for each connection a process makes to it. A stream's id is its
  connect request's, or the `sid` announced. Its data travels as S frames from here and as `sdata` +
  bytes from the server, each way within a window of 256 KiB that the receiver reopens as it takes the
  data (`sack {n}` from the server, `{ev: ack, n}` from here): a stream nobody reads holds nothing up
  and fills no memory. `{ev: eof}` says the peer inside half-closed; the server's `shut` half-closes
  the connection once what it sent is written; `sclose` ends a stream (once its data is written, like a
  TCP close) or a listener. The last answer of a stream or a listener is `{ev: closed}` (with `error`
  if the socket failed). At most 64 streams are open per connection. A hello with `shells: false` asks
  for a connection that starts no command shells ahead (the docker driver's streams have their own).
- `ping {}` is answered `{ok}` at once: the server sends it when a request has waited a second for
  anything, and drops a connection that leaves it unanswered for 5 s (`client.py`), so a command may be
  silent for hours but a stuck control shell is noticed in seconds.

The control shell's folder (the state dir it is given: run record, saved shell state, output, exit
codes) is root's, mode 0711: the sandbox user can neither list it nor open what is in it, save the
files a turn shell needs by name (`turn.sh`, the command's script, the execute-only bash copy). So no
process in the sandbox can write into the control shell's stdout, read or change its state, or record
a result for it. The server still reads frames as hostile (an image's own root process, or a kernel
bug, could write anything): a malformed or oversized one ends the connection (the next request
reconnects), never the server. Output already sent is punched out of the middle of the output file, so
a long-running, chatty command does not fill it. The sandbox needs bash and python3 (3.8 or later, with
ctypes for file access).
"""
