"""Training-loader throughput: litdata shards vs the JPEG folder they were made from.

Makes a dataset of N face-like JPEG crops (or takes --data), shards it with
``deepfake_detect.data.shards.write_shards``, then times the training loader of
``FaceDataModule`` on both, with the same augmentation, batch size and workers, side by side.

    uv run python benchmarks/shard_loader.py --images 2000 --workers 2
    sudo uv run python benchmarks/shard_loader.py --images 20000 --workers 2 --cold

``--cold`` empties the page cache (``/proc/sys/vm/drop_caches``, root only) before every timed
epoch, so each epoch reads from the disk as a dataset larger than memory does.
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
        label, j = i % 2, i // 2  # j: the image's number within its class
        img = (rng.normal(0.45, 0.12, (size, size, 3)).clip(0, 1) * 255).astype(np.uint8)
        if label:
            img[size // 4 : size // 2, size // 4 : size // 2] = 235
        name = f"{'f' if label else 'r'}{j // frames:05d}_frame_{j % frames}.jpg"  # one file each
        path = root / ("fake" if label else "real") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=95)
    return root


def drop_page_cache() -> None:
    import os

    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:  # root only
        fh.write("3\n")


def throughput(path: Path, workers: int, batch: int, epochs: int,
               cold: bool = False) -> tuple[float, int]:
    cfg = DataConfig(path=[path], batch_size=batch, num_workers=workers)  # default augmentation
    dm = FaceDataModule(cfg, PRE, seed=0, progress=False)
    dm.setup()
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up epoch: worker start, page cache
        pass
    images, seconds = 0, 0.0
    for _ in range(epochs):
        if cold:
            drop_page_cache()
        start = time.perf_counter()
        for b in loader:
            images += len(b["label"])
        seconds += time.perf_counter() - start
    return images / seconds, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, help="a dataset folder (default: generated JPEGs)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256, help="side of the generated crops")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cold", action="store_true",
                    help="empty the page cache before every timed epoch (root only)")
    ap.add_argument("--tmp", type=Path, help="where the generated data and shards go")
    args = ap.parse_args()
    if args.cold:
        try:
            drop_page_cache()
        except OSError as e:
            raise SystemExit(f"--cold needs root (writing /proc/sys/vm/drop_caches): {e}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        data = args.data or make_jpegs(Path(tmp) / "jpegs", args.images, args.size)
        start = time.perf_counter()
        write_shards([data], Path(tmp) / "shards", workers=args.workers)
        print(f"sharding: {time.perf_counter() - start:.1f} s")
        rows = {}
        for name, path in (("folder", data), ("shards", Path(tmp) / "shards")):
            rows[name] = throughput(path, args.workers, args.batch, args.epochs, args.cold)
        print(f"{'loader':8} {'images/s':>10} {'images':>8}")
        for name, (rate, n) in rows.items():
            print(f"{name:8} {rate:10.1f} {n:8d}")
        print(f"shards / folder: {rows['shards'][0] / rows['folder'][0]:.2f}x "
              f"(workers {args.workers}, batch {args.batch}, "
              f"page cache {'emptied before each epoch' if args.cold else 'warm'})")


if __name__ == "__main__":
    main()
