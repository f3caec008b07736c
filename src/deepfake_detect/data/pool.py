"""Worker processes for the per-file jobs of ``prepare`` and ``synthesize``.

Spawned, not forked (a forked child inherits torch's OpenMP pools broken), and tied to their
parent: when the parent dies, even by SIGKILL, the workers end too instead of idling forever
with a face model in memory.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def exit_with_parent(parent: int) -> None:
    """End this process when process ``parent`` dies: the kernel's parent-death signal where
    there is one (Linux), and a watchdog thread on the parent's pid everywhere."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (AttributeError, OSError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _start(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    exit_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """``workers`` spawned processes that end with this one."""
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start, initargs=(os.getpid(), initializer, initargs),
    )
