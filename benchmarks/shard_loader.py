"""Training-loader throughput: litdata shards vs the JPEG folder they were made from.

Makes a dataset of N face-like JPEG crops (or takes --data), shards it with
``deepfake_detect.data.shards.write_shards``, then times the training loader of
``FaceDataModule`` on both, with the same augmentation, batch size and workers, side by side.

    uv run python benchmarks/shard_loader.py --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deepfake_detect.config.schema import DataConfig
from deepfake_detect.data import FaceDataModule
from deepfake_detect.data.shards import write_shards

PRE = {"input_size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def make_jpegs(root: Path, n: int, size: int, frames: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % 2
        video = i // (2 * frames)
        img = (rng.normal(0.45, 0.12, (size, size, 3)).clip(0, 1) * 255).astype(np.uint8)
        if label:
            img[size // 4 : size // 2, size // 4 : size // 2] = 235
        path = root / ("fake" if label else "real") / f"v{video:05d}_frame_{i % frames}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=95)
    return root


def throughput(path: Path, workers: int, batch: int, epochs: int) -> tuple[float, int]:
    cfg = DataConfig(path=[path], batch_size=batch, num_workers=workers)  # default augmentation
    dm = FaceDataModule(cfg, PRE, seed=0, progress=False)
    dm.setup()
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up epoch: worker start, page cache
        pass
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            images += len(b["label"])
    return images / (time.perf_counter() - start), images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, help="a dataset folder (default: generated JPEGs)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256, help="side of the generated crops")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_jpegs(Path(tmp) / "jpegs", args.images, args.size)
        start = time.perf_counter()
        write_shards([data], Path(tmp) / "shards", workers=args.workers)
        print(f"sharding: {time.perf_counter() - start:.1f} s")
        rows = {}
        for name, path in (("folder", data), ("shards", Path(tmp) / "shards")):
            rows[name] = throughput(path, args.workers, args.batch, args.epochs)
        print(f"{'loader':8} {'images/s':>10} {'images':>8}")
        for name, (rate, n) in rows.items():
            print(f"{name:8} {rate:10.1f} {n:8d}")
        print(f"shards / folder: {rows['shards'][0] / rows['folder'][0]:.2f}x "
              f"(workers {args.workers}, batch {args.batch})")


if __name__ == "__main__":
    main()
