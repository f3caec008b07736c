"""ONNX Runtime vs PyTorch on the CPU: images per second of the same detector, side by side.

For each model (random weights, no download: EfficientNet-B0 at 224 px and ViT-B/16
``vit_base_patch16_224`` by default), in one process:

1. a checkpoint is written and exported with ``export_checkpoint(..., format="onnx")`` (the
   export's own parity check runs; its max |ΔP(fake)| is printed);
2. forward only, at each batch size (default 1 and 32): the same random normalised batch
   through the PyTorch module (inference mode) and through the ONNX Runtime session (CPU
   provider), both on the same number of threads, after a warm-up, alternating, best of
   ``--repeats`` runs each;
3. end to end: ``predict --crops`` (the library call behind it) on a folder of PNG face crops,
   once with the ``.safetensors`` checkpoint (PyTorch) and once with the ``.onnx`` (ONNX
   Runtime), alternating, best of ``--e2e-repeats`` runs each.

Ratios are ONNX Runtime / PyTorch images per second (target: >= 1.2 at batch 1). The load
average before and after is printed: the machine may be shared.

    uv run python benchmarks/onnx_speed.py [--models efficientnet_b0,vit_base_patch16_224]
        [--batches 1,32] [--repeats 3] [--crops 64] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepfake_detect.inference.onnx_model import OnnxModel
from deepfake_detect.inference.predict import predict_files
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors
from deepfake_detect.models.checkpoint import export_checkpoint
from deepfake_detect.models.onnx_export import ort_session

# the same synthetic face-crop folder as the predict overhead benchmark (run from benchmarks/)
from predict_overhead import make_crops  # noqa: E402

SIZES = {"efficientnet_b0": 224, "vit_base_patch16_224": 224}


def timed(fn, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return time.perf_counter() - start


def forward_figures(detector, session, batch: int, size: int, repeats: int,
                    budget_s: float) -> tuple[list[float], list[float]]:
    """Images per second of PyTorch and ONNX Runtime at ``batch``, alternating runs."""
    x = torch.randn(batch, 3, size, size)
    array = x.numpy()
    name = session.get_inputs()[0].name

    def torch_step():
        with torch.inference_mode():
            detector(x)

    def ort_step():
        session.run(["logits"], {name: array})

    # warm-up (kernel selection, allocations), then the iterations per run so that a
    # PyTorch run lasts about budget_s
    for _ in range(2):
        torch_step()
        ort_step()
    one = timed(torch_step, 1)
    iterations = max(1, min(100, int(budget_s / max(one, 1e-4))))
    torch_runs, ort_runs = [], []
    for _ in range(repeats):
        torch_runs.append(batch * iterations / timed(torch_step, iterations))
        ort_runs.append(batch * iterations / timed(ort_step, iterations))
    return torch_runs, ort_runs


def runs_text(runs: list[float]) -> str:
    return f"{max(runs):8.1f} img/s (runs: {', '.join(f'{r:.1f}' for r in runs)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_b0,vit_base_patch16_224",
                        help="timm architectures, comma-separated")
    parser.add_argument("--batches", default="1,32", help="batch sizes of the forward figures")
    parser.add_argument("--repeats", type=int, default=3, help="alternating forward runs each")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per forward run")
    parser.add_argument("--crops", type=int, default=64, help="PNG crops for predict --crops")
    parser.add_argument("--crop-size", type=int, default=256, help="side of the crop files")
    parser.add_argument("--e2e-batch", type=int, default=32, help="predict --batch-size")
    parser.add_argument("--e2e-repeats", type=int, default=2, help="alternating predict runs")
    parser.add_argument("--workers", type=int, default=0, help="predict loader workers")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both runtimes (default: torch's, the CPU count)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batches = [int(b) for b in args.batches.split(",") if b]
    load_before = os.getloadavg()
    print(f"CPU: {os.cpu_count()} logical cores, {threads} threads for both runtimes; "
          f"torch {torch.__version__}; load average before: "
          + ", ".join(f"{v:.2f}" for v in load_before))
    summary = []
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as tmp:
        tmp = Path(tmp)
        crops = make_crops(tmp / "crops", args.crops, args.crop_size)
        for name in [m for m in args.models.split(",") if m]:
            size = SIZES.get(name, 224)
            torch.manual_seed(0)
            det = build_detector({"name": "timm", "timm_name": name, "input_size": size}).eval()
            src = export_safetensors(det, tmp / f"{name}.safetensors", checkpoint_meta(det))
            start = time.perf_counter()
            result = export_checkpoint(src, tmp / f"{name}.onnx", format="onnx")
            print(f"\n== {name}, {size} px: exported in {time.perf_counter() - start:.1f} s, "
                  f"{result.size_mib:.0f} MiB, max |ΔP(fake)| vs PyTorch {result.max_diff:.2g} "
                  f"({result.exporter})")
            session = ort_session(result.path, threads=threads)
            for batch in batches:
                torch_runs, ort_runs = forward_figures(det, session, batch, size, args.repeats,
                                                       args.budget)
                ratio = max(ort_runs) / max(torch_runs)
                print(f"forward batch {batch:3d}: PyTorch {runs_text(torch_runs)}")
                print(f"                  ONNX Runtime {runs_text(ort_runs)}  ratio {ratio:.2f}")
                summary.append((name, f"forward b{batch}", max(torch_runs), max(ort_runs), ratio))
            del session
            models = {"PyTorch": LoadedModel.load(src), "ONNX Runtime": OnnxModel.load(result.path)}
            e2e: dict[str, list[float]] = {k: [] for k in models}
            for _ in range(args.e2e_repeats):
                for label, model in models.items():
                    start = time.perf_counter()
                    rows = predict_files(model, crops, threshold=0.5, batch_size=args.e2e_batch,
                                         num_workers=args.workers, device="cpu", progress=False,
                                         crops=True)
                    e2e[label].append(len(crops) / (time.perf_counter() - start))
                    assert all(r.score is not None for r in rows)
            ratio = max(e2e["ONNX Runtime"]) / max(e2e["PyTorch"])
            print(f"predict --crops ({len(crops)} PNG {args.crop_size} px, batch {args.e2e_batch}, "
                  f"{args.workers} workers): PyTorch {runs_text(e2e['PyTorch'])}")
            print(f"                  ONNX Runtime {runs_text(e2e['ONNX Runtime'])}  ratio {ratio:.2f}")
            summary.append((name, "predict --crops", max(e2e["PyTorch"]),
                            max(e2e["ONNX Runtime"]), ratio))
    print("\nsummary (img/s, best run; ratio = ONNX Runtime / PyTorch; target >= 1.2 at batch 1)")
    print(f"{'model':24s} {'what':16s} {'PyTorch':>9s} {'ORT':>9s} {'ratio':>6s}")
    for name, what, a, b, r in summary:
        flag = "" if what != "forward b1" else ("  OK" if r >= 1.2 else "  BELOW TARGET")
        print(f"{name:24s} {what:16s} {a:9.1f} {b:9.1f} {r:6.2f}{flag}")
    print("load average after: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
