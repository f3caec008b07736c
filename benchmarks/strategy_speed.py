"""Transfer strategies on FSFM's ViT-B/16, measured side by side in one run.

(a) One training step (forward, label-smoothed cross-entropy, backward, AdamW) of the ``fsfm``
    detector under each strategy: ``fine_tuning`` (everything, layer decay 0.65),
    ``feature_extractor`` (head only, backbone in eval mode), ``peft_lora`` (r 8 on ``qkv``).
    Images per second (median of ``--repeats`` timed blocks of ``--steps`` steps after warm-up)
    and peak memory (``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the growth of the
    resident-set high-water mark is not separable per variant, so memory is CUDA only). bf16
    autocast on CUDA, float32 on the CPU. Ratios are against ``fine_tuning``.
(b) Feature caching, end to end through ``deepfake-detect train``'s code path: the same
    ``feature_extractor`` run on a generated folder of JPEG face-sized images with
    ``strategy.cache_features`` off and on (augmentation off, so training views are
    epoch-invariant). Seconds per epoch over the epochs after the first (the first fills the
    cache); ratio = uncached / cached. The final validation losses must agree.

    uv run python benchmarks/strategy_speed.py                 # CPU: batch 4, 192 images
    uv run python benchmarks/strategy_speed.py --size tiny     # smoke run, seconds

Random weights: the speed of a step does not depend on their values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "img_size": 224},
    "tiny": {"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_size": 16, "img_size": 64},
}
STRATEGIES = {
    "fine_tuning": {"name": "fine_tuning", "layer_decay": 0.65},
    "feature_extractor": {"name": "feature_extractor"},
    "peft_lora": {"name": "peft_lora", "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["qkv"]}},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_speed(size: str, device: torch.device, batch: int, steps: int, repeats: int) -> list[dict]:
    from deepfake_detect.config.schema import OptimizerConfig, StrategyConfig
    from deepfake_detect.models import build_detector
    from deepfake_detect.models.strategies import apply_strategy
    from deepfake_detect.training.optim import build_optimizer

    vit = SIZES[size]
    rows = []
    for name, strategy_raw in STRATEGIES.items():
        torch.manual_seed(0)
        detector = build_detector({"name": "fsfm", "vit": vit, "drop_path_rate": 0.1})
        strategy = StrategyConfig.model_validate(strategy_raw)
        counts = apply_strategy(detector, strategy)
        detector.to(device).train()
        optimizer = build_optimizer(
            detector, OptimizerConfig(name="adamw", lr=1e-4, weight_decay=0.05),
            strategy.layer_decay,
        )
        x = torch.randn(batch, 3, vit["img_size"], vit["img_size"], device=device)
        y = torch.randint(0, 2, (batch,), device=device)
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

        def step() -> None:
            with autocast:
                loss = F.cross_entropy(detector(x), y, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rates = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            rates.append(batch * steps / (time.perf_counter() - start))
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        rows.append({"strategy": name, "trainable": counts.trainable, "total": counts.total,
                     "img_per_s": statistics.median(rates), "runs": rates, "peak_mib": peak})
        print(f"  {name:18s} {counts}  {rows[-1]['img_per_s']:.1f} img/s"
              + (f"  peak {peak:.0f} MiB" if peak is not None else ""), flush=True)
        del detector, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]
    for row in rows:
        row["speed_ratio"] = row["img_per_s"] / base["img_per_s"]
        if row["peak_mib"] is not None:
            row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
    return rows


def _write_images(root: Path, count: int, side: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(count // 4, 8))):
        for i in range(n):
            label = "fake" if i % 2 else "real"
            img = (rng.random((side, side, 3)) * 255).astype(np.uint8)
            path = root / split / label / f"v{i:05d}_frame_0.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=90)
    return root


def cache_speed(size: str, device: torch.device, images: int, batch: int, epochs: int,
                workers: int) -> dict:
    from lightning.pytorch.callbacks import Callback

    from deepfake_detect.config import load_config
    from deepfake_detect.training.train import train

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.times.append(time.perf_counter() - self.start)

    vit = SIZES[size]
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = _write_images(Path(tmp) / "data", images, 256 if size == "base" else 80)
        for cached in (False, True):
            timer = EpochTimer()
            config = {
                "name": "cache", "seed": 0, "output_dir": str(Path(tmp) / "runs"),
                "model": {"name": "fsfm", "vit": vit},
                "strategy": {"name": "feature_extractor", "cache_features": cached},
                "data": {"path": [str(data)], "batch_size": batch, "num_workers": workers,
                         "augment": {"hflip": 0.0}},
                "train": {"epochs": epochs, "accelerator": "gpu" if device.type == "cuda" else "cpu",
                          "devices": 1, "evaluate_test": False, "optimizer": {"lr": 1e-3}},
                "eval": {"plots": False},
                "log": {"progress": False, "tensorboard": False, "every_n_steps": 50},
            }
            result = train(load_config(base=config), out=Path(tmp) / f"run-{cached}",
                           callbacks=[timer])
            later = timer.times[1:]
            out["cached" if cached else "plain"] = {
                "epoch_s": statistics.median(later), "first_epoch_s": timer.times[0],
                "all": timer.times, "val_loss": result.val_metrics["val_loss"],
            }
            print(f"  cache {'on ' if cached else 'off'}: first epoch {timer.times[0]:.2f} s, later "
                  f"{statistics.median(later):.2f} s (val loss {result.val_metrics['val_loss']:.6f})",
                  flush=True)
    out["ratio"] = out["plain"]["epoch_s"] / out["cached"]["epoch_s"]
    out["val_loss_diff"] = abs(out["plain"]["val_loss"] - out["cached"]["val_loss"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, help="default 32 on CUDA, 4 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, help="training images for (b); default 2048 CUDA, 192 CPU")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    batch = args.batch or (32 if cuda else 4)
    steps = args.steps or (20 if cuda else 2)
    images = args.images or (2048 if cuda else 192)
    workers = args.workers if args.workers is not None else (8 if cuda else 1)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; FSFM ViT size {args.size}; batch {batch}")
    print("(a) training step per strategy")
    steps_rows = step_speed(args.size, device, batch, steps, args.repeats)
    print("(b) feature cache, feature_extractor end to end")
    cache = cache_speed(args.size, device, images, batch, args.epochs, workers)
    print(f"\nsummary ({datetime.date.today()}, {name}):")
    for row in steps_rows:
        mem = f", memory x{row['memory_ratio']:.2f}" if "memory_ratio" in row else ""
        print(f"  {row['strategy']:18s} speed x{row['speed_ratio']:.2f} of fine_tuning{mem}")
    print(f"  feature cache: epoch {cache['plain']['epoch_s']:.2f} s -> {cache['cached']['epoch_s']:.2f} s, "
          f"ratio {cache['ratio']:.2f}; val loss difference {cache['val_loss_diff']:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "size": args.size, "batch": batch,
                                         "steps": steps_rows, "cache": cache}, indent=2))


if __name__ == "__main__":
    main()
