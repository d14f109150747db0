"""Where the web and the worker spend their CPU per token: figure 3's long reply (one tab, the fake at 10,000
tokens/s, or the rate given) while py-spy samples both processes. `python -m tests.bench.profile [tokens [rate]]`
prints, for each process,
its CPU µs per token and the functions with the most samples, by own time and by time including what they call.
py-spy is not a dependency of the app: `pip install py-spy` (the benchmark's README section says so)."""
from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.figures import throughput
from tests.bench.harness import FakeOllamaProcess, Session, bench_system, exit_on_sigterm, paused_gc, worker_pids

RATE = 1_000  # py-spy samples per second
TOP = 25


def profile(tokens: int, tokens_per_s: float) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    fake = FakeOllamaProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="profile-") as tmp, bench_system(Path(tmp), fake.url) as app:
            pids = {"web": app.processes["web"].pid, "worker": worker_pids(app)[0]}
            outputs = {name: Path(tmp) / f"{name}.txt" for name in pids}
            samplers = [subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
                                          "--output", str(outputs[name]), "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for name, pid in pids.items()]
            try:
                figure = asyncio.run(measure(app, fake, tokens, tokens_per_s))
            finally:
                for sampler in samplers:
                    sampler.send_signal(2)  # py-spy writes its output on SIGINT
                    sampler.wait(30)
            stacks = {name: output.read_text().splitlines() for name, output in outputs.items()}
    finally:
        fake.stop()
    # (After the block: bench_system keeps stdout for the processes' logs while it runs.)
    print(f"CPU µs per token: {figure['cpu_us_per_token']}")
    for name, lines in stacks.items():
        report(name, lines)


async def measure(app, fake: FakeOllamaProcess, tokens: int, tokens_per_s: float) -> dict:
    session = Session(app, fake, "deflate")
    try:
        with paused_gc():
            return await throughput(session, tokens, tokens_per_s)
    finally:
        await session.close()


def report(name: str, lines: list[str]) -> None:
    """py-spy's raw format: one line per distinct stack, frames joined by ';' (outermost first), then a count."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].rsplit(":", 1)[0].split("/")[-1] + ")"
                  for frame in stack.split(";")]
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    print(f"\n{name}: {samples} samples")
    for title, counter in (("own", own), ("including callees", total)):
        print(f"  top by {title}:")
        for frame, count in counter.most_common(TOP):
            print(f"    {100 * count / samples:5.1f}%  {frame}")


if __name__ == "__main__":
    exit_on_sigterm()
    profile(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, float(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
