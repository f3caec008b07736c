"""Dynamic batching: the calls several threads make to one batched function, merged.

A face detector or a model runs best on full batches, but each video (or each request of a
service) brings only its own few frames. :class:`BatchMerger` lets every thread call the function
with its own items as if it were alone; calls that arrive together run as one batch of at most
``max_items`` items, and each caller gets back exactly its own results. Only one batch runs at a
time, so the wrapped function never sees two threads (a detector or an ONNX session need not be
thread-safe).

A batch starts as soon as it is full, when every registered client (:meth:`BatchMerger.client`)
is waiting (nobody else is coming), or ``wait_s`` after its oldest call arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Call(Generic[T, R]):
    __slots__ = ("items", "since", "results", "error", "done")

    def __init__(self, items: list[T]) -> None:
        self.items = items
        self.since = time.monotonic()
        self.results: list[R] = []
        self.error: BaseException | None = None
        self.done = False


class BatchMerger(Generic[T, R]):
    """``merger(items)`` returns ``fn(items)``, computed in a batch with other threads' items.

    ``fn`` maps a list of items to a list of results of the same length. When a merged batch
    fails, each call in it is retried on its own, so one caller's bad item fails only that
    caller.
    """

    def __init__(
        self, fn: Callable[[list[T]], Sequence[R]], max_items: int, wait_s: float = 0.005
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1 (got {max_items})")
        self.fn = fn
        self.max_items = max_items
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._pending: list[_Call[T, R]] = []
        self._clients = 0
        self._running = False
        self.batches = 0  # how many batches ran (the merging is visible to tests and benchmarks)

    @contextmanager
    def client(self) -> Iterator[BatchMerger[T, R]]:
        """Register the calling thread for the time of the block: while every registered client
        is waiting, a batch starts at once instead of after ``wait_s``."""
        with self._cond:
            self._clients += 1
        try:
            yield self
        finally:
            with self._cond:
                self._clients -= 1
                self._cond.notify_all()  # the others may now all be waiting

    def __call__(self, items: Sequence[T]) -> list[R]:
        call: _Call[T, R] = _Call(list(items))
        if not call.items:
            return []
        with self._cond:
            self._pending.append(call)
            self._cond.notify_all()
            while not call.done:
                wait = self._wait_left()
                if not self._running and wait <= 0:
                    batch = self._take()
                    self._running = True
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._cond.notify_all()
                    continue
                self._cond.wait(None if self._running else wait)
        if call.error is not None:
            raise call.error
        return call.results

    # -- under the lock

    def _wait_left(self) -> float:
        """Seconds until the pending calls should run (<= 0: now)."""
        if not self._pending:
            return float("inf")
        if sum(len(c.items) for c in self._pending) >= self.max_items:
            return 0.0
        if self._clients and len(self._pending) >= self._clients:
            return 0.0  # every registered client waits: nobody else is coming
        return self._pending[0].since + self.wait_s - time.monotonic()

    def _take(self) -> list[_Call[T, R]]:
        """The oldest pending calls that fit in one batch (always at least one)."""
        batch, size = [self._pending.pop(0)], 0
        size = len(batch[0].items)
        while self._pending and size + len(self._pending[0].items) <= self.max_items:
            size += len(self._pending[0].items)
            batch.append(self._pending.pop(0))
        return batch

    # -- outside the lock

    def _run(self, batch: list[_Call[T, R]]) -> None:
        self.batches += 1
        try:
            results = list(self.fn([item for call in batch for item in call.items]))
            if len(results) != sum(len(c.items) for c in batch):
                raise RuntimeError(f"batched function returned {len(results)} results for "
                                   f"{sum(len(c.items) for c in batch)} items")
        except BaseException as e:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                batch[0].error = e
            else:  # find whose items failed: each call alone
                for call in batch:
                    self._run([call])
            for call in batch:
                call.done = True
            return
        start = 0
        for call in batch:
            call.results = results[start:start + len(call.items)]
            start += len(call.items)
            call.done = True
