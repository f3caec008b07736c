"""`predict` end to end on face crops relative to the model's forward alone.

Both sides use the same detector, batch size and device, in one process, alternating
(--repeats), each side's best run counting:
- forward only: the crops decoded, resized and normalised beforehand (not timed), then the
  detector's forward over all of them in batches under inference mode;
- predict: ``predict_files(..., crops=True)`` on the crop files, timed from the file names to
  the rows (reading, decoding, preprocessing, loading, forward, P(fake), labels).
Target: ratio >= 0.90.

    uv run python benchmarks/predict_overhead.py [--model efficientnet_b0] [--size 224] [--images 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake_detect.data.transforms import build_transform
from deepfake_detect.inference.predict import predict_files
from deepfake_detect.inference.scoring import autocast_for
from deepfake_detect.models.registry import build_detector


def make_crops(folder: Path, n: int, size: int) -> list[Path]:
    """Face-crop-like PNGs (smooth colour fields plus noise, so PNG decoding is realistic)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], -1)
        img = np.clip(128 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"crop{i:05d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def forward_only(detector, batches: list[torch.Tensor], device: torch.device) -> float:
    start = time.perf_counter()
    with torch.inference_mode(), autocast_for(device):
        for x in batches:
            detector(x.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0", help="registry name")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--crop", type=int, default=256, help="side of the crop files")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: auto)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    detector = build_detector({"name": args.model, "input_size": args.size}).eval().to(device)
    if device.type == "cuda":
        detector = detector.to(memory_format=torch.channels_last)

    with tempfile.TemporaryDirectory() as tmp:
        files = make_crops(Path(tmp) / "crops", args.images, args.crop)
        transform = build_transform(detector.preprocessing())  # no augment: eval view
        tensors = [transform(Image.open(p).convert("RGB")) for p in files]
        batches = [torch.stack(tensors[i:i + args.batch]) for i in range(0, len(tensors), args.batch)]
        if device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        forward_only(detector, batches[:1], device)  # warm-up (kernels, allocator)
        bare_runs, tool_runs = [], []
        for _ in range(args.repeats):
            bare_runs.append(args.images / forward_only(detector, batches, device))
            start = time.perf_counter()
            rows = predict_files(detector, files, threshold=0.5, batch_size=args.batch,
                                 num_workers=args.workers, device=str(device), progress=False,
                                 crops=True)
            tool_runs.append(args.images / (time.perf_counter() - start))
            assert len(rows) == args.images and all(r.score is not None for r in rows)
    bare_ips, tool_ips = max(bare_runs), max(tool_runs)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, model: {args.model}, "
          f"input: {args.size} px from {args.crop} px PNG crops, batch: {args.batch}, "
          f"images: {args.images}")
    print(f"forward only:            {bare_ips:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in bare_runs)})")
    print(f"predict --crops:         {tool_ips:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in tool_runs)})")
    ratio = tool_ips / bare_ips
    print(f"ratio (predict / forward): {ratio:.3f}  (target >= 0.90) {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
