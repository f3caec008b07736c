"""Uploads: streamed into the service's private folder, size-limited, typed by their content.

Nothing the client sends names a path: the file is written under a generated name in a folder
made by :func:`tempfile.mkdtemp` (mode 0700, readable by this user only), and its type is
decided by its first bytes, never by the client's file name or content type. The multipart
body is parsed as it arrives (python-multipart's streaming parser) so that an upload over the
limit is refused as soon as the limit is passed, and nothing is spooled anywhere else (a form
parsed by Starlette would land in the system's temp folder first).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from deepfake_detect.serve.errors import ApiError

FILE_FIELD = "file"
HEAD_BYTES = 512  # enough for every signature below (MPEG-TS needs three 188-byte packets)
MAX_FIELD_BYTES = 4096
MAX_PARTS = 16
# what a multipart body adds to the file: boundaries, part headers, the small option fields
BODY_OVERHEAD = 64 * 1024

FORMATS = "JPEG, PNG, GIF, BMP, WebP, TIFF images; MP4, MOV, WebM, MKV, AVI, MPEG-TS videos"


class UploadFolder:
    """The private folder every upload is written to; removed with everything in it on
    :meth:`close` (service shutdown)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="deepfake-detect-serve-"))
        os.chmod(self.path, 0o700)  # mkdtemp makes it so; said again, as it is the point

    def new_file(self) -> Path:
        return self.path / uuid.uuid4().hex

    def files(self) -> list[Path]:
        return sorted(self.path.iterdir()) if self.path.is_dir() else []

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Upload:
    """One received file: ``path`` (generated, in the private folder, its suffix from the
    content so the face pipeline takes it for what it is), the client's ``filename`` (echoed
    only), its ``media`` (image or video) and the form's other ``fields``."""

    path: Path
    filename: str
    size: int
    media: str
    format: str
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


# -- what the bytes are ------------------------------------------------------------------------


def sniff(head: bytes) -> tuple[str, str, str]:
    """``(media, format, suffix)`` of a file from its first bytes; :class:`ApiError` 415 for
    anything that is not a supported image or video."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png", ".png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "gif", ".gif"
    if head.startswith(b"BM") and len(head) >= 26:
        return "image", "bmp", ".bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "webp", ".webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", "tiff", ".tif"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"):
            raise ApiError(415, "unsupported_type",
                           "HEIC/AVIF images are not supported: convert the photo to JPEG or PNG")
        return "video", "mp4", ".mov" if brand == b"qt  " else ".mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):  # QuickTime without ftyp
        return "video", "mov", ".mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "webm" if b"webm" in head[:64] else "matroska", ".mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "avi", ".avi"
    if len(head) >= 377 and head[0] == head[188] == head[376] == 0x47:
        return "video", "mpegts", ".mp4"  # ffmpeg finds the container from the bytes
    if head.startswith(b"\x00\x00\x01\xba"):
        return "video", "mpeg", ".mp4"
    audio = _audio_format(head)
    if audio:
        raise ApiError(415, "no_video", f"the upload is an audio file ({audio}) without pictures: "
                       "send a photo or a video")
    raise ApiError(415, "unsupported_type",
                   f"the upload is not an image or video this service reads ({FORMATS})")


def _audio_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "MP3"
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head.startswith(b"OggS"):
        return "Ogg"
    return None


def check_image(path: Path, max_pixels: int) -> None:
    """Refuse an image whose header claims more than ``max_pixels`` pixels, before any pixel is
    decoded (PIL reads the size from the header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the check below says it
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", "the image is too large to decode safely "
                       f"(more than {max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise ApiError(422, "unreadable", "the image cannot be read: its header is damaged or "
                       "not that of a supported format") from None
    except Exception as e:  # noqa: BLE001 - PIL raises assorted types for broken headers
        why = str(e).replace(str(path), "the upload") or type(e).__name__
        raise ApiError(422, "unreadable", f"the image cannot be read: {why}") from None
    if width < 1 or height < 1:
        raise ApiError(422, "unreadable", f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ApiError(413, "image_too_large", f"the image is {width}x{height} pixels, more than "
                       f"the {max_pixels:,} this service decodes")


def check_video(path: Path, max_pixels: int) -> None:
    """Refuse, before the job is queued, a video that cannot be opened, has no video stream,
    no decodable frame, or frames larger than ``max_pixels`` (decodes its first frame only)."""
    from deepfake_detect.data.video import VideoError, probe_video

    try:
        info = probe_video(path)
    except VideoError as e:
        raise ApiError(422, e.reason, f"cannot read the video: {e.detail}") from None
    if info.width * info.height > max_pixels:
        raise ApiError(413, "video_too_large", f"the video's frames are {info.width}x"
                       f"{info.height} pixels, more than the {max_pixels:,} this service decodes")


# -- receiving ---------------------------------------------------------------------------------


class _Receiver:
    """python-multipart callbacks: the ``file`` part goes to disk chunk by chunk, the small
    fields to memory; every limit is checked as the bytes arrive."""

    def __init__(self, target: Path, limit: int) -> None:
        self.target = target
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.head = b""
        self.sniffed: tuple[str, str, str] | None = None
        self._fh = None
        self._parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._data = bytearray()

    # parser callbacks
    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(400, "bad_request", f"the form has more than {MAX_PARTS} parts")
        self._disposition, self._name, self._is_file, self._data = b"", "", False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name == FILE_FIELD
        if b"filename" in options and not self._is_file:
            raise ApiError(422, "missing_file", f"send the file in the multipart field "
                           f"'{FILE_FIELD}' (not {self._name!r})")
        if self._is_file:
            if self._fh is not None or self.filename is not None:
                raise ApiError(400, "bad_request", "send one file per request")
            raw = options.get(b"filename", b"upload")
            # echoed back only, never used as a path: keep its last component, printable
            name = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            self.filename = "".join(c for c in name if c.isprintable())[:255] or "upload"
            self._fh = open(self.target, "xb")  # noqa: SIM115 - closed in on_part_end / close

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._data.extend(chunk)
            if len(self._data) > MAX_FIELD_BYTES:
                raise ApiError(400, "bad_request", f"form field {self._name!r} is longer than "
                               f"{MAX_FIELD_BYTES} bytes")
            return
        self.size += len(chunk)
        if self.size > self.limit:
            raise ApiError(413, "too_large", "the upload is larger than the limit of "
                           f"{_mib(self.limit)}")
        if self.sniffed is None:
            self.head += chunk[:HEAD_BYTES - len(self.head)]
            if len(self.head) >= HEAD_BYTES:
                self.sniffed = sniff(self.head)  # refuses a wrong type before the rest arrives
        self._fh.write(chunk)

    def on_part_end(self) -> None:
        if self._is_file:
            self._fh.close()
        elif self._name:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB"


async def receive_upload(request: Request, folder: UploadFolder, limit: int) -> Upload:
    """The request's multipart ``file`` (and option fields) written into ``folder``.

    Raises :class:`ApiError`: 413 over ``limit`` bytes (refused from the Content-Length before
    anything is read when the client announces it), 415 for a type not supported, 400/422 for
    a malformed form or a missing or empty file. A refused upload leaves no file behind.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "bad_request", "send the file as multipart/form-data in the field "
                       f"'{FILE_FIELD}'")
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit + BODY_OVERHEAD:
        raise ApiError(413, "too_large", f"the upload is larger than the limit of {_mib(limit)}")
    target = folder.new_file()
    receiver = _Receiver(target, limit)
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": receiver.on_part_begin,
        "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end,
        "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value,
        "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished,
    })
    try:
        # Writing a chunk to a local file takes microseconds: done here, not in a thread.
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if receiver.filename is None:
            raise ApiError(422, "missing_file", f"no file uploaded: send it in the multipart "
                           f"field '{FILE_FIELD}'")
        if receiver.size == 0:
            raise ApiError(422, "empty_file", "the uploaded file is empty (0 bytes)")
        media, fmt, suffix = receiver.sniffed or sniff(receiver.head)
        path = target.with_suffix(suffix)
        target.rename(path)
    except BaseException as e:
        receiver.close()
        target.unlink(missing_ok=True)
        if isinstance(e, FormParserError):
            raise ApiError(400, "bad_request", "the multipart form is malformed") from None
        if isinstance(e, ClientDisconnect):  # nobody to answer; counted, not logged as a bug
            raise ApiError(400, "disconnected", "the client went away during the upload") from None
        raise
    return Upload(path, receiver.filename, receiver.size, media, fmt, receiver.fields)
