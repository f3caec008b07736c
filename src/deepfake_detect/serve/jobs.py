"""Video jobs: analysed in their own small thread pool, apart from the image requests, so a
long video never holds up a photo; polled by id.

A job's upload is deleted when the job ends, whatever the outcome. Finished jobs are kept
``ttl_s`` seconds for their result to be fetched, then forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deepfake_detect.serve.errors import ApiError

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed")


@dataclass
class Job:
    id: str
    state: str = "queued"
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def set_progress(self, done: int, total: int) -> None:
        """The ``progress(done, total)`` callback of the scorer: frames processed so far."""
        if total > 0:
            self.progress = max(self.progress, min(1.0, done / total))

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.id, "state": self.state, "progress": round(self.progress, 4),
                "result": self.result, "error": self.error}


class JobQueue:
    """Runs ``work(job) -> result`` for each submitted job on ``workers`` threads; at most
    ``max_pending`` jobs queued or running (more: 503)."""

    def __init__(self, workers: int, max_pending: int, ttl_s: float,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="deepfake-detect-video")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self._on_error = on_error or (lambda kind: None)

    def pending(self) -> int:
        """Jobs queued or running (the video part of the queue-depth metric)."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def submit(self, work: Callable[[Job], dict[str, Any]], cleanup: Callable[[], None]) -> Job:
        """Queue ``work``; ``cleanup`` runs when the job ends (or here, if it is refused)."""
        self._forget_old()
        job = Job(uuid.uuid4().hex)
        with self._lock:
            busy = sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))
            if busy >= self.max_pending:
                cleanup()
                raise ApiError(503, "busy", f"{busy} videos are waiting or being analysed; "
                               "try again later")
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, work, cleanup)
        return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]],
             cleanup: Callable[[], None]) -> None:
        job.state = "running"
        try:
            job.result = work(job)
            job.progress = 1.0
            job.state = "done"
        except ApiError as e:
            job.error = e.body()["error"]
            job.state = "failed"
            self._on_error(e.kind)
        except Exception:  # noqa: BLE001 - reported on the job; the details go to the log only
            log.exception("video job %s failed", job.id)
            job.error = {"kind": "internal", "message": "unexpected error while analysing the "
                         "video; the details are in the server log"}
            job.state = "failed"
            self._on_error("internal")
        finally:
            job.finished = time.monotonic()
            cleanup()

    def _forget_old(self) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in [i for i, j in self._jobs.items()
                           if j.finished is not None and now - j.finished > self.ttl_s]:
                del self._jobs[job_id]

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones are dropped (their uploads go with the folder)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
