"""Dual-stream video detector: memory and speed of a training step, with and without gradient
checkpointing of the backbones, measured side by side in one run.

One step = forward on a batch of clips (B, T, 3, 224, 224), BCE-with-logits, backward, Adam,
for the seed's baseline (EfficientNet-B4 on 224 px + B0 on 112 px, ConvLSTM 256 -> 128,
attention fusion). On CUDA: bf16 autocast (AMP), batch 12, T = 10, peak memory from
``torch.cuda.max_memory_allocated``, the model also in channels-last (as ``train`` puts it on a
GPU). On the CPU: float32, a small batch, peak memory not measured (the process high-water mark
mixes the variants). Clips per second are the median of ``--repeats`` blocks of ``--steps`` steps
after 2 warm-up steps. Random weights: speed does not depend on their values.

    uv run python benchmarks/temporal_memory.py                      # CPU: batch 2, T 10
    python3 benchmarks/temporal_memory.py --preset accurate          # B5+B1, T 12 (GPU)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F

PRESETS = {
    "baseline": {"hq": "efficientnet_b4", "lq": "efficientnet_b0", "frames": 10},
    "fast": {"hq": "efficientnet_b0", "lq": "efficientnet_b0", "frames": 8},
    "accurate": {"hq": "efficientnet_b5", "lq": "efficientnet_b1", "frames": 12},
}


def run_variant(preset: dict, device: torch.device, batch: int, frames: int, checkpointing: bool,
                channels_last: bool, steps: int, repeats: int) -> dict:
    from deepfake_detect.models import build_detector

    torch.manual_seed(0)
    model = build_detector({
        "name": "dual_stream", "hq": {"timm_name": preset["hq"]}, "lq": {"timm_name": preset["lq"]},
        "grad_checkpointing": checkpointing, "sequence": {"frames": frames},
    }).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, frames, 3, 224, 224, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0].float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return {"clips_per_s": statistics.median(rates), "runs": rates, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, help="default 12 on CUDA, 2 on the CPU")
    parser.add_argument("--frames", type=int, help="T, default the preset's")
    parser.add_argument("--steps", type=int, help="steps per timed block (5 CUDA, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    preset = PRESETS[args.preset]
    batch = args.batch or (12 if cuda else 2)
    frames = args.frames or preset["frames"]
    steps = args.steps or (5 if cuda else 1)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{datetime.date.today()} | {name} | torch {torch.__version__} | preset {args.preset} "
          f"({preset['hq']} + {preset['lq']}) | batch {batch} | T {frames} | "
          f"{'bf16 autocast' if cuda else 'float32'}")
    variants = [("plain", False, False), ("grad_checkpointing", True, False)]
    if cuda:
        variants += [("channels_last", False, True), ("channels_last + grad_checkpointing", True, True)]
    rows = []
    for label, ckpt, cl in variants:
        r = run_variant(preset, device, batch, frames, ckpt, cl, steps, args.repeats)
        rows.append((label, r))
        mem = f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        print(f"  {label:36s} {r['clips_per_s']:8.2f} clips/s{mem}  (runs "
              + ", ".join(f"{v:.2f}" for v in r["runs"]) + ")", flush=True)
    base = rows[0][1]
    print("\n| variant | clips/s | peak memory | speed vs plain | memory vs plain |")
    print("| --- | --- | --- | --- | --- |")
    for label, r in rows:
        mem = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "n/a"
        mratio = f"{r['peak_gib'] / base['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        print(f"| {label} | {r['clips_per_s']:.2f} | {mem} | {r['clips_per_s'] / base['clips_per_s']:.2f} | {mratio} |")


if __name__ == "__main__":
    main()
