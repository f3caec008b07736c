"""What ``deepfake-detect serve`` is told: the model, where to listen, and the safety limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from deepfake_detect.errors import ConfigError

TOKEN_ENV = "DEEPFAKE_DETECT_TOKEN"


@dataclass
class ServeSettings:
    """``checkpoints``: one checkpoint, several (an ensemble) or one ensemble .yaml, as for
    ``predict``; ``config``: the model YAML for a checkpoint not written by this tool.

    ``token``: the bearer token every ``/v1`` endpoint and ``/metrics`` ask for (None: open;
    :meth:`resolved` takes it from ``DEEPFAKE_DETECT_TOKEN`` when not given). ``max_upload_mb``:
    the largest upload accepted; ``timeout_s``: the time one request (an image) or one video job
    may take; ``max_pixels``: the largest image or video frame decoded (a header claiming more
    is refused before decoding). ``video_workers``: videos analysed at once (each in its own
    thread, apart from the image requests); ``image_workers``: image requests analysed at once
    (their crops meet in the dynamic batches); ``batch_wait_ms``: how long a crop batch waits
    for other requests' crops; ``max_queued_videos``: video jobs waiting or running before new
    ones are refused (503); ``job_ttl_s``: how long a finished job's result is kept.
    """

    checkpoints: list[Path] = field(default_factory=list)
    config: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_upload_mb: float = 500.0
    timeout_s: float = 300.0
    cors_origins: list[str] = field(default_factory=list)
    device: str = "auto"
    batch_size: int = 64
    max_pixels: int = 100_000_000
    video_workers: int = 1
    image_workers: int = 16
    batch_wait_ms: float = 5.0
    max_queued_videos: int = 16
    job_ttl_s: float = 3600.0

    def __post_init__(self) -> None:
        self.checkpoints = [Path(c) for c in self.checkpoints]
        self.cors_origins = list(self.cors_origins)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def resolved(self) -> ServeSettings:
        """These settings with the token from the environment when none was given."""
        if self.token is None and os.environ.get(TOKEN_ENV):
            self.token = os.environ[TOKEN_ENV]
        return self

    def check(self) -> None:
        """Refuse bad values (:class:`ConfigError`, one line naming the option) before the model
        is loaded."""
        if not self.checkpoints:
            raise ConfigError("give a --checkpoint")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: must be from 0 to 65535")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max-upload-mb {self.max_upload_mb}: must be more than 0")
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout {self.timeout_s}: must be more than 0 seconds")
        if self.token is not None and not self.token.strip():
            raise ConfigError("--token: give a non-empty token (or leave it out)")
        for name in ("max_pixels", "video_workers", "image_workers", "max_queued_videos"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}: must be 1 or more")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"--cors-origin {origin!r}: give an origin such as "
                                  "https://review.example.org")
