"""Training throughput of `deepfake-detect train` relative to a bare PyTorch loop.

Both runs use the same model, batch size, data loader and optimizer on this machine, one after
the other in one process, alternating (--repeats). Throughput is images per second over the timed
epochs (the first epoch warms caches and is not timed); each side's best run counts.
Target: ratio >= 0.90.

    uv run python benchmarks/train_overhead.py [--model mobilenetv2_050] [--size 128] [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from deepfake_detect.config import load_config
from deepfake_detect.data.datamodule import FaceDataModule
from deepfake_detect.models.registry import build_detector, validate_model_config
from deepfake_detect.training.losses import build_loss
from deepfake_detect.training.optim import build_optimizer
from deepfake_detect.training.train import train


def make_data(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 16)):
        for label in ("real", "fake"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count // 2):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{label}{i:04d}.png")
    return root


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._start)


def bare_loop(cfg, epochs: int, device: torch.device) -> list[float]:
    torch.manual_seed(cfg.seed)
    model_cfg = validate_model_config(cfg.model)
    model = build_detector(model_cfg).to(device)
    dm = FaceDataModule(cfg.data, model.preprocessing(), seed=cfg.seed)
    dm.setup("fit")
    loader = dm.train_dataloader()
    optimizer = build_optimizer(model, cfg.train.optimizer)
    criterion = build_loss(cfg.train.loss, model.num_classes, model.fake_index)
    times = []
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_050", help="timm architecture")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=512, help="training images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs; the first is not timed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.images, args.size)
        base = {
            "name": "bench", "seed": 0, "output_dir": str(Path(tmp) / "runs"),
            "model": {"name": "timm", "timm_name": args.model, "input_size": args.size},
            "data": {"path": [str(data)], "batch_size": args.batch, "num_workers": args.workers,
                     "augment": {"hflip": 0.5}, "verify": "none"},
            "train": {"epochs": args.epochs, "optimizer": {"name": "adamw", "lr": 1e-3},
                      "precision": "32", "limit_val_batches": 0, "evaluate_test": False},
            "log": {"every_n_steps": 50, "tensorboard": False, "csv": True},
            "eval": {"plots": False},
        }
        cfg = load_config(base=base)
        images = (args.images // args.batch) * args.batch
        bare_runs, tool_runs = [], []
        # Alternate the two so that drifting machine load hits both alike; keep each one's best.
        for r in range(args.repeats):
            bare = bare_loop(cfg, args.epochs, device)
            timer = EpochTimer()
            train(cfg, out=Path(tmp) / f"run{r}", callbacks=[timer], progress=True)
            bare_runs.append(images * (args.epochs - 1) / sum(bare[1:]))
            tool_runs.append(images * (args.epochs - 1) / sum(timer.times[1:]))
        bare_ips, tool_ips = max(bare_runs), max(tool_runs)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, model: {args.model}, "
          f"size: {args.size}, batch: {args.batch}, images/epoch: {images}")
    print(f"bare PyTorch loop:       {bare_ips:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in bare_runs)})")
    print(f"deepfake-detect train:   {tool_ips:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in tool_runs)})")
    ratio = tool_ips / bare_ips
    print(f"ratio (train / bare):    {ratio:.3f}  (target >= 0.90) {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
