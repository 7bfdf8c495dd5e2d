"""Shell semantics every driver's sandbox must show; the driver tests call these with real sandboxes."""

from __future__ import annotations

from sandbox_backends.base import Sandbox


async def check_terminal_semantics(sb: Sandbox) -> None:
    """State carries like a terminal; when the shell ends, the next one restores the saved part.

    `sb` must have been created with env GREETING=hi.
    """
    r = await sb.exec(
        "mkdir -p proj && cd proj && export FOO=bar && plain=kept && greet() { echo \"$GREETING $1\"; } && "
        "alias ll='ls -la'; sleep 30 & echo started"
    )
    assert (r.exit_code, r.output) == (0, "started\n")
    r = await sb.exec("basename $PWD; echo FOO=$FOO plain=$plain; greet world; type ll | head -1; jobs | grep -c 'sleep 30'")
    assert r.output.splitlines() == ["proj", "FOO=bar plain=kept", "hi world", "ll is aliased to `ls -la'", "1"]
    assert (await sb.exec("kill %1; wait %1; echo $?; set -e")).output == "143\n"  # the job of an earlier command

    # Options carry too: `set -e` ends the shell at the next failure, with that failure's exit code...
    r = await sb.exec("echo before; false; echo after")
    assert (r.exit_code, r.output) == (1, "before\n")
    # ...and the next command runs in a new shell with the saved cwd, exports, functions and aliases.
    r = await sb.exec("basename $PWD; echo FOO=$FOO plain=$plain; greet again; type ll | head -1; false; echo 'set -e is gone'")
    assert r.output.splitlines() == ["proj", "FOO=bar plain=", "hi again", "ll is aliased to `ls -la'", "set -e is gone"]
    r = await sb.exec("echo out; echo err >&2; exit 42")
    assert (r.exit_code, r.output) == (42, "out\nerr\n")
    # A shell that exits while a subshell of its own lives on (holding the shell's stdout) is done too.
    r = await sb.exec("(while :; do sleep 1; done) & echo left; exit 3", timeout_s=20)
    assert (r.exit_code, r.output, r.timed_out) == (3, "left\n", False)
    await sb.interrupt()  # the subshell
    # A command cannot derail the shell that runs it: loop control, a user `read` or `echo`, a closed stdout.
    assert (await sb.exec("echo a; continue; echo b")).output == "a\n"
    assert (await sb.exec("echo c; break 9; echo d")).output == "c\n"
    assert (await sb.exec("read() { return 1; }; echo() { :; }; exec >&-; printf x")).exit_code == 1
    r = await sb.exec("unset -f read echo; basename $PWD; echo FOO=$FOO; cat; echo stdin was empty")
    assert (r.exit_code, r.output) == (0, "proj\nFOO=bar\nstdin was empty\n")


async def check_two_servers_share_the_state(a: Sandbox, b: Sandbox) -> None:
    """Two sandbox objects on one sandbox (two server processes) each see what the other's last command left."""
    await a.exec("mkdir -p one && cd one && export WHO=a && helper() { echo from-a; }")
    r = await b.exec("basename $PWD; echo WHO=$WHO; helper; cd .. && mkdir -p two && cd two && export WHO=b")
    assert r.output == "one\nWHO=a\nfrom-a\n"
    r = await a.exec("basename $PWD; echo WHO=$WHO")
    assert r.output == "two\nWHO=b\n"
    r = await a.exec("export WHO=a2")
    assert (await b.exec("echo WHO=$WHO")).output == "WHO=a2\n"
