"""Face recall and speed of the face detectors on real footage and on degraded copies of it.

For each shared video (``../shared/media/videos/*.mp4``: a 1080p crowd, a 360p talk show, the
dim DFDC portrait with hands over the face) the sampled frames (evenly spaced, as prepare samples
them) are decoded once; degraded copies are made in memory:

- ``dark``: pixel values x 0.3;
- ``480p``: shorter side 480 (skipped where it is already that small);
- ``jpeg30``: JPEG quality 30;
- ``small5``: the frame shrunk, centred on a mean-colour canvas of the original size, so that
  the median face (as the reference setting finds it on the original) is 5 % of the height.

Each detector setting (a ``prepare.detect`` section) then runs over every condition, in the
batches prepare uses; a frame counts as found when it yields at least one face. Face-free
pictures (uniform, noise, textures, a dark empty room, random shapes; 1080p) count the faces
a setting invents. Times are milliseconds per frame, best of ``--repeat`` runs. The whole
prepare step against decode-only time is ``benchmarks/prepare_speed.py``.

    uv run python benchmarks/face_recall.py [--frames 32] [--degraded-frames 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPFAKE_DETECT_SHARED", REPO.parent / "shared"))

# name -> prepare.detect overrides. "default" is this version's default; the others show what
# the default replaced and what each part of it adds.
SETTINGS: dict[str, dict] = {
    "default": {},
    "retinaface fast pass only": {"fallback": []},
    "mtcnn (old default)": {"backend": "mtcnn", "min_face": 40, "min_face_fraction": 0.1,
                            "fallback": []},
}


def sampled_frames(video: Path, count: int) -> list[np.ndarray]:
    from deepfake_detect.config.schema import FramesConfig
    from deepfake_detect.data.video import read_frames

    return [f.image for f in read_frames(video, FramesConfig(count=count))]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def _shrunk(img: np.ndarray, scale: float) -> np.ndarray:
    small = _resize(img, scale)
    canvas = np.empty_like(img)
    canvas[:] = img.reshape(-1, 3).mean(0).astype(np.uint8)
    h, w = small.shape[:2]
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    canvas[top:top + h, left:left + w] = small
    return canvas


def degraded(frames: list[np.ndarray], median_face: float | None) -> dict[str, list[np.ndarray]]:
    out = {"dark": [np.clip(f * 0.3, 0, 255).astype(np.uint8) for f in frames],
           "jpeg30": [_jpeg(f, 30) for f in frames]}
    short = min(frames[0].shape[:2])
    if short > 480:
        out["480p"] = [_resize(f, 480 / short) for f in frames]
    height = frames[0].shape[0]
    if median_face and median_face > 0.05 * height:
        out["small5"] = [_shrunk(f, 0.05 * height / median_face) for f in frames]
    return out


def face_free(rng: np.random.Generator, size=(1080, 1920)) -> dict[str, np.ndarray]:
    h, w = size
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    clouds = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8))
                        .resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(8)))
    room = np.full((h, w, 3), 18, np.uint8)
    room[h // 2:, :] = 28
    room[h // 5:h // 2, w // 3:w // 2] = 40  # a dim doorway
    shapes = Image.new("RGB", (w, h), (120, 130, 140))
    draw = ImageDraw.Draw(shapes)
    for _ in range(60):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(10, 160))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return {"gray": np.full((h, w, 3), 128, np.uint8), "black": np.zeros((h, w, 3), np.uint8),
            "noise": noise, "clouds": clouds, "dark room": room, "shapes": np.asarray(shapes)}


def run_setting(finder, frames: list[np.ndarray], batch: int) -> tuple[list[list], float]:
    found: list[list] = []
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        found += finder.detect(frames[i:i + batch])
    return found, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="sampled frames per video")
    parser.add_argument("--degraded-frames", type=int, default=16,
                        help="of those, how many each degraded copy uses")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the best counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from deepfake_detect.config.schema import CropConfig, DetectConfig
    from deepfake_detect.data.faces.cascade import build_face_finder

    videos = sorted((SHARED / "media" / "videos").glob("*.mp4"))
    if not videos:
        print(f"no videos in {SHARED / 'media' / 'videos'}; set DEEPFAKE_DETECT_SHARED")
        return 1
    finders = {}
    for name, overrides in SETTINGS.items():
        detect = DetectConfig.model_validate(overrides)
        finders[name] = (build_face_finder(detect, CropConfig()), detect.batch_size)
    reference = next(iter(finders))

    conditions: dict[str, list[np.ndarray]] = {}
    for video in videos:
        frames = sampled_frames(video, args.frames)
        conditions[f"{video.stem} original"] = frames
        ref_finder, ref_batch = finders[reference]
        faces, _ = run_setting(ref_finder, frames, ref_batch)
        heights = [f.box[3] - f.box[1] for fs in faces for f in fs]
        median = float(np.median(heights)) if heights else None
        for kind, copies in degraded(frames[:: max(1, len(frames) // args.degraded_frames)]
                                     [: args.degraded_frames], median).items():
            conditions[f"{video.stem} {kind}"] = copies
    free = face_free(np.random.default_rng(0))

    results: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu",
                     "torch_threads": torch.get_num_threads(), "settings": {}}
    for name, (finder, batch) in finders.items():
        rows = {}
        for cond, frames in conditions.items():
            best, found = float("inf"), []
            for _ in range(args.repeat):
                found, seconds = run_setting(finder, frames, batch)
                best = min(best, seconds)
            hit = sum(1 for fs in found if fs)
            rows[cond] = {"found": hit, "frames": len(frames), "ms_per_frame": 1000 * best / len(frames),
                          "faces_per_frame": sum(len(fs) for fs in found) / len(frames)}
        invented = {k: len(run_setting(finder, [img], 1)[0][0]) for k, img in free.items()}
        results["settings"][name] = {"conditions": rows, "invented": invented}

    print(f"device: {results['device']}, torch threads: {results['torch_threads']}, "
          f"{args.frames} frames per video, {args.degraded_frames} per degraded copy")
    names = list(finders)
    print(f"{'condition':34s}" + "".join(f"{n:>28s}" for n in names))
    totals = {n: [0, 0, 0, 0] for n in names}  # found/frames on originals, then on degraded
    for cond in conditions:
        cells = []
        for n in names:
            r = results["settings"][n]["conditions"][cond]
            cells.append(f"{r['found']:>3d}/{r['frames']:<3d} {r['ms_per_frame']:7.1f} ms")
            slot = 0 if cond.endswith("original") else 2
            totals[n][slot] += r["found"]
            totals[n][slot + 1] += r["frames"]
        print(f"{cond:34s}" + "".join(f"{c:>28s}" for c in cells))
    for n in names:
        t = totals[n]
        inv = results["settings"][n]["invented"]
        print(f"{n}: recall {t[0]}/{t[1]} = {t[0] / max(t[1], 1):.1%} on the real videos, "
              f"{t[2]}/{t[3]} = {t[2] / max(t[3], 1):.1%} on the degraded copies; "
              f"faces invented on {len(inv)} face-free pictures: {sum(inv.values())} {inv}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
