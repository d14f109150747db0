"""One copy of each singleton process per DATA_DIR: the bus and the web each hold an exclusive lock on a file in
DATA_DIR/run, a private (0700) folder that also holds the default ipc:// sockets. ZeroMQ silently replaces an ipc
socket file that is already bound, so without the lock a second bus would steal the first one's address."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from services.config import Settings, StartupError


class AlreadyRunning(StartupError):
    """Another process holds this DATA_DIR's lock."""


def private_run_dir(settings: Settings) -> Path:
    """DATA_DIR/run, created 0700 (and made 0700 if it was not), or a StartupError naming the folder."""
    run_dir = settings.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_dir.chmod(0o700)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise StartupError(f"DATA_DIR {settings.data_dir.resolve()} is not writable ({error.strerror}): "
                           "fix its permissions or set DATA_DIR to a folder you can write") from None
    return run_dir


@contextmanager
def hold_lock(settings: Settings, process: str) -> Iterator[None]:
    """`with hold_lock(settings, "web"):` holds DATA_DIR/run/web.lock for the block (the kernel releases it however
    the process ends), or raises AlreadyRunning naming the holder's pid."""
    path = private_run_dir(settings) / f"{process}.lock"
    lock_file = open(path, "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise AlreadyRunning(f"another {process} is already running on DATA_DIR={settings.data_dir.resolve()} "
                             f"(pid {holder}): stop it, or give this copy its own DATA_DIR and WEB_PORT") from None
    with lock_file:
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        yield
