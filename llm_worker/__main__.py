"""`python -m llm_worker`: run the worker until SIGTERM, SIGINT or SIGHUP. Where DATA_DIR exists (this machine runs
the web too) it writes its pid to DATA_DIR/llm_worker.pid, so a person can restart it on purpose; a worker on
another machine needs no DATA_DIR at all."""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys

from services import config, logs
from services.config import StartupError
from llm_worker.worker import Worker

try:  # the event loop the web runs on too (uvicorn[standard] brings it): each wakeup on a token's way costs less
    from uvloop import run as run_loop
except ImportError:  # (not built for this platform) asyncio's own
    from asyncio import run as run_loop

PID_FILE = "llm_worker.pid"


async def _run(settings: config.Settings) -> None:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        await Worker(settings).run()
    except asyncio.CancelledError:
        pass


def main(argv: list[str] | None = None) -> int:
    log = logs.setup("llm_worker")
    try:
        settings = config.load()
    except StartupError as error:
        log.error("%s", error)
        return 2
    logs.setup("llm_worker", settings.log_level)
    pid_file = settings.data_dir / PID_FILE
    if settings.data_dir.is_dir():
        pid_file.write_text(f"{os.getpid()}\n")
    log.info("worker starting: Ollama at %s, model %s", settings.ollama_url,
             settings.ollama_model or "(best installed)")
    gc.freeze()  # what start-up made lives as long as the process: out of the collector's way (see web/__main__.py)
    try:
        run_loop(_run(settings))
    except StartupError as error:
        log.error("%s", error)
        return 2
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
