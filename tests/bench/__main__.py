"""`bin/bench` / `python -m tests.bench`: run every figure and print the table (see tests/bench/__init__.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from tests.bench.big_lists import big_lists
from tests.bench.figures import live_figures, long_history, ratio, zmq_floor
from tests.bench.browser import first_visible_token
from tests.bench.prompt_cache import first_comment, prompt_cache
from tests.bench.harness import QUICK, Config, FakeOllamaProcess, bench_system, exit_on_sigterm, progress
from tests.bench.report import judge, runs_table, table
from tests.bench.workers import several_workers, worker_scaling

WORKERS = 3  # figures 10 to 12, unless --workers says otherwise


# the whole run


def machine() -> dict:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()}


def with_workers(tmp_path: Path, fake: FakeOllamaProcess, config: Config, compression: str | None,
                 workers: int) -> dict:
    """Figures 1 to 6 again, then 10 and 11, on a system with several workers (figure 7 kills *the* worker: not
    meaningful with several; figure 8 does not involve the workers)."""
    progress(f"starting bus, web and {workers} workers (under bin/respawn)")
    fake.take_sent()  # nothing written before belongs to these figures
    with bench_system(tmp_path, fake.url, respawn=True, workers=workers) as app:
        progress(f"1-6 again with {workers} workers")
        results = {"several_workers": asyncio.run(live_figures(app, fake, config, compression, recovery=False))}
        results["several_workers"]["workers"] = workers
        results.update(asyncio.run(several_workers(app, fake, config, workers)))
    return results


def run(config: Config, compression: str | None = "deflate", workers: int = WORKERS) -> dict:
    results = {"machine": machine(), "config": asdict(config) | {"compression": compression}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp_path = Path(tmp)
        progress("9: the ZeroMQ floor")
        results["floor"] = zmq_floor(tmp_path, config.floor_messages, config.floor_gap_s)
        fake = FakeOllamaProcess()
        try:
            progress("starting bus, web and worker (under bin/respawn)")
            with bench_system(tmp_path / "live", fake.url, respawn=True) as app:
                results.update(asyncio.run(live_figures(app, fake, config, compression)))
            results["long_history"] = {}
            for entries in config.history_sizes:
                progress(f"8: long history, {entries:,} journal entries")
                results["long_history"][str(entries)] = long_history(tmp_path / f"history-{entries}", fake.url,
                                                                     entries, config.page_loads)
            progress("15: chromium, Send → first visible token")
            results["browser_first_token"] = first_visible_token(tmp_path / "browser", fake, config.browser_rounds)
            results["big_lists"] = big_lists(tmp_path / "big-lists", fake, config.big_list_sizes,
                                             config.big_list_loads, changes=config.big_list_changes)
            results.update(with_workers(tmp_path / f"workers-{workers}", fake, config, compression, workers))
        finally:
            fake.stop()
        progress("13: prompt tokens evaluated per reply, today's prompt policy against the one before")
        results["prompt_cache"] = prompt_cache()
        progress("13: the first comment after start, with a model that takes seconds to load")
        results["prompt_cache"]["first_comment"] = first_comment(tmp_path / "first-comment")
    floor = results["floor"]["latency_ms"]
    results["relay"]["ratio_to_floor"] = ratio(results["relay"]["overhead_ms"], floor)
    results["action_to_first_token"]["ratio_to_floor"] = ratio(results["action_to_first_token"]["overhead_ms"], floor)
    results["worker_scaling"] = worker_scaling(results, results["several_workers"])
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["duration_s"] = time.monotonic() - started
    results["targets"] = judge(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/bench", description="Benchmark the relay, the app and recovery "
                                     "(issue 6) against real processes and the fake Ollama.")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration, as the smoke test runs it")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"),
                        help="where to write the figures (default: %(default)s)")
    parser.add_argument("--no-compression", action="store_true",
                        help="tabs do not offer permessage-deflate (browsers do): shows what compression costs")
    parser.add_argument("--workers", type=int, default=WORKERS, choices=range(2, 9), metavar="{2..8}",
                        help="workers for figures 10 to 12 (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="run everything N times back to back, then print each run's p99 figures (issue 16: "
                        "the targets must hold in every run); the JSON file holds the list")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    runs = []
    for number in range(args.runs):
        if args.runs > 1:
            progress(f"run {number + 1} of {args.runs}")
        results = run(QUICK if args.quick else Config(), None if args.no_compression else "deflate", args.workers)
        results["quick"] = args.quick
        runs.append(results)
        args.json.write_text(json.dumps(runs if args.runs > 1 else results, indent=2) + "\n")  # kept as it goes
        print(table(results), flush=True)
    if args.runs > 1:
        print(runs_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
