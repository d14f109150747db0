#!/usr/bin/env python3
"""Keeps one command running: `bin/respawn CMD ARGS...` (every Procfile process runs under it).

When the command ends it is started again RESTART_DELAY_S later, unless it keeps failing right after it starts: after
START_LIMIT_BURST runs in a row that each failed (a nonzero status, or killed by a crash such as SIGSEGV) within
START_LIMIT_INTERVAL_S of starting, respawn prints one line saying so and exits with the command's status, so honcho
stops everything and the command's own error is the last thing it printed. Status 0, and SIGTERM, SIGINT, SIGHUP or
SIGKILL from outside, are never counted: `kill $(cat data/llm_worker.pid)` restarts the worker however often you do it.

respawn stops the command (SIGTERM, then SIGKILL after STOP_GRACE_S, inside honcho's 5 s) and exits on SIGTERM, SIGINT
or SIGHUP, and when whatever started it ends, even by SIGKILL: its parent (PR_SET_PDEATHSIG, and polled) or any process
above it up to the nearest process-group leader outside its own group. Under honcho that is honcho itself, whose
per-process helpers outlive a `kill -9` of it and would otherwise keep respawn running. The command gets
PR_SET_PDEATHSIG too, so a `kill -9` of respawn does not leave it behind. Linux for those; stdlib only.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

START_LIMIT_BURST = 3  # this many quick failures in a row...
START_LIMIT_INTERVAL_S = 10  # ...each within this long of starting: give up (systemd's StartLimitBurst/IntervalSec)
RESTART_DELAY_S = 0.5
STOP_GRACE_S = 4  # SIGTERM to SIGKILL of the command; honcho itself sends SIGKILL after 5 s
POLL_S = 0.1  # how often the processes above respawn are checked (signals and the command's end wake it at once)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ON_PURPOSE = {0, *(-s for s in (*STOP_SIGNALS, signal.SIGKILL))}  # exits that are not failures
PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
received: list[int] = []
wakeup = -1  # read end of the pipe signal.set_wakeup_fd writes to


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux for SIGTERM when our parent (thread; respawn has one) ends. In the command, before its exec, with
    respawn's pid: exit at once if respawn has already ended."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def stat(pid: int) -> tuple[int, int] | None:
    """(parent, process group) of `pid` from /proc, or None if it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[2])


def lineage() -> list[int]:
    """This process, its parent, and the ancestors above up to the nearest process-group leader outside our group."""
    chain = [os.getpid(), os.getppid()]
    while chain[-1] > 1 and (info := stat(chain[-1])):
        if info[1] == chain[-1] != os.getpgrp():
            break
        chain.append(info[0])
    return chain


def intact(chain: list[int]) -> bool:
    """False once any process of the chain has ended: the one below it has been given another parent."""
    return os.getppid() == chain[1] and all((stat(pid) or (0,))[0] == up for pid, up in zip(chain[1:], chain[2:]))


def wait(chain: list[int], child: subprocess.Popen | None = None, seconds: float = float("inf")) -> bool:
    """Until `child` ends or `seconds` pass: True. False as soon as respawn should stop instead."""
    deadline = time.monotonic() + seconds
    while not received and intact(chain):
        ended = child.poll() is not None if child is not None else time.monotonic() >= deadline
        if ended:
            return True
        if select.select([wakeup], [], [], max(0, min(POLL_S, deadline - time.monotonic())))[0]:
            os.read(wakeup, 4096)
    return False


def say(line: str) -> None:
    try:
        print(f"respawn: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass  # nobody is reading any more: honcho is gone


def status(code: int) -> int:
    return code if code >= 0 else 128 - code


def stop(child: subprocess.Popen | None, name: str) -> int:
    if child is None:
        return 127
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop within {STOP_GRACE_S} s of SIGTERM; sending SIGKILL")
            child.kill()
            child.wait()
    return status(child.returncode)


def main(argv: list[str]) -> int:
    if not argv:
        say("usage: bin/respawn COMMAND [ARG...]")
        return 2
    name = "'" + " ".join(argv) + "'"
    global wakeup
    wakeup, written = os.pipe()
    os.set_blocking(written, False)
    signal.set_wakeup_fd(written)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake wait() up
    die_with_parent()
    chain, me, quick_failures, child = lineage(), os.getpid(), 0, None
    while True:
        started = time.monotonic()
        try:
            child = subprocess.Popen(argv, preexec_fn=lambda: die_with_parent(me))
        except OSError as error:
            child, code = None, 127
            say(f"cannot start {name}: {error}")
        else:
            if not wait(chain, child):
                break
            code = child.returncode
        failed_fast = code not in ON_PURPOSE and time.monotonic() - started < START_LIMIT_INTERVAL_S
        quick_failures = quick_failures + 1 if failed_fast else 0
        if quick_failures >= START_LIMIT_BURST:
            say(f"{name} failed {quick_failures} times in a row within {START_LIMIT_INTERVAL_S} s of starting; "
                "not restarting (see its last message above)")
            return status(code)
        how = f"exited with status {code}" if code >= 0 else f"ended by signal {-code} ({signal.strsignal(-code)})"
        say(f"{name} {how}; restarting")
        if not wait(chain, seconds=RESTART_DELAY_S):
            break
    if not received:
        say(f"what started it has ended; stopping {name}")
    return stop(child, name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
