"""The HTTP API (FastAPI): ``POST /v1/predict``, ``GET /v1/jobs/{id}``, ``GET /v1/models``,
``GET /healthz``, ``GET /metrics``, and the web page at ``/``.

Photos are answered in the request; videos become background jobs (202 and a status URL).
Blocking work never runs on the event loop: images go to a thread pool of their own (where
their crops meet in the engine's dynamic batches), videos to the job queue's threads, so a long
video never holds up a photo. Every failure is a JSON ``{"error": {"kind", "message"}}``.
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from deepfake_detect import __version__
from deepfake_detect.serve.engine import Deadline, Engine, RequestOptions, TimedOut
from deepfake_detect.serve.errors import ApiError
from deepfake_detect.serve.jobs import JobQueue
from deepfake_detect.serve.metrics import Metrics, MetricsMiddleware
from deepfake_detect.serve.settings import ServeSettings
from deepfake_detect.serve.uploads import (
    Upload,
    UploadFolder,
    check_image,
    check_video,
    receive_upload,
)

STATIC = Path(__file__).parent / "static"
OPTIONS = ("aggregation", "tta", "explain")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def load_engine(settings: ServeSettings) -> Engine:
    """Load what ``--checkpoint`` names, once, and build the engine around it."""
    from deepfake_detect.inference.ensemble import ModelSource

    predictor = ModelSource(settings.checkpoints, settings.config).load()
    return Engine(predictor, device=settings.device, batch_size=settings.batch_size,
                  batch_wait_s=settings.batch_wait_ms / 1000)


def _flag(name: str, value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ApiError(422, "bad_option", f"{name} {value!r}: give true or false")


def _tta(value: str | None) -> str | None:
    """The ``tta`` field: a view spec as ``predict --tta`` takes, or true/false (the web page's
    check box: true is ``default``, identity + horizontal flip)."""
    text = (value or "").strip()
    if text.lower() in _FALSE or text.lower() == "none":
        return None
    return "default" if text.lower() in _TRUE else text


class _Service:
    """The app's parts and the two ways work leaves the event loop."""

    def __init__(self, settings: ServeSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.folder = UploadFolder()
        atexit.register(self.folder.close)  # should the server stop without its shutdown
        self.metrics = Metrics()
        self.jobs = JobQueue(settings.video_workers, settings.max_queued_videos,
                             settings.job_ttl_s,
                             lambda kind: self.metrics.errors.labels(kind).inc())
        self.images = ThreadPoolExecutor(settings.image_workers,
                                         thread_name_prefix="deepfake-detect-image")
        self._queued = 0  # image work submitted and not started yet
        self._lock = threading.Lock()
        self.metrics.watch_queue("video", self.jobs.pending)
        self.metrics.watch_queue("image", lambda: self._queued + self.engine.waiting)

    def close(self) -> None:
        self.jobs.shutdown()
        self.images.shutdown(wait=False, cancel_futures=True)
        self.folder.close()

    async def in_pool(self, work: Callable[[], Any], deadline: Deadline,
                      on_cancel: Callable[[], None]) -> Any:
        """``work()`` on the image pool, waited for until ``deadline``; past it the request
        is answered 504 and the work stops at its next batch (``on_cancel`` runs if it had
        not started)."""
        def started() -> Any:
            with self._lock:
                self._queued -= 1
            return work()

        with self._lock:
            self._queued += 1
        future = self.images.submit(started)
        waited = asyncio.wrap_future(future)
        waited.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        try:
            return await asyncio.wait_for(asyncio.shield(waited), self.settings.timeout_s)
        except (TimeoutError, TimedOut):
            deadline.cancel()
            if future.cancel():
                with self._lock:
                    self._queued -= 1
                on_cancel()
            raise ApiError(504, "timeout", "the analysis took longer than the limit of "
                           f"{self.settings.timeout_s:g} s") from None

    # -- the predict endpoint's two paths --------------------------------------------------------

    async def image(self, upload: Upload, options: RequestOptions) -> dict[str, Any]:
        deadline = Deadline(self.settings.timeout_s)

        def work() -> dict[str, Any]:
            try:
                check_image(upload.path, self.settings.max_pixels)
                return self.engine.analyse(upload.path, media="image", filename=upload.filename,
                                           request=options, deadline=deadline)
            finally:
                upload.discard()

        return await self.in_pool(work, deadline, upload.discard)

    async def video(self, upload: Upload, options: RequestOptions,
                    root_path: str) -> dict[str, Any]:
        # refused here, with a 4xx, rather than as a failed job: not a video, no frame, too big
        deadline = Deadline(self.settings.timeout_s)
        try:
            await self.in_pool(lambda: check_video(upload.path, self.settings.max_pixels),
                               deadline, lambda: None)
        except BaseException:
            upload.discard()
            raise

        def work(job) -> dict[str, Any]:
            running = Deadline(self.settings.timeout_s)  # from the start of the analysis

            def progress(done: int, total: int) -> None:
                job.set_progress(done, total)
                running.check()  # between frames too: raised through the scorer

            try:
                return self.engine.analyse(upload.path, media="video", filename=upload.filename,
                                           request=options, deadline=running, progress=progress)
            except TimedOut:
                raise ApiError(504, "timeout", "the video took longer to analyse than the limit "
                               f"of {self.settings.timeout_s:g} s") from None

        job = self.jobs.submit(work, upload.discard)
        return {"job_id": job.id, "state": job.state,
                "status_url": f"{root_path}/v1/jobs/{job.id}"}


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    """The service for ``settings``; ``engine`` (a loaded model) is made from the settings'
    checkpoints when not given. Use it as an ASGI app (uvicorn) or with a test client; its
    uploads folder is removed when the app shuts down."""
    settings = settings.resolved()
    settings.check()
    service = _Service(settings, engine or load_engine(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    # no /docs: its page would load scripts from a CDN; the README documents the API
    app = FastAPI(title="deepfake-detect", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _add_error_handlers(app, service)

    def authorised(request: Request) -> None:
        token = settings.token
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                  token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API token: send the header "
                           "'Authorization: Bearer <token>'")

    guarded = APIRouter(dependencies=[Depends(authorised)])

    @guarded.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            upload = await asyncio.wait_for(
                receive_upload(request, service.folder, settings.max_upload_bytes),
                settings.timeout_s)
        except TimeoutError:
            raise ApiError(408, "upload_timeout", "the upload took longer than the limit of "
                           f"{settings.timeout_s:g} s") from None
        try:
            unknown = sorted(set(upload.fields) - set(OPTIONS))
            if unknown:
                raise ApiError(422, "bad_option", f"unknown form field {unknown[0]!r}: the "
                               f"options are {', '.join(OPTIONS)}")
            options = service.engine.request(
                upload.fields.get("aggregation"), _tta(upload.fields.get("tta")),
                _flag("explain", upload.fields.get("explain")))
        except BaseException:
            upload.discard()
            raise
        if upload.media == "video":
            accepted = await service.video(upload, options, request.scope.get("root_path", ""))
            return JSONResponse(accepted, status_code=202)
        return JSONResponse(await service.image(upload, options))

    @guarded.get("/v1/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        found = service.jobs.get(job_id)
        if found is None:
            raise ApiError(404, "not_found", "no such job: it never existed or its result "
                           f"was dropped {settings.job_ttl_s:g} s after it finished")
        return found.to_json()

    @guarded.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [service.engine.card]}

    @guarded.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page)
        return HTMLResponse("<!doctype html><title>deepfake-detect</title>"
                            "<p>deepfake-detect: POST a file to /v1/predict</p>")

    app.include_router(guarded)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_error_handlers(app: FastAPI, service: _Service) -> None:
    errors = service.metrics.errors

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        errors.labels(exc.kind).inc()
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        errors.labels(kind).inc()
        return JSONResponse({"error": {"kind": kind, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors.labels("bad_request").inc()
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": {"kind": "bad_request",
                                       "message": f"{where}: {first.get('msg', 'invalid')}"}},
                            status_code=422)
