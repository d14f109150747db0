"""bin/respawn as real processes: it restarts a command that ends, gives up on one that keeps failing right after it
starts, stops a command that ignores SIGTERM in time, and never outlives what started it: SIGHUP to honcho's process
group (a closed terminal), `kill -9` of honcho, `kill -9` of respawn itself."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bin.respawn import START_LIMIT_BURST, START_LIMIT_INTERVAL_S, STOP_GRACE_S
from tests.system import ROOT, STOP_TIMEOUT_S, Recorder, descendants

RESPAWN = ROOT / "bin" / "respawn"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def start_time(pid: int) -> str | None:
    """When `pid` started (so a later process given the same pid is not mistaken for it); None once it has ended
    (a zombie has ended: nobody may be left to reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def process_tree(pid: int) -> dict[int, str]:
    return {p: started for p in [pid, *descendants(pid)] if (started := start_time(p))}


def alive(processes: dict[int, str]) -> list[int]:
    return [pid for pid, started in processes.items() if start_time(pid) == started]


def wait_until_ended(processes: dict[int, str], timeout_s: float) -> float:
    """Seconds until every one of `processes` has ended. They are not all ours to wait for, so /proc is read again
    every 10 ms; a TimeoutError names those left after `timeout_s`."""
    started = time.monotonic()
    while alive(processes):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"still running after {timeout_s} s: {alive(processes)}")
        time.sleep(0.01)
    return time.monotonic() - started


class Run:
    """A process in a session of its own, every line it prints (stderr included) recorded as it comes; `end()`
    SIGKILLs whatever it started that is still running."""

    def __init__(self, args: list[str], cwd: Path = ROOT) -> None:
        self.popen = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True)
        self.lines = Recorder()
        self.seen: dict[int, str] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.add(line.rstrip("\n"))

    def wait_for(self, text: str, count: int = 1, timeout_s: float = 10) -> list[str]:
        """The lines containing `text`, once there are `count` of them."""
        def matching(lines: list[str]) -> list[str]:
            return [line for line in lines if text in line]

        self.lines.wait_until(lambda lines: len(matching(lines)) >= count, timeout_s, f"{count} × {text!r}")
        return matching(self.lines.items)

    def snapshot(self) -> dict[int, str]:
        self.seen = process_tree(self.popen.pid)
        return self.seen

    def output(self) -> list[str]:
        self._reader.join(timeout=STOP_TIMEOUT_S)
        return list(self.lines.items)

    def end(self) -> None:
        running = alive(self.seen)  # checked by start time: no pid another process has been given since
        if self.popen.poll() is None:  # not reaped yet, so its pid is still its own
            running += [self.popen.pid, *descendants(self.popen.pid)]
        for pid in running:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(STOP_TIMEOUT_S)
        print("\n".join(self.output()))


def respawn(*command: str) -> Run:
    return Run(["sh", str(RESPAWN), *command])  # as tests/system.py runs it


def with_limits(interval_s: float, burst: int, *command: str) -> Run:
    """respawn with a shorter start-limit window, so a run can outlast it in a test's time."""
    code = (f"import sys; from bin import respawn; respawn.START_LIMIT_INTERVAL_S = {interval_s}; "
            f"respawn.START_LIMIT_BURST = {burst}; sys.exit(respawn.main(sys.argv[1:]))")
    return Run([sys.executable, "-c", code, *command])


def test_a_command_that_keeps_failing_at_once_is_given_up_on():
    started = time.monotonic()
    run = respawn("sh", "-c", "echo 'settings: WEB_PORT is not a number' >&2; exit 3")
    try:
        code = run.popen.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        run.end()
    lines = run.output()
    print(f"gave up after {took:.2f} s")
    assert code == 3 and took < 5
    assert lines.count("settings: WEB_PORT is not a number") == START_LIMIT_BURST
    assert [line for line in lines if "not restarting" in line] == [lines[-1]]
    assert lines[-1] == (f"respawn: 'sh -c echo 'settings: WEB_PORT is not a number' >&2; exit 3' failed "
                         f"{START_LIMIT_BURST} times in a row within {START_LIMIT_INTERVAL_S} s of starting; "
                         "not restarting (see its last message above)")
    assert lines[-2] == "settings: WEB_PORT is not a number"  # the command's own reason, right above


def test_a_command_that_fails_after_running_longer_than_the_window_is_restarted():
    run = with_limits(0.2, 2, "sh", "-c", "echo started; sleep 0.4; exit 1")  # fails 0.4 s in: after the window
    try:
        run.wait_for("started", count=4)  # 3 failures, more than the limit of 2, and still restarted
        assert run.popen.poll() is None
        run.popen.send_signal(signal.SIGTERM)
        run.popen.wait(STOP_TIMEOUT_S)
    finally:
        run.end()
    assert not [line for line in run.output() if "not restarting" in line]


def test_a_command_stopped_on_purpose_is_restarted_however_often():
    """`kill $(cat data/llm_worker.pid)`: the worker exits 0 on SIGTERM, or ends by a signal; never counted."""
    child = ("import os, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
             "print('pid', os.getpid(), flush=True); signal.pause()")
    run = respawn(sys.executable, "-c", child)
    try:
        for times in range(1, 2 * START_LIMIT_BURST + 1):
            pid = int(run.wait_for("pid ", count=times)[-1].split()[1])
            os.kill(pid, signal.SIGTERM if times % 2 else signal.SIGKILL)
        run.wait_for("pid ", count=2 * START_LIMIT_BURST + 1)
        assert run.popen.poll() is None
    finally:
        run.end()
    lines = run.output()
    assert sum("exited with status 0; restarting" in line for line in lines) == START_LIMIT_BURST
    assert sum("ended by signal 9 (Killed); restarting" in line for line in lines) == START_LIMIT_BURST


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period():
    run = respawn("sh", "-c", "trap '' TERM; echo ready; exec sleep 1000")
    try:
        run.wait_for("ready")
        tree = run.snapshot()
        stopped_at = time.monotonic()
        run.popen.send_signal(signal.SIGTERM)
        run.popen.wait(STOP_TIMEOUT_S)
        took = time.monotonic() - stopped_at
        wait_until_ended(tree, 1)
    finally:
        run.end()
    print(f"respawn and its command ended {took:.2f} s after SIGTERM")
    assert STOP_GRACE_S <= took < STOP_TIMEOUT_S
    assert any("did not stop within 4 s of SIGTERM; sending SIGKILL" in line for line in run.output())


def test_kill_9_of_respawn_ends_its_command():
    run = respawn("sh", "-c", "echo ready; exec sleep 1000")
    try:
        run.wait_for("ready")
        tree = run.snapshot()
        assert len(tree) == 2  # respawn (the shell script exec'd python) and the command
        run.popen.kill()
        took = wait_until_ended(tree, STOP_TIMEOUT_S)
    finally:
        run.end()
    print(f"the command ended {took:.2f} s after kill -9 of respawn")


def honcho(tmp_path: Path, **lines: str) -> Run:
    """`honcho start` of a Procfile whose every line runs under bin/respawn, as the real one does."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("".join(f"{name}: {shlex.quote(str(RESPAWN))} {line}\n" for name, line in lines.items()))
    (tmp_path / "empty.env").write_text("")
    return Run([sys.executable, "-m", "honcho", "start", "-f", str(procfile), "-e", str(tmp_path / "empty.env")],
               cwd=tmp_path)


def sleepers(tmp_path: Path) -> Run:
    run = honcho(tmp_path, **{name: f"sh -c 'echo ready {name}; exec sleep 1000'" for name in ("one", "two")})
    run.wait_for("ready one")
    run.wait_for("ready two")
    # per line: honcho's helper process, its `sh -c`, respawn, the command; and honcho itself
    assert len(run.snapshot()) == 1 + 2 * 4, run.seen
    return run


def test_sighup_to_honchos_group_ends_every_process(tmp_path):
    """Closing the terminal: SIGHUP reaches honcho's process group, not the sessions honcho starts each line in."""
    run = sleepers(tmp_path)
    try:
        os.killpg(run.popen.pid, signal.SIGHUP)
        took = wait_until_ended(run.seen, STOP_TIMEOUT_S)
    finally:
        run.end()
    print(f"every process ended {took:.2f} s after SIGHUP")


def test_kill_9_of_honcho_ends_every_process(tmp_path):
    """honcho's helper for each line outlives it; respawn notices that honcho is gone from /proc."""
    run = sleepers(tmp_path)
    try:
        run.popen.kill()
        took = wait_until_ended(run.seen, STOP_TIMEOUT_S)
    finally:
        run.end()
    print(f"every process ended {took:.2f} s after kill -9 of honcho")


def test_under_honcho_a_command_that_cannot_start_stops_everything_with_its_reason_in_view(tmp_path):
    run = honcho(tmp_path, broken="sh -c 'echo cannot bind 127.0.0.1:5001 >&2; exit 3'",
                 fine="sh -c 'echo ready; exec sleep 1000'")
    try:
        started = time.monotonic()
        code = run.popen.wait(timeout=15)
        took = time.monotonic() - started
    finally:
        run.end()
    print(f"honcho ended {took:.2f} s after it started")
    broken = [line.split(" | ", 1)[1] for line in run.output() if line.split()[1:2] == ["broken.1"]]
    assert code == 3
    assert broken[-1].startswith("respawn: ") and "not restarting (see its last message above)" in broken[-1]
    assert broken[-2] == "cannot bind 127.0.0.1:5001"
    assert sum("not restarting" in line for line in broken) == 1
