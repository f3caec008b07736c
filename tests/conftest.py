from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detect.data.faces.base import Face, FaceDetector

REPO = Path(__file__).resolve().parents[1]

# Tiny test models gain nothing from threads, and spinning OpenMP threads collapse under load.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_dir() -> Path:
    return Path(os.environ.get("DEEPFAKE_DETECT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.fail(f"shared material not found at {path}; set DEEPFAKE_DETECT_SHARED")
    return path


def write_face_like(path: Path, label: int, rng: np.random.Generator, size: int = 32) -> None:
    """A learnable toy image: fakes carry a bright square at a random place."""
    img = (rng.normal(0.45, 0.12, (size, size, 3)).clip(0, 1) * 255).astype(np.uint8)
    if label == 1:
        s = size // 3
        y, x = rng.integers(0, size - s, 2)
        img[y : y + s, x : x + s] = 235
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_dataset(
    root: Path,
    videos_per_class: int = 6,
    frames: int = 3,
    size: int = 32,
    splits: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """``root/[split/]{real,fake}/<video>_frame_<n>.png``."""
    rng = np.random.default_rng(seed)
    for split in splits or (None,):
        base = root / split if split else root
        for label, name in ((0, "real"), (1, "fake")):
            for v in range(videos_per_class):
                for f in range(frames):
                    write_face_like(base / name / f"{split or 'v'}{v:03d}_frame_{f}.png", label, rng, size)
    return root


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "toy", splits=("train", "val", "test"))


def tiny_config(data: Path | list[Path], out_dir: Path, **train) -> dict:
    """A config that trains in seconds on the CPU."""
    return {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(out_dir),
        "model": {"name": "timm", "timm_name": "test_resnet", "input_size": 32},
        "data": {
            "path": [str(p) for p in (data if isinstance(data, list) else [data])],
            "batch_size": 8,
            "num_workers": 0,
            "augment": {"hflip": 0.0},
        },
        "train": {
            "epochs": 2,
            "optimizer": {"name": "adamw", "lr": 3e-3},
            "accelerator": "cpu",
            "devices": 1,
            **train,
        },
        "log": {"every_n_steps": 1, "progress": False, "tensorboard": False},
    }


def write_video(path: Path, frames, fps: int = 10, codec: str = "mpeg4") -> Path:
    """Encode ``frames`` (H x W x 3 uint8 RGB arrays, even sizes) with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def square_frames(n: int, size: tuple[int, int] = (96, 128), empty: tuple[int, ...] = ()) -> list:
    """Dark frames with a bright square ("face") drifting right; frames in ``empty`` have none."""
    h, w = size
    out = []
    for i in range(n):
        img = np.full((h, w, 3), 30, np.uint8)
        if i not in empty:
            x = 10 + (i * 3) % (w - 50)
            img[20:60, x : x + 40] = 220
        out.append(img)
    return out


class BrightSquare(FaceDetector):
    """Stand-in face detector: the bounding box of bright pixels is the face; records the
    size of each detection batch in ``calls``."""

    name = "bright"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def detect(self, frames):
        self.calls.append(len(frames))
        out = []
        for img in frames:
            ys, xs = np.nonzero(img.mean(axis=2) > 150)
            if len(xs) < 20:
                out.append([])
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            out.append([Face(box=box, score=0.99)])
        return out


# A dual_stream detector small enough for CPU tests (test_efficientnet: 0.1M parameters).
TINY_DUAL_STREAM = {
    "name": "dual_stream",
    "hq": {"timm_name": "test_efficientnet", "size": 32},
    "lq": {"timm_name": "test_efficientnet", "size": 16},
    "convlstm_filters": [8, 4],
    "classifier": [16, 8],
}


def face_checkpoint(folder: Path, prepare: dict) -> Path:
    """A tiny random image detector saved with the face settings ``prepare`` (as a run made
    from prepared crops stores them), for the tests of predict on raw photos and videos."""
    from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors

    torch.manual_seed(0)
    det = build_detector({"name": "timm", "timm_name": "test_resnet", "input_size": 32}).eval()
    experiment = {"model": det.config.model_dump(mode="json"), "prepare": prepare}
    return export_safetensors(det, folder / "model.safetensors",
                              checkpoint_meta(det, threshold=0.5, experiment=experiment))
