"""Frame sampling from video files: the right frames, found cheaply, whatever the file does."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deepfake_detect.config.schema import FramesConfig
from deepfake_detect.data import video
from deepfake_detect.data.video import (
    FrameStream,
    VideoError,
    decode_only,
    is_video_file,
    plan_indices,
    probe_video,
    read_frames,
)

W, H = 64, 48
BLOCK = 8


def number_image(n: int) -> np.ndarray:
    """A frame that shows ``n`` in binary: 16 black/white 8x8 blocks in the top two block rows."""
    img = np.zeros((H, W, 3), np.uint8)
    for bit in range(16):
        if n >> bit & 1:
            r, c = divmod(bit, W // BLOCK)
            img[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 255
    img[2 * BLOCK :, :] = 90  # a constant backdrop, so the numbers are the only change
    return img


def read_number(img: np.ndarray) -> int:
    n = 0
    for bit in range(16):
        r, c = divmod(bit, W // BLOCK)
        # block centres only: lossy coding blurs the edges
        centre = img[r * BLOCK + 2 : (r + 1) * BLOCK - 2, c * BLOCK + 2 : (c + 1) * BLOCK - 2]
        n |= int(centre.mean() > 128) << bit
    return n


def write_video(
    path: Path,
    n: int,
    *,
    codec: str = "libx264",
    fps: int = 25,
    gop: int | None = None,
    pts_ms: list[int] | None = None,
    image: Callable[[int], np.ndarray] = number_image,
    pix_fmt: str = "yuv420p",
    display_rotation: int | None = None,
    tags: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """``n`` frames from ``image(i)``; ``pts_ms`` gives each frame's time for variable rate."""
    options = {}
    if codec == "libx264":
        # near-lossless so the drawn numbers survive; B-frames on (veryfast), as in real files
        options = {"preset": "veryfast", "crf": "8"}
        if gop:
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        first = image(0)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if display_rotation is not None:
            stream.set_display_rotation(display_rotation)
        stream.metadata.update(tags or {})
        for i in range(n):
            img = image(i)
            frame = av.VideoFrame.from_ndarray(img, format="gray" if img.ndim == 2 else "rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def take(path: Path, **frames) -> tuple[list, object]:
    stream = read_frames(path, FramesConfig(**frames))
    return list(stream), stream


@pytest.fixture(scope="module")
def hundred(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "hundred.mp4", 100)


# planning ------------------------------------------------------------------------------------


def test_plan_indices():
    even = plan_indices(100, FramesConfig(count=32))
    assert len(even) == 32 and even[0] == 0 and even[-1] == 99
    assert even == sorted(set(even))
    assert plan_indices(5, FramesConfig(count=32)) == [0, 1, 2, 3, 4]
    assert plan_indices(10, FramesConfig(sampling="every", every=3)) == [0, 3, 6, 9]
    assert plan_indices(4, FramesConfig(sampling="all")) == [0, 1, 2, 3]
    assert plan_indices(0, FramesConfig()) == []


def test_is_video_file():
    assert is_video_file("a/b.MP4") and is_video_file(Path("x.webm"))
    assert not is_video_file("a.png") and not is_video_file("mp4")


# sampling ------------------------------------------------------------------------------------


def test_even_sampling_returns_the_planned_frames(hundred):
    got, stream = take(hundred, count=32)
    planned = plan_indices(100, FramesConfig(count=32))
    assert [f.index for f in got] == planned
    assert [read_number(f.image) for f in got] == planned  # the right pictures, not just labels
    assert got[0].index == 0 and got[-1].index == 99  # spans the whole video
    assert np.allclose([f.time for f in got], [i / 25 for i in planned], atol=1e-3)
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in got)
    assert (stream.planned, stream.read, stream.short, stream.error) == (32, 32, False, None)
    assert stream.notes == []


@pytest.mark.parametrize(
    ("sampling", "every", "expected"),
    [
        ("every", 7, list(range(0, 100, 7))),
        ("all", 1, list(range(100))),
    ],
)
def test_every_and_all(hundred, sampling, every, expected):
    got, stream = take(hundred, sampling=sampling, every=every)
    assert [f.index for f in got] == expected
    assert [read_number(f.image) for f in got] == expected
    assert stream.planned == len(expected) and stream.read == len(expected)


def test_decoding_is_lazy(hundred):
    stream = read_frames(hundred, FramesConfig(count=32))
    assert stream.decoded == 0 and stream.read == 0  # nothing decoded before iterating
    frames = iter(stream)
    first = next(frames)
    assert first.index == 0 and stream.read == 1 and stream.decoded <= 2
    with pytest.raises(RuntimeError, match="already read"):
        iter(stream)
    frames.close()
    assert decode_only(hundred, FramesConfig(count=10)) == 10


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # a full index vs key frames learned
def test_sparse_targets_seek_instead_of_decoding_everything(tmp_path, suffix):
    n = 400
    path = write_video(tmp_path / f"long{suffix}", n, gop=30)
    got, stream = take(path, count=5)
    planned = plan_indices(n, FramesConfig(count=5))
    assert [read_number(f.image) for f in got] == planned == [f.index for f in got]
    assert stream.seeks >= 2
    # every target costs at most a GOP plus the seek lead; decoding all would be 400
    assert stream.decoded < n / 2, stream.decoded

    # dense targets (gap 2 frames, GOP 30) decode straight through
    got, stream = take(path, count=200)
    assert stream.seeks == 0 and stream.read == 200
    assert [read_number(f.image) for f in got] == [f.index for f in got]


def test_a_seek_that_lands_past_its_target_falls_back(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", 300, gop=30)
    real_seek = FrameStream._seek

    def overshooting_seek(self, seconds):
        real_seek(self, seconds + (2.0 if self.seeks == 0 else 0.0))  # as a sloppy demuxer might

    monkeypatch.setattr(FrameStream, "_seek", overshooting_seek)
    got, stream = take(path, count=4)
    assert [read_number(f.image) for f in got] == plan_indices(300, FramesConfig(count=4))
    assert "a seek overshot; decoded forward instead" in stream.notes


def test_unknown_frame_rate_and_count_fall_back_to_counting(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mkv", 50)  # Matroska does not store a frame count
    monkeypatch.setattr(video, "_frame_rate", lambda stream: 0.0)  # nor, now, a rate
    assert probe_video(path).frame_count is None
    got, stream = take(path, count=8)
    planned = plan_indices(50, FramesConfig(count=8))  # 50 found by counting packets
    assert stream.planned == 8 and [f.index for f in got] == planned
    assert [read_number(f.image) for f in got] == planned


def test_variable_frame_rate_picks_frames_by_time(tmp_path):
    # 30 frames 20 ms apart, then 10 frames 200 ms apart: frame positions are not times
    pts = [20 * i for i in range(30)] + [600 + 200 * i for i in range(10)]
    path = write_video(tmp_path / "vfr.mp4", len(pts), pts_ms=pts)
    info = probe_video(path)
    assert info.frame_count == 40
    got, stream = take(path, count=4)
    times = np.array(pts) / 1000
    expected = []
    for i in plan_indices(40, FramesConfig(count=4)):
        expected.append(int(np.argmin(np.abs(times - (info.start_time + i / info.fps)))))
    assert expected != [f.index for f in got]  # position-based picking would be wrong here
    assert [read_number(f.image) for f in got] == expected
    assert np.allclose([f.time for f in got], times[expected], atol=1e-3)
    assert stream.error is None


def test_short_video_gives_all_frames_and_says_so(tmp_path):
    path = write_video(tmp_path / "short.mp4", 5)
    got, stream = take(path, count=32)
    assert [read_number(f.image) for f in got] == [0, 1, 2, 3, 4]
    assert stream.short and stream.read == 5 and stream.planned == 5
    assert "video has 5 frames, fewer than the 32 requested; all taken" in stream.notes


# what frames look like -----------------------------------------------------------------------


def portrait() -> np.ndarray:
    """An upright 48x64 (w x h) picture: white block top-left, grey block bottom-right."""
    img = np.zeros((W, H, 3), np.uint8)
    img[:16, :12] = 255
    img[-16:, -12:] = 120
    return img


@pytest.mark.parametrize(
    ("suffix", "display_ccw", "tag_cw", "rotation"),
    [
        (".mp4", -90, None, 90),  # a phone held upright: display matrix says turn 90 clockwise
        (".mp4", 90, None, 270),
        (".mov", 180, None, 180),
        (".mkv", None, 90, 90),  # legacy `rotate` tag (clockwise)
    ],
)
def test_rotated_video_comes_out_upright(tmp_path, suffix, display_ccw, tag_cw, rotation):
    upright = portrait()
    # the coded picture is the upright one turned back; players rotate it for display
    turns = display_ccw // 90 if display_ccw is not None else -tag_cw // 90
    coded = np.ascontiguousarray(np.rot90(upright, k=-turns))
    path = write_video(
        tmp_path / f"rot{suffix}",
        3,
        image=lambda i: coded,
        display_rotation=display_ccw,
        tags={"rotate": str(tag_cw)} if tag_cw is not None else None,
    )
    info = probe_video(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == (upright.shape[1], upright.shape[0])
    got, _ = take(path, count=3)
    assert len(got) == 3
    for f in got:
        assert f.image.shape == upright.shape and f.image.flags.c_contiguous
        assert np.abs(f.image.astype(int) - upright).mean() < 8  # same picture, same way up


def test_grayscale_video_becomes_rgb(tmp_path):
    ramp = np.tile((np.arange(W) * 4).astype(np.uint8), (H, 1))
    path = write_video(tmp_path / "gray.mkv", 4, codec="ffv1", pix_fmt="gray", image=lambda i: ramp)
    got, _ = take(path, sampling="all")
    assert len(got) == 4
    img = got[0].image
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert np.abs(img[..., 0].astype(int) - ramp).max() <= 2


# broken files --------------------------------------------------------------------------------


def write_silence(out: av.container.OutputContainer) -> None:
    stream = out.add_stream("aac", rate=16000)
    for i in range(5):
        silence = np.zeros((1, 1024), np.float32)
        frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, i * 1024
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as out:
        write_silence(out)
    with pytest.raises(VideoError) as e:
        read_frames(path, FramesConfig())
    assert e.value.reason == "no_video_stream"
    assert str(path) in str(e.value) and "audio" in str(e.value)


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        write_silence(out)
        out.mux(video.encode())  # the video stream is declared but gets no frame
    with pytest.raises(VideoError) as e:
        read_frames(path, FramesConfig())
    assert e.value.reason == "no_frames" and str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 500])
def test_empty_and_garbage_files_are_unreadable(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    for call in (probe_video, lambda p: read_frames(p, FramesConfig())):
        with pytest.raises(VideoError) as e:
            call(path)
        assert e.value.reason == "unreadable" and str(path) in str(e.value)
    again = pickle.loads(pickle.dumps(e.value))  # crosses DataLoader worker processes
    assert again.reason == "unreadable" and str(again) == str(e.value)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(VideoError, match="does not exist") as e:
        probe_video(tmp_path / "nope.mp4")
    assert e.value.reason == "unreadable"


def noise_image(i: int) -> np.ndarray:
    # incompressible frames, so the cut lands mid-stream rather than in the trailer
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_truncated_mp4_with_index_at_end_is_unreadable(tmp_path):
    path = write_video(tmp_path / "cut.mp4", 100, image=noise_image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) was at the end: gone
    with pytest.raises(VideoError) as e:
        read_frames(path, FramesConfig())
    assert e.value.reason == "unreadable" and str(path) in str(e.value)


@pytest.mark.parametrize(("suffix", "options"), [(".mp4", {"movflags": "faststart"}), (".mkv", {})])
def test_truncated_video_gives_the_frames_before_the_damage(tmp_path, suffix, options):
    def image(i):
        img = noise_image(i)
        img[: 2 * BLOCK] = number_image(i)[: 2 * BLOCK]
        return img

    path = write_video(tmp_path / f"cut{suffix}", 100, image=image, container_options=options)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    got, stream = take(path, count=32)  # opens fine: the index is at the front
    assert 0 < stream.read < 32 and stream.read == len(got)
    assert [read_number(f.image) for f in got] == [f.index for f in got]
    # depending on where the cut falls, decoding fails or the stream just ends early
    assert stream.error is not None or any("video ended after" in n for n in stream.notes)


def test_decoding_error_midway_keeps_earlier_frames(hundred, monkeypatch):
    real_next = FrameStream._next

    def failing_next(self):
        if self.decoded == 40:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real_next(self)

    monkeypatch.setattr(FrameStream, "_next", failing_next)
    got, stream = take(hundred, count=32)  # no exception: the error is recorded
    before = [i for i in plan_indices(100, FramesConfig(count=32)) if i < 40]
    assert [f.index for f in got] == before
    assert [read_number(f.image) for f in got] == [f.index for f in got]
    assert "decoding stopped after 40 frames" in stream.error and "truncated" in stream.error


# a real video --------------------------------------------------------------------------------


def test_real_1080p_video(shared):
    path = shared / "media/videos/faces_1080p.mp4"
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (1920, 1080, 0)
    assert 100 <= info.frame_count <= 110 and info.fps > 0
    got, stream = take(path, count=32)
    assert len(got) == 32 and stream.error is None and not stream.short
    assert all(f.image.shape == (1080, 1920, 3) for f in got)
    assert [f.index for f in got] == plan_indices(info.frame_count, FramesConfig(count=32))
    assert all(b.time > a.time for a, b in itertools.pairwise(got))
    small = [f.image[::8, ::8].astype(np.int16) for f in got]
    assert all(np.abs(a - b).mean() > 0 for a, b in itertools.pairwise(small))  # distinct frames
