"""Prometheus metrics of one app, in a registry of its own (several apps in one process, as in
the tests, never share or clash), and the ASGI middleware that counts every request.

The middleware is also the last line of defence: an exception no handler took becomes a 500
with a JSON error and no traceback in the body; the traceback goes to the server log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("deepfake_detect.serve")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
INTERNAL = {"kind": "internal",
            "message": "unexpected error; the details are in the server log"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("deepfake_detect_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("deepfake_detect_request_seconds",
                                 "Time from request to response, by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("deepfake_detect_queue_depth", "Work waiting: video jobs queued or "
                           "running, image requests waiting for a worker or their crop batch",
                           ["kind"], registry=self.registry)
        self.errors = Counter("deepfake_detect_errors", "Errors answered, by kind", ["kind"],
                              registry=self.registry)

    def watch_queue(self, kind: str, depth: Callable[[], float]) -> None:
        self.queue.labels(kind).set_function(depth)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts each HTTP request by route template (``/v1/jobs/{job_id}``, not the id) and
    status, times it, and turns an unhandled exception into a JSON 500."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent = {"status": 500, "started": False}

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                sent["status"], sent["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:  # noqa: BLE001 - answered as a JSON 500, the traceback logged
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            self.metrics.errors.labels("internal").inc()
            sent["status"] = 500
            if not sent["started"]:
                body = json.dumps({"error": INTERNAL}).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(sent["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
