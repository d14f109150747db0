"""Is throughput with several workers really lower than with one? `python -m tests.bench.scaling [rounds] [workers]`
runs figure 3 (one tab, one 5,000-token reply as fast as the pipeline goes) on a 1-worker and an N-worker system in
alternation, so drift in the machine's speed hits both alike, and prints the medians, their ratio with a bootstrap
95% interval, and the CPU each process spends per token (which, unlike tokens per second, does not depend on what
else the 2 cores are doing)."""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from tests.bench.figures import throughput
from tests.bench.harness import Config, FakeOllamaProcess, Session, bench_system, exit_on_sigterm, paused_gc

RESAMPLES = 2_000


async def one_run(app, fake: FakeOllamaProcess, config: Config) -> dict:
    session = Session(app, fake, "deflate")
    try:
        with paused_gc():
            return await throughput(session, config.throughput_tokens, config.throughput_tokens_per_s)
    finally:
        await session.close()


def ratio_interval(one: list[float], several: list[float], seed: int = 1) -> tuple[float, float]:
    """A bootstrap 95% interval of median(several) / median(one)."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(several, k=len(several)))
                    / statistics.median(rng.choices(one, k=len(one))) for _ in range(RESAMPLES))
    return ratios[int(0.025 * RESAMPLES)], ratios[int(0.975 * RESAMPLES)]


def experiment(rounds: int, workers: int) -> dict:
    config = Config()
    runs: dict[int, list[dict]] = {1: [], workers: []}
    fake = FakeOllamaProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
            for number in range(rounds):
                for count in ((1, workers) if number % 2 == 0 else (workers, 1)):  # ABBA: drift hits both alike
                    with bench_system(Path(tmp) / f"{number}-{count}", fake.url, workers=count) as app:
                        runs[count].append(asyncio.run(one_run(app, fake, config)))
    finally:
        fake.stop()
    rates = {count: [r["relayed_tokens_per_s"] for r in results] for count, results in runs.items()}
    cpu = {count: {name: statistics.median(r["cpu_us_per_token"][name] for r in results)
                   for name in results[0]["cpu_us_per_token"]} for count, results in runs.items()}
    low, high = ratio_interval(rates[1], rates[workers])
    return {"rounds": rounds, "workers": workers, "tokens_per_s": rates,
            "median_tokens_per_s": {count: statistics.median(r) for count, r in rates.items()},
            "ratio": statistics.median(rates[workers]) / statistics.median(rates[1]),
            "ratio_95": [low, high], "cpu_us_per_token_median": cpu,
            "lost": sum(r["lost"] + r["reordered"] + r["duplicated"] for results in runs.values() for r in results)}


if __name__ == "__main__":
    exit_on_sigterm()
    result = experiment(int(sys.argv[1]) if len(sys.argv) > 1 else 10, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    print(json.dumps(result, indent=1))
