"""Sample frames from video files without decoding more, or holding more, than needed.

Frames come out of :func:`read_frames` one at a time as upright 8-bit RGB arrays. For evenly
spaced sampling the decoder seeks to the key frame before each far-away target and decodes
forward from there; close targets are reached by decoding on. Targets are found by timestamp,
so variable-frame-rate video gives frames at the right moments, and a file that breaks off
mid-way gives the frames before the damage plus a recorded error instead of an exception.
"""

from __future__ import annotations

import contextlib
import math
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.stream import Disposition

from deepfake_detect.config.schema import FramesConfig
from deepfake_detect.errors import DataError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})

# A seek flushes the decoder and restarts its threads; skipping fewer frames than this is
# cheaper done by decoding on.
_MIN_SKIP_FRAMES = 12
# fps beyond this is a container's tick rate, not a frame rate
_MAX_FPS = 1000.0

_FIXES = {
    "unreadable": "check that it is a complete video file that plays (re-download it, or "
    "re-encode it, e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`), or remove it from the data",
    "no_video_stream": "remove it from the data, or point to the video it belongs to",
    "no_frames": "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or remove it "
    "from the data",
}


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` has a video file extension (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoError(DataError):
    """A video file that cannot be used; ``reason`` is a short code for reports:
    ``unreadable``, ``no_video_stream`` or ``no_frames``."""

    def __init__(self, path: str | Path, reason: str, detail: str, fix: str | None = None) -> None:
        fix = fix or _FIXES.get(reason)
        super().__init__(f"cannot read video {path}: {detail}" + (f"; {fix}" if fix else ""))
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        self.fix = fix

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason, self.detail, self.fix))


@dataclass
class VideoInfo:
    path: Path
    width: int  # as displayed, i.e. after rotation
    height: int
    rotation: int  # degrees clockwise applied to decoded frames to show them upright
    fps: float  # average frame rate; 0.0 when the file does not tell
    duration: float | None  # seconds
    frame_count: int | None  # exact when the container counts frames, else duration * fps
    codec: str
    has_audio: bool
    start_time: float = 0.0  # time of the first frame, seconds


@dataclass
class VideoFrame:
    index: int  # the planned frame index (position in a constant-rate timeline)
    time: float  # the frame's real presentation time, seconds
    image: np.ndarray  # H x W x 3 uint8 RGB, upright


def plan_indices(frame_count: int, frames: FramesConfig) -> list[int]:
    """The frame indices ``frames`` asks for in a video of ``frame_count`` frames."""
    if frame_count <= 0:
        return []
    if frames.sampling == "all":
        return list(range(frame_count))
    if frames.sampling == "every":
        return list(range(0, frame_count, frames.every))
    if frame_count <= frames.count:
        return list(range(frame_count))
    spots = np.rint(np.linspace(0, frame_count - 1, frames.count)).astype(int)
    return list(dict.fromkeys(int(i) for i in spots))


@contextlib.contextmanager
def _open_container(path: Path) -> Iterator[av.container.InputContainer]:
    """``av.open`` with every failure to open turned into a ``VideoError("unreadable")``."""
    if not path.exists():
        raise VideoError(path, "unreadable", "the file does not exist", fix="check the path")
    if not path.is_file():
        raise VideoError(path, "unreadable", "not a file", fix="point to a video file")
    if path.stat().st_size == 0:
        raise VideoError(path, "unreadable", "the file is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise VideoError(path, "unreadable", f"FFmpeg cannot open it as a video ({why})") from None
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.VideoStream:
    """The first real video stream; cover art (an attached picture) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            if stream.codec_context is None:
                raise VideoError(path, "unreadable", "this FFmpeg has no decoder for its codec")
            return stream
    kinds = sorted({s.type for s in container.streams if s.type != "video"})
    has = f"it has {', '.join(kinds)} streams but" if kinds else "it has"
    raise VideoError(path, "no_video_stream", f"{has} no video stream")


def _snap_rotation(degrees: float) -> int:
    return round(degrees / 90.0) % 4 * 90


def _rotation_cw(frame: av.VideoFrame, stream: av.video.VideoStream) -> int:
    """Clockwise degrees that make ``frame`` upright.

    The display matrix (what phones write) wins; FFmpeg reports it counter-clockwise. Older
    muxers wrote a ``rotate`` tag instead, which counts clockwise.
    """
    ccw = frame.rotation or 0
    if ccw:
        return _snap_rotation(-ccw)
    for key, value in stream.metadata.items():
        if key.lower() == "rotate":
            with contextlib.suppress(ValueError):
                return _snap_rotation(float(value))
    return 0


def _upright(image: np.ndarray, rotation_cw: int) -> np.ndarray:
    if not rotation_cw:
        return image
    # np.rot90 turns counter-clockwise for positive k; contiguous so torch.from_numpy accepts it
    return np.ascontiguousarray(np.rot90(image, k=-(rotation_cw // 90)))


def _frame_rate(stream: av.video.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 0 < float(rate) <= _MAX_FPS:
            return float(rate)
    return 0.0


def _probe(
    container: av.container.InputContainer, stream: av.video.VideoStream, path: Path
) -> VideoInfo:
    """Container facts plus the first frame, which tells rotation, size and start time."""
    first = None
    try:
        for frame in container.decode(stream):
            first = frame
            break
    except av.error.FFmpegError as e:
        raise VideoError(path, "unreadable", f"its first frame cannot be decoded ({e})") from None
    if first is None:
        raise VideoError(path, "no_frames", "its video stream holds no decodable frame")

    fps = _frame_rate(stream)
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    if stream.frames > 0:
        frame_count: int | None = stream.frames
    elif duration and fps:
        frame_count = max(1, round(duration * fps))
    else:
        frame_count = None

    rotation = _rotation_cw(first, stream)
    width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    if first.time is not None:
        start = float(first.time)
    elif stream.start_time is not None and stream.time_base:
        start = float(stream.start_time * stream.time_base)
    else:
        start = 0.0
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        rotation=rotation,
        fps=fps,
        duration=duration,
        frame_count=frame_count,
        codec=stream.codec_context.name,
        has_audio=bool(container.streams.audio),
        start_time=start,
    )


def probe_video(path: str | Path) -> VideoInfo:
    """Size, rotation, rate, length and codec of a video (decodes only its first frame)."""
    path = Path(path)
    with _open_container(path) as container:
        return _probe(container, _video_stream(container, path), path)


def _count_packets(path: Path) -> int:
    """Frames in the video stream, counted by demuxing only (no decoding)."""
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        # the demuxer ends with empty packets that only flush the decoder
        return sum(1 for packet in container.demux(stream) if packet.size)


class _KeyFrames:
    """Where the key frames are, to decide whether a seek skips enough decoding to pay off.

    MP4/AVI indexes list every frame with its key flag; other containers (MKV cues, WebM) list
    few, so the longest key frame interval is learned while decoding instead.
    """

    def __init__(self, stream: av.video.VideoStream) -> None:
        self.times: list[float] | None = None
        entries = stream.index_entries
        if stream.frames > 0 and entries is not None and len(entries) >= stream.frames:
            tb = float(stream.time_base)
            self.times = sorted(e.timestamp * tb for e in entries if e.is_keyframe) or None
        self._calibrated = False
        self.max_gap: float | None = None
        self._last: float | None = None  # last key frame of the current run of decoding

    def observe(self, is_key: bool, t: float) -> None:
        if is_key:
            if self.times is not None and not self._calibrated:
                # Index entries are decode times; with B-frames a key frame is shown a few
                # frames later, and seeking goes by the time shown. The first key frame, decoded
                # before any seek, tells the shift.
                self._calibrated = True
                shift = t - self.times[0]
                if 0 < shift < 1.0:
                    self.times = [k + shift for k in self.times]
            if self._last is not None and t > self._last:
                self.max_gap = max(self.max_gap or 0.0, t - self._last)
            self._last = t

    def restart(self) -> None:
        """After a seek the frames before are no longer a continuous run."""
        self._last = None

    def skipped_by_seek(self, now: float, aim: float) -> float:
        """Seconds of decoding a seek to ``aim`` saves, from the current position ``now``."""
        if self.times is not None:
            i = bisect_right(self.times, aim) - 1
            return self.times[i] - now if i >= 0 else 0.0
        if self.max_gap is None:
            return 0.0  # nothing learned yet: a seek might land right back here
        gap = self.max_gap
        if self._last is not None:
            gap = max(gap, now - self._last)  # the current interval is at least this long
        # assuming no interval is longer than the longest seen, a key frame lies in (aim - gap, aim]
        return aim - gap - now


@dataclass
class _Decoded:
    frame: av.VideoFrame
    time: float


class FrameStream:
    """The frames :func:`read_frames` planned, decoded lazily; iterate it once.

    ``read``, ``short``, ``notes`` and ``error`` fill in while iterating. A decoding error
    mid-way (a truncated file) ends iteration and is kept in ``error``; the frames already
    yielded stay valid. ``decoded`` (frames the decoder produced) and ``seeks`` measure work.
    """

    def __init__(
        self, path: Path, info: VideoInfo, frames: FramesConfig, count: int | None, exact: bool
    ) -> None:
        self.path = path
        self.info = info
        self.frames = frames
        self.planned: int | None = len(plan_indices(count, frames)) if count is not None else None
        self.read = 0
        self.short = False
        self.notes: list[str] = []
        self.error: str | None = None
        self.decoded = 0
        self.seeks = 0
        self._count = count  # the frame count the plan was made for
        self._exact = exact  # counted, rather than estimated from duration * fps
        self._started = False
        self._container: av.container.InputContainer | None = None
        self._stream: av.video.VideoStream | None = None
        self._source: Iterator[av.VideoFrame] | None = None

    def __repr__(self) -> str:
        return (
            f"FrameStream({self.path}, planned={self.planned}, read={self.read}, "
            f"short={self.short}, error={self.error!r})"
        )

    def __iter__(self) -> Iterator[VideoFrame]:
        if self._started:
            raise RuntimeError(
                f"the frames of {self.path} were already read; call read_frames again"
            )
        self._started = True
        return self._generate()

    # decoding ------------------------------------------------------------------------------

    def _generate(self) -> Iterator[VideoFrame]:
        with _open_container(self.path) as container:
            stream = _video_stream(container, self.path)
            stream.thread_type = "AUTO"  # frame and slice threads: large speed-up for H.264
            self._container, self._stream = container, stream
            self._source = container.decode(stream)
            try:
                if self.frames.sampling == "even" and self.info.fps > 0:
                    yield from self._by_time(plan_indices(self._count or 0, self.frames))
                else:
                    yield from self._in_order()
            except av.error.FFmpegError as e:
                self.error = (
                    f"decoding stopped after {self.decoded} frames ({e}); the file is probably "
                    f"truncated or damaged, frames before that point were kept"
                )
            finally:
                self._container = self._stream = self._source = None
        if self.read == 0 and self.error is None:
            self.error = "no frames could be decoded"

    def _next(self) -> av.VideoFrame | None:
        frame = next(self._source, None)
        if frame is not None:
            self.decoded += 1
        return frame

    def _seek(self, seconds: float) -> None:
        stream = self._stream
        # lands on the last key frame shown at or before `seconds`: with nothing skipped
        # before the target, the frame nearest to it is among those decoded from there
        offset = round(max(seconds, 0.0) / stream.time_base)
        self._container.seek(offset, backward=True, stream=stream)
        # seek() flushed the decoder; a new generator starts from the new position
        self._source = self._container.decode(stream)
        self.seeks += 1

    def _emit(self, frame: av.VideoFrame, index: int, time: float) -> VideoFrame:
        image = _upright(frame.to_ndarray(format="rgb24"), self.info.rotation)
        self.read += 1
        return VideoFrame(index=index, time=time, image=image)

    def _by_time(self, indices: list[int]) -> Iterator[VideoFrame]:
        """Evenly spaced targets: for each, the frame shown nearest its time on a constant-rate
        timeline. Far targets are reached by seeking, near ones by decoding on."""
        fps, start = self.info.fps, self.info.start_time
        targets = [(i, start + i / fps) for i in indices]
        keys = _KeyFrames(self._stream)
        can_seek = True
        just_sought = False
        prev: _Decoded | None = None  # the frame decoded just before, in the same run
        last_taken = -math.inf
        merged = 0
        sought_for = -1
        j = 0
        while j < len(targets):
            index, target = targets[j]
            # at most one seek per target: an index that misleads cannot make decoding go round
            if (
                can_seek
                and prev is not None
                and sought_for != j
                and keys.skipped_by_seek(prev.time, target) * fps >= _MIN_SKIP_FRAMES
            ):
                sought_for = j
                self._seek(target)
                keys.restart()
                prev, just_sought = None, True
            frame = self._next()
            if frame is None:
                break
            if frame.time is None:
                # without timestamps a seek cannot be checked; count frames instead
                can_seek = False
                t = (prev.time + 1 / fps) if prev is not None else start
            else:
                t = float(frame.time)
            keys.observe(frame.key_frame, t)
            if just_sought:
                just_sought = False
                if t > target + 0.5 / fps:
                    # landed past the target: go back to where decoding was known to work
                    can_seek = False
                    self.notes.append("a seek overshot; decoded forward instead")
                    self._seek(max(last_taken, start))
                    keys.restart()
                    prev = None
                    continue
            if t < last_taken:
                continue  # re-decoding frames before the last one taken, after going back
            cur = _Decoded(frame, t)
            while j < len(targets) and targets[j][1] <= t:
                index, target = targets[j]
                j += 1
                chosen = prev if prev is not None and target - prev.time < t - target else cur
                if chosen.time <= last_taken:
                    merged += 1  # nearest frame already taken: a gap in variable-rate video
                    continue
                last_taken = chosen.time
                yield self._emit(chosen.frame, index, chosen.time)
            prev = cur
        if j < len(targets):
            # the video ended before the plan did; when the count was off by about a frame,
            # its last frame is the one meant for the next target
            if (
                prev is not None
                and prev.time > last_taken
                and targets[j][1] - prev.time <= 1.5 / fps
            ):
                yield self._emit(prev.frame, targets[j][0], prev.time)
                j += 1
            missing = len(targets) - j
            if missing and self.error is None:
                self._note_early_end(missing, decoded_from_start=self.seeks == 0)
        if merged:
            self.notes.append(
                f"{merged} planned frames fell on frames already taken (variable frame rate); "
                f"{self.read} distinct frames taken"
            )

    def _in_order(self) -> Iterator[VideoFrame]:
        """Decode from the start, keeping frames by their position: 'all', 'every', and 'even'
        when the frame rate is unknown."""
        sampling = self.frames.sampling
        wanted: set[int] | None = None
        if sampling == "even":
            wanted = set(plan_indices(self._count or 0, self.frames))
        last_wanted = max(wanted) if wanted else None
        fps, start = self.info.fps, self.info.start_time
        position = 0
        while last_wanted is None or position <= last_wanted:
            frame = self._next()
            if frame is None:
                break
            if wanted is not None:
                take = position in wanted
            else:
                take = sampling == "all" or position % self.frames.every == 0
            if take:
                if frame.time is not None:
                    t = float(frame.time)
                else:
                    t = start + position / fps if fps else 0.0
                yield self._emit(frame, position, t)
            position += 1
        if self.error is not None or self._count is None:
            return
        if wanted is not None:
            if last_wanted is not None and position <= last_wanted:
                missing = sum(1 for i in wanted if i >= position)
                self._note_early_end(missing, decoded_from_start=True, total=position)
        elif position < self._count - (0 if self._exact else max(2, self._count // 20)):
            self.notes.append(
                f"video ended after {position} frames, fewer than the {self._count} expected"
            )

    def _note_early_end(
        self, missing: int, decoded_from_start: bool, total: int | None = None
    ) -> None:
        total = self.decoded if total is None and decoded_from_start else total
        about = "" if self._exact else "about "
        ended = f"after {total} frames" if total is not None else "early"
        self.notes.append(
            f"video ended {ended}, before the {about}{self._count} expected; "
            f"{missing} planned frames missing, {self.read} taken"
        )
        if total is not None and total < self.frames.count and not self.short:
            self.short = True
            self.notes.append(
                f"video has {total} frames, fewer than the {self.frames.count} requested; "
                "all that could be placed were taken"
            )


def read_frames(path: str | Path, frames: FramesConfig) -> FrameStream:
    """The frames of ``path`` that ``frames`` asks for, as a lazily decoding :class:`FrameStream`.

    Raises :class:`VideoError` only when the file cannot be opened, has no video stream, or its
    first frame cannot be decoded; later trouble is recorded on the stream.
    """
    path = Path(path)
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        info = _probe(container, stream, path)
        exact = stream.frames > 0
    count = info.frame_count
    if frames.sampling == "even" and count is None:
        # neither a frame count nor duration and rate: count once, cheaply, to plan
        count, exact = _count_packets(path), True
    frame_stream = FrameStream(path, info, frames, count, exact)
    if frames.sampling == "even" and count is not None and count <= frames.count:
        frame_stream.short = True
        about = "" if exact else "about "
        frame_stream.notes.append(
            f"video has {about}{count} frames, fewer than the {frames.count} requested; all taken"
        )
    return frame_stream


def decode_only(path: str | Path, frames: FramesConfig) -> int:
    """Decode and convert the planned frames, keeping none: a benchmark's baseline."""
    return sum(1 for _ in read_frames(path, frames))
