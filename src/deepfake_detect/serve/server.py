"""A real server on a loopback port, in a thread: for tests, the browser test and the load
benchmark (``with run_in_thread(app) as base_url: ...``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def run_in_thread(app, host: str = "127.0.0.1", port: int = 0,
                  start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL
    (``http://127.0.0.1:<port>``; ``port`` 0: a free one the system picks). The server, and the
    app's lifespan, end when the block does."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="deepfake-detect-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)
