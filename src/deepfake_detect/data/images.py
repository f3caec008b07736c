"""Decode any image file into 8-bit RGB, and find the files that cannot be decoded."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepfake_detect.errors import DataError

log = logging.getLogger(__name__)

VerifyMode = Literal["none", "header", "full"]
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


class ImageLoadError(DataError):
    """An image file that cannot be decoded; ``path`` and ``reason`` are kept apart for reports."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


class UnsupportedModeError(ValueError):
    """A decoded image whose mode has no conversion to RGB."""


@contextlib.contextmanager
def _opened(path: Path, data: bytes | None = None) -> Iterator[Image.Image]:
    """``Image.open`` of the file at ``path`` (or of its bytes ``data``, e.g. read from a
    shard; ``path`` then only names it) with every decoding failure turned into an
    :class:`ImageLoadError`."""
    if data is None:
        _check_size(path)
    elif not data:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns about odd but readable metadata; decoding tells what matters
            warnings.simplefilter("ignore")
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                yield im
    except ImageLoadError:
        raise
    except UnsupportedModeError as e:
        raise ImageLoadError(path, str(e)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file PIL can identify") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"too large to decode safely ({e})") from None
    except Exception as e:  # PIL raises assorted types (OSError, SyntaxError, ...) for broken files
        raise ImageLoadError(path, f"truncated or corrupt ({e})") from None


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as an upright 8-bit RGB image.

    Transparent pixels are composited on black; 16- and 32-bit images are scaled to 8 bits
    (65535 -> 255), not clipped. Raises :class:`ImageLoadError` for unreadable files.
    """
    with _opened(Path(path)) as im:
        im.load()
        return to_rgb(_upright(im))


def decode_rgb(data: bytes, name: str | Path = "<bytes>") -> Image.Image:
    """:func:`load_rgb` for a file's bytes (``name`` names it in errors)."""
    with _opened(Path(name), data) as im:
        im.load()
        return to_rgb(_upright(im))


def _check_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except OSError as e:
        raise ImageLoadError(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # broken EXIF must not lose an otherwise good image
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (see :func:`load_rgb`)."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in _SIXTEEN_BIT or mode in {"I", "F"}:
        return Image.fromarray(_to_uint8(np.asarray(im)), "L").convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode in {"PA", "RGBa", "La"}:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA"}:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise UnsupportedModeError(f"unsupported image mode {mode} ({e})") from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a single-channel integer or float image to uint8 by its nominal range."""
    a = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(a)
        lo, hi = (0.0, 1.0) if a.min() >= 0 and a.max() <= 1 else (a.min(), a.max())
    elif a.min() >= 0 and a.max() <= 65535:
        # 16-bit data (PIL gives 16-bit PNGs mode I in some versions)
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = a.min(), a.max()
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def check_header(path: str | Path) -> None:
    """Cheap check: the file exists, is not empty, and PIL identifies and verifies it.

    Verification checks structure (e.g. PNG chunk checksums) without decoding pixels, so a
    truncated JPEG can pass; such files are skipped when they fail to load during training.
    """
    path = Path(path)
    with _opened(path) as im:
        if im.width < 1 or im.height < 1:
            raise ImageLoadError(path, f"image has no pixels ({im.width}x{im.height})")
        im.verify()


def verify_images(
    paths: Iterable[str | Path],
    mode: VerifyMode = "header",
    workers: int | None = None,
    progress: bool | None = None,
) -> list[tuple[Path, str]]:
    """``(path, reason)`` for each file that fails the check, in the order of ``paths``.

    ``mode``: "none" checks nothing, "header" runs :func:`check_header`, "full" decodes with
    :func:`load_rgb`. Files are checked in a thread pool (I/O bound); ``progress`` None shows a
    progress bar for many files on a terminal.
    """
    if mode not in ("none", "header", "full"):
        raise DataError(f"data.verify must be none, header or full, not {mode!r}")
    paths = [Path(p) for p in paths]
    if mode == "none" or not paths:
        return []
    check = check_header if mode == "header" else load_rgb

    def one(path: Path) -> tuple[Path, str] | None:
        try:
            check(path)
        except ImageLoadError as e:
            return (path, e.reason)
        return None

    workers = workers or min(32, (os.cpu_count() or 1) * 4)
    if progress is None:
        progress = len(paths) >= 5000 and sys.stderr.isatty()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, paths, chunksize=64)
        if progress:
            results = _with_progress(results, len(paths), f"checking images ({mode})")
        bad = [r for r in results if r is not None]
    if bad:
        log.warning("%d of %d images cannot be read, e.g. %s: %s", len(bad), len(paths), *bad[0])
    return bad


def _with_progress(results, total: int, description: str):
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for r in results:
            bar.advance(task)
            yield r
