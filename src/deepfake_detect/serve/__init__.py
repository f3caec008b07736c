"""``deepfake-detect serve``: the inference core behind an HTTP API (FastAPI + uvicorn).

:func:`create_app` builds the app from :class:`ServeSettings`; :func:`run_in_thread` serves it
on a loopback port for tests and benchmarks. Imported on demand: the rest of the package never
needs FastAPI.
"""

from deepfake_detect.serve.app import create_app, load_engine
from deepfake_detect.serve.server import run_in_thread
from deepfake_detect.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "load_engine", "run_in_thread"]
