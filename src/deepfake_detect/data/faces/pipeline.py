"""The face pipeline: frames -> faces detected in batches -> tracked -> cut, for videos and photos.

This is the one place that loop exists. ``prepare`` (and through it the face-crop cache of the
videos in dataset folders, and sequence-detector prediction) writes the cuts to disk; prediction
on raw photos and videos (:class:`~deepfake_detect.inference.media_scoring.MediaScorer`) scores
them in memory. Both get the same crops for the same settings.

A video is streamed: only the sampled frames are decoded (:func:`~deepfake_detect.data.video.
read_frames`), in a background thread a detection batch ahead, and faces are found
``detect.batch_size`` frames at a time. Photos are detected in batches of as many photos. A
frame or photo without a face yields one :class:`FaceCut` without pixels whose ``reason`` says
why, so that callers can account for every frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import Face, FaceDetector
from deepfake_detect.data.faces.cascade import build_face_finder
from deepfake_detect.data.faces.crop import cut_faces, transform_points
from deepfake_detect.data.faces.track import FaceTracker
from deepfake_detect.data.images import load_rgb
from deepfake_detect.data.video import FrameStream, VideoError, is_video_file, read_frames

NO_FACE = "no face detected"
NONE_SELECTED = "no face passed the selection"


@dataclass
class FaceCut:
    """One face cut out of a frame (or photo), or, without ``pixels``, a frame without a face."""

    frame: int  # index of the frame in the video; 0 for a photo
    time: float  # seconds into the video; 0.0 for a photo
    pixels: np.ndarray | None = None  # size x size x 3 uint8 RGB crop; None: no face here
    face: Face | None = None  # the detection, in frame pixels (box, score, keypoints, landmarks)
    track: int | None = None  # track id across frames; None when only the largest face is kept
    matrix: np.ndarray | None = None  # 2 x 3 frame -> crop affine
    reason: str = ""  # why this frame has no face (no face detected / none passed the selection)

    @property
    def ok(self) -> bool:
        return self.pixels is not None

    @property
    def box(self) -> np.ndarray | None:
        """The face box ``x1, y1, x2, y2`` in frame pixels."""
        return None if self.face is None else self.face.box

    @property
    def landmarks(self) -> np.ndarray | None:
        """The face's landmarks (its 5 keypoints when the backend gives no more) in crop pixels,
        ``(K, 2)``; None when the detector gives none."""
        if self.face is None or self.matrix is None:
            return None
        points = self.face.landmarks if self.face.landmarks is not None else self.face.keypoints
        return None if points is None else transform_points(points, self.matrix)


class MediaFaces:
    """The face cuts of one video or photo, in frame order; iterate it once.

    A video decodes while it is iterated; ``frames``, ``short``, ``notes``, ``decode_error``
    and ``failure`` are complete once iteration has ended. ``failure`` is ``(status, detail)``
    when nothing could be read (``unreadable``, ``no_video_stream``, ``no_frames``): then there
    are no cuts. ``decode_error``: decoding stopped mid-way; the frames before it were used.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        cuts: Iterable[FaceCut] = (),
        *,
        stream: FrameStream | None = None,
        frames: int = 0,
        failure: tuple[str, str] | None = None,
    ) -> None:
        self.path = path
        self.kind = kind  # "video" | "image"
        self.failure = failure
        self.decode_error: str | None = None
        self._cuts = cuts
        self._stream = stream
        self._frames = frames
        self._started = False

    def __iter__(self) -> Iterator[FaceCut]:
        if self._started:
            raise RuntimeError(
                f"the faces of {self.path} were already read; ask the pipeline again"
            )
        self._started = True
        yield from self._cuts
        stream = self._stream
        if stream is not None:
            if stream.read == 0:
                self.failure = ("no_frames", stream.error or "no frames could be decoded")
            elif stream.error:
                self.decode_error = stream.error

    @property
    def frames(self) -> int:
        """Frames read so far (1 for a photo that could be read)."""
        return self._stream.read if self._stream is not None else self._frames

    @property
    def planned(self) -> int | None:
        """Frames the sampling plan will read (1 for a photo; None for a video whose plan is
        open-ended, e.g. every frame of a stream of unknown length): a progress total."""
        return self._stream.planned if self._stream is not None else 1

    @property
    def short(self) -> bool:
        """A video with fewer frames than asked for: all there were were taken."""
        return bool(self._stream is not None and self._stream.short)

    @property
    def notes(self) -> list[str]:
        return list(self._stream.notes) if self._stream is not None else []


class FacePipeline:
    """Finds, selects, tracks and cuts the faces of videos and photos as ``settings`` say
    (``frames``: which frames of a video; ``detect``: the face detector and its batch size;
    ``crop``: which faces and how they are cut).

    ``detector`` replaces the one the settings would build (tests, or one shared detector), or
    is a function that builds it. Either way it is built on first use, so a pipeline that never
    detects (every file unreadable) loads no face model.
    """

    def __init__(
        self,
        settings: PrepareConfig,
        detector: FaceDetector | Callable[[], FaceDetector] | None = None,
    ) -> None:
        self.settings = settings
        self._detector = detector

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = build_face_finder(self.settings.detect, self.settings.crop)
        elif not hasattr(self._detector, "detect"):  # a function that builds it
            self._detector = self._detector()
        return self._detector

    def _tracker(self) -> FaceTracker | None:
        # every selection but "largest" may keep several faces per frame: track them
        return FaceTracker() if self.settings.crop.select != "largest" else None

    # -- one file -------------------------------------------------------------------------------

    def file(self, path: str | Path) -> MediaFaces:
        """The faces of a video or photo (by extension). Never raises for a file that cannot be
        read: that is its ``failure``."""
        path = Path(path)
        if is_video_file(path):
            try:
                return self.video(path)
            except VideoError as e:
                return MediaFaces(path, "video", failure=(e.reason, str(e)))
        (faces,) = self.photos([path])
        return faces

    # -- videos ---------------------------------------------------------------------------------

    def video(self, path: str | Path) -> MediaFaces:
        """The faces of the sampled frames of a video, decoded and detected while iterated.

        Raises :class:`~deepfake_detect.data.video.VideoError` when the file cannot be opened
        or has no video stream (:meth:`file` turns that into a ``failure``)."""
        path = Path(path)
        stream = read_frames(path, self.settings.frames)
        return MediaFaces(path, "video", self._video_cuts(stream), stream=stream)

    def _video_cuts(self, stream: FrameStream) -> Iterator[FaceCut]:
        size = self.settings.detect.batch_size
        tracker = self._tracker()
        batch: list[tuple[int, float, np.ndarray]] = []
        for frame in in_background(stream, depth=size):
            batch.append((frame.index, frame.time, frame.image))
            if len(batch) >= size:
                yield from self._detect_and_cut(batch, tracker)
                batch = []
        if batch:
            yield from self._detect_and_cut(batch, tracker)

    # -- photos ---------------------------------------------------------------------------------

    def photos(self, paths: Iterable[str | Path]) -> Iterator[MediaFaces]:
        """The faces of each photo, in the order given, detected ``detect.batch_size`` photos
        at a time. A photo that cannot be decoded has ``failure`` ``("unreadable", why)``."""
        size = self.settings.detect.batch_size
        pending: list[tuple[Path, np.ndarray | None, str]] = []
        images = 0
        for given in paths:
            path = Path(given)
            try:
                pending.append((path, np.asarray(load_rgb(path)), ""))
                images += 1
            except Exception as e:  # noqa: BLE001 - reported per file
                pending.append((path, None, str(e)))
            if images >= size:
                yield from self._photo_batch(pending)
                pending, images = [], 0
        if pending:
            yield from self._photo_batch(pending)

    def _photo_batch(
        self, pending: Sequence[tuple[Path, np.ndarray | None, str]]
    ) -> Iterator[MediaFaces]:
        images = [image for _, image, _ in pending if image is not None]
        found = iter(self.detector.detect(images) if images else [])
        for path, image, error in pending:
            if image is None:
                yield MediaFaces(path, "image", failure=("unreadable", error))
                continue
            cuts = self._cut(image, 0, 0.0, next(found), self._tracker())
            yield MediaFaces(path, "image", cuts, frames=1)

    # -- the shared steps -----------------------------------------------------------------------

    def _detect_and_cut(
        self, frames: Sequence[tuple[int, float, np.ndarray]], tracker: FaceTracker | None
    ) -> list[FaceCut]:
        found = self.detector.detect([image for _, _, image in frames])
        cuts: list[FaceCut] = []
        for (index, when, image), faces in zip(frames, found, strict=True):
            cuts += self._cut(image, index, when, faces, tracker)
        return cuts

    def _cut(
        self, image: np.ndarray, index: int, when: float, faces: list[Face],
        tracker: FaceTracker | None,
    ) -> list[FaceCut]:
        crops = cut_faces(image, faces, self.settings.crop, tracker)
        if not crops:
            return [FaceCut(index, when, reason=NONE_SELECTED if faces else NO_FACE)]
        return [FaceCut(index, when, c.pixels, c.face, c.track, c.matrix) for c in crops]


def in_background(frames: Iterable, depth: int) -> Iterator:
    """Iterate ``frames`` in a thread, ``depth`` items ahead: PyAV decodes and torch detects
    without holding the GIL, so decoding the next frames overlaps detection of these."""
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce() -> None:
        try:
            for item in frames:
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            failure.append(e)
        put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            yield item
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]
