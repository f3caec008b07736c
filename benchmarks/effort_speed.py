"""Effort (CLIP + SVD residual attention) against plain CLIP, measured side by side in one run.

Random weights are written to a temp folder first: a plain CLIP snapshot
(``CLIPVisionModel(config).save_pretrained``: config.json + model.safetensors) and an Effort
release file (a ``torch.save``d state dict in the official layout: ``backbone.`` + HF names,
``weight_main``/``U_residual``/``S_residual``/``V_residual`` per attention projection, ``head.*``).

(a) Build time. ``build_detector(effort, weights=release.pth)`` against
    ``CLIPVisionModel.from_pretrained(snapshot)``, alternating, page cache warmed, median of
    ``--repeats``. Target: ratio release / plain <= 1.2. For context, also what the official
    loader does (plain CLIP, then the SVD of every adapted layer: ``model.pretrained``), in
    float64 (the default) and float32, timed ``--svd-repeats`` times (slow on a CPU).
    ``from_pretrained`` memory-maps model.safetensors and reads the weights only when first
    used, so build + one read of every parameter is reported too (the time to a usable model).
(b) Forward throughput in eval mode under ``torch.inference_mode``: Effort after
    ``for_inference()`` (residuals merged into plain linear layers) against ``CLIPVisionModel``
    holding the same weights plus a ``Linear(hidden, 2)`` on ``pooler_output``. float32 on the
    CPU, bf16 autocast on CUDA. Median of ``--reps`` alternating passes after warm-up.
    Target: ratio Effort / plain images per second >= 0.98; the logits must agree.
(c) One training step (forward, cross-entropy, backward, Adam; only the residual factors and the
    head train): images per second and peak memory of (1) this tool's factored residual,
    (2) the dense formula of the official code (``weight_main + U diag(S) V`` formed every
    forward), (3) (1) with ``grad_checkpointing``. Each runs in a fresh process. Peak memory is
    ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the resident-set high-water mark
    (VmHWM) over the training steps only, reset after the model is built, and its growth over the
    resident size before the first step.

    uv run python benchmarks/effort_speed.py [--size large] [--repeats 3] [--device auto]
    uv run python benchmarks/effort_speed.py --size tiny     # smoke run, seconds

Defaults: --size large (CLIP ViT-L/14, 224 px); --batch 4 on CPU / 64 on CUDA; training at
--train-batch 2 on CPU / 32 on CUDA, 1 warm-up step then --steps timed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIZES: dict[str, dict] = {
    "large": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
              "num_attention_heads": 16, "patch_size": 14, "image_size": 224},
    "base": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "patch_size": 16, "image_size": 224},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "patch_size": 14, "image_size": 56},
}
SIZE_NAMES = {"large": "CLIP ViT-L/14", "base": "CLIP ViT-B/16", "tiny": "tiny CLIP (smoke)"}
TRAIN_VARIANTS = ("ours", "dense", "ours+ckpt")


def effort_config(size: str, **extra) -> dict:
    return {"name": "effort", "clip": dict(SIZES[size]), **extra}


def clip_settings(size: str):
    from deepfake_detect.models.backbones.clip import ClipSettings

    return ClipSettings(**SIZES[size])


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    return torch.device(setting)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device):
    # bf16 on CUDA as training/inference there would run; plain float32 on the CPU.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def runs(xs: list[float], fmt: str = "{:.2f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


# -- weight files ---------------------------------------------------------------------------------


def write_snapshot(folder: Path, size: str) -> Path:
    """A plain CLIP snapshot with random weights, written by transformers itself."""
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    CLIPVisionModel(clip_settings(size).hf_config()).save_pretrained(folder)
    return folder


def release_layout(size: str) -> dict[str, torch.Size]:
    """Key -> shape of the Effort state dict, from the structure the loader builds (no SVD)."""
    from deepfake_detect.models.registry import get_entry, validate_model_config

    cfg = validate_model_config(effort_config(size))
    # what build_detector does when weights are loaded next
    detector = get_entry("effort").build(cfg, weights_follow=True)
    layout = {k: v.shape for k, v in detector.state_dict().items()}
    del detector
    free()
    return layout


def write_release(path: Path, snapshot: Path, size: str) -> tuple[int, int]:
    """An Effort release file: the snapshot's weights as ``weight_main``, random small residuals.

    Returns (tensors, values). Every key and shape is checked against the detector's structure.
    """
    from deepfake_detect.models.backbones.clip import read_clip_weights

    plain = read_clip_weights(snapshot, clip_settings(size))
    gen = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in release_layout(size).items():
        leaf = key.rpartition(".")[2]
        hf = key.removeprefix("backbone.")
        if leaf == "weight_main":
            value = plain.pop(f"{hf.rpartition('.')[0]}.weight")
        elif leaf == "U_residual":
            value = torch.randn(shape, generator=gen) / shape[0] ** 0.5
        elif leaf == "V_residual":
            value = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        elif leaf == "S_residual":
            value = torch.rand(shape, generator=gen) * 1e-2  # the smallest singular values
        elif key == "head.weight":
            value = torch.randn(shape, generator=gen) * 0.02
        elif key == "head.bias":
            value = torch.zeros(shape)
        else:
            value = plain.pop(hf)
        if value.shape != shape:
            raise RuntimeError(f"release layout: {key} has shape {tuple(value.shape)}, want {tuple(shape)}")
        sd[key] = value.contiguous()
    if plain:
        raise RuntimeError(f"snapshot keys not placed in the release: {sorted(plain)[:5]}")
    torch.save(sd, path)
    return len(sd), sum(v.numel() for v in sd.values())


def warm_page_cache(*paths: Path) -> None:
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            with f.open("rb") as fh:
                while fh.read(64 << 20):
                    pass


# -- (a) build time -------------------------------------------------------------------------------


def measure_build(args, release: Path, snapshot: Path) -> dict:
    from transformers import CLIPVisionModel

    from deepfake_detect.models.registry import build_detector

    def release_build():
        return build_detector(effort_config(args.size), weights=release)

    def plain_build():
        return CLIPVisionModel.from_pretrained(snapshot)

    def svd_build(dtype: str):
        return lambda: build_detector(effort_config(
            args.size, pretrained=str(snapshot), adapter={"svd_dtype": dtype}))

    variants = {
        "release": (release_build, args.repeats),
        "plain": (plain_build, args.repeats),
        "svd64": (svd_build("float64"), args.svd_repeats),
        "svd32": (svd_build("float32"), args.svd_repeats),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    ready: dict[str, list[float]] = {k: [] for k in variants}
    warm_page_cache(release, snapshot)
    # One untimed build of each fast variant: first-import and allocator costs land here.
    for name in ("release", "plain"):
        obj = variants[name][0]()
        del obj
        free()
    for r in range(max(args.repeats, args.svd_repeats)):
        order = list(variants)
        if r % 2:  # A B C D, then D C B A: drift in machine load hits all alike
            order.reverse()
        for name in order:
            fn, count = variants[name]
            if r >= count:
                continue
            free()
            t = time.perf_counter()
            obj = fn()
            times[name].append(time.perf_counter() - t)
            read_all(obj)
            ready[name].append(time.perf_counter() - t)
            del obj
            free()
    return {"times": times, "ready": ready, "breakdown": release_breakdown(args.size, release)}


@torch.no_grad()
def read_all(model: nn.Module) -> None:
    """Read every parameter once. from_pretrained memory-maps model.safetensors, so its
    parameters stay file-backed and are only read on first use; this makes that cost visible."""
    for p in model.parameters():
        p.sum()


def release_breakdown(size: str, release: Path) -> dict[str, float]:
    """Where a release build spends its time: reading, construction, strict load."""
    from deepfake_detect.models.registry import get_entry, validate_model_config
    from deepfake_detect.models.weights import load_detector_weights, read_state_dict

    out = {}
    free()
    t = time.perf_counter()
    cfg = validate_model_config(effort_config(size))
    detector = get_entry("effort").build(cfg, weights_follow=True)
    out["construct"] = time.perf_counter() - t
    t = time.perf_counter()
    sd = read_state_dict(release)
    out["torch.load"] = time.perf_counter() - t
    t = time.perf_counter()
    load_detector_weights(detector, sd, source=release, assign=True)
    out["adapt + check + load_state_dict"] = time.perf_counter() - t
    del detector, sd
    free()
    return out


# -- (b) forward throughput -----------------------------------------------------------------------


class PlainClipClassifier(nn.Module):
    """Plain CLIP vision tower -> pooler output -> linear head: the baseline Effort merges into."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values=x).pooler_output)


def measure_forward(args, release: Path, snapshot: Path, device: torch.device) -> dict:
    from transformers import CLIPVisionModel

    from deepfake_detect.models.registry import build_detector

    effort = build_detector(effort_config(args.size), weights=release).for_inference()
    backbone = CLIPVisionModel.from_pretrained(snapshot)
    merged = {k.removeprefix("backbone."): v for k, v in effort.state_dict().items()
              if k.startswith("backbone.")}
    backbone.load_state_dict(merged, strict=True)
    del merged
    head = nn.Linear(effort.head.in_features, effort.head.out_features)
    head.load_state_dict(effort.head.state_dict())
    plain = PlainClipClassifier(backbone, head)
    models = {"effort": effort.to(device).eval(), "plain": plain.to(device).eval()}
    attn = {"effort": effort.backbone.config._attn_implementation,
            "plain": backbone.config._attn_implementation}
    size = SIZES[args.size]["image_size"]
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(2)).to(device)

    def once(model: nn.Module) -> tuple[float, torch.Tensor]:
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode(), autocast(device):
            out = model(x)
        sync(device)
        return time.perf_counter() - t, out

    logits = {}
    for name, model in models.items():
        for _ in range(args.warmup):
            _, logits[name] = once(model)
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.reps):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            times[name].append(once(models[name])[0])
    a, b = logits["effort"].float().cpu(), logits["plain"].float().cpu()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    del models, effort, plain, backbone
    free()
    return {"times": times, "diff": diff, "scale": scale, "attn": attn}


# -- (c) training step (each variant in its own process) ------------------------------------------


def _proc_status(key: str) -> int:
    """A /proc/self/status field in KiB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak covers training only.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The official formula: the dense weight is formed on every forward."""
    weight = self.weight_main + self.U_residual @ torch.diag(self.S_residual) @ self.V_residual
    return F.linear(x, weight, self.bias)


def train_worker(spec: dict) -> dict:
    """Runs in a fresh process: build from the release, then warm-up + timed optimizer steps."""
    from deepfake_detect.models.adapters.svd import SVDResidualLinear
    from deepfake_detect.models.registry import build_detector

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    variant = spec["variant"]
    if variant == "dense":
        SVDResidualLinear.forward = _dense_forward  # this process only
    cfg = effort_config(spec["size"], grad_checkpointing=variant == "ours+ckpt")
    model = build_detector(cfg, weights=spec["release"]).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    size, batch = SIZES[spec["size"]]["image_size"], spec["batch"]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 2, (batch,), generator=gen).to(device)
    free()
    rss_before = _proc_status("VmRSS")
    reset = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cuda_before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        sync(device)
        t = time.perf_counter()
        with autocast(device):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        times.append(time.perf_counter() - t)
    out = {
        "variant": variant, "times": times[spec["warmup"]:], "loss": float(loss),
        "trainable": sum(p.numel() for p in params),
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": _proc_status("VmHWM") / 1024 if reset else None,
    }
    if not reset:  # lifetime peak (includes the build) where the high-water mark cannot be reset
        import resource

        out["lifetime_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["cuda_before_mib"] = cuda_before / 2**20
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_training(args, release: Path, device: torch.device) -> dict[str, dict]:
    results = {}
    for variant in TRAIN_VARIANTS:
        spec = {"variant": variant, "size": args.size, "release": str(release),
                "device": str(device), "threads": args.threads, "batch": args.train_batch,
                "warmup": 1, "steps": args.steps}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                              check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"training variant {variant} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {variant}: done ({runs(results[variant]['times'])} s/step)", flush=True)
    return results


# -- report ---------------------------------------------------------------------------------------


def device_words(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return f"CPU, {os.cpu_count()} cores, {threads} torch threads"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--repeats", type=int, default=3, help="build-time runs of each variant")
    parser.add_argument("--svd-repeats", type=int, default=1,
                        help="runs of the SVD builds (context only; slow on a CPU)")
    parser.add_argument("--batch", type=int, default=None, help="forward batch (4 CPU, 64 CUDA)")
    parser.add_argument("--reps", type=int, default=5, help="timed forward passes of each model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes of each")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (2 CPU, 32 CUDA)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after 1 warm-up)")
    parser.add_argument("--skip-train", action="store_true", help="skip (c)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # from_pretrained's per-run loading bar
    if args.worker:
        print(json.dumps(train_worker(json.loads(args.worker))))
        return 0
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (64 if gpu else 4)
    args.train_batch = args.train_batch or (32 if gpu else 2)
    date = datetime.date.today().isoformat()
    where = device_words(device, args.threads)
    print(f"date {date} | device: {where} | torch {torch.__version__} | "
          f"transformers {transformers.__version__} | python {sys.version.split()[0]}")
    print(f"size: {args.size} ({SIZE_NAMES[args.size]}: {SIZES[args.size]})", flush=True)

    with tempfile.TemporaryDirectory(prefix="effort_speed_") as tmp:
        t = time.perf_counter()
        snapshot = write_snapshot(Path(tmp) / "clip_snapshot", args.size)
        release = Path(tmp) / "effort_release.pth"
        n_tensors, n_values = write_release(release, snapshot, args.size)
        free()
        print(f"weights written in {time.perf_counter() - t:.1f} s: release {n_tensors} tensors, "
              f"{n_values:,} values, {release.stat().st_size / 2**20:.0f} MiB; snapshot "
              f"{(snapshot / 'model.safetensors').stat().st_size / 2**20:.0f} MiB", flush=True)

        # (a)
        print("\n(a) build time ...", flush=True)
        build = measure_build(args, release, snapshot)
        bt = build["times"]
        rel, plain = median(bt["release"]), median(bt["plain"])
        build_ratio = rel / plain
        print(f"build from the Effort release:       {rel:7.2f} s  (runs {runs(bt['release'])})")
        print(f"build plain CLIP (from_pretrained):  {plain:7.2f} s  (runs {runs(bt['plain'])})")
        print(f"ratio release / plain:               {build_ratio:7.3f}  (target <= 1.2) "
              f"{'OK' if build_ratio <= 1.2 else 'ABOVE TARGET'}")
        for key, label in (("svd64", "float64"), ("svd32", "float32")):
            if not bt[key]:
                continue
            m = median(bt[key])
            print(f"official loader: plain CLIP + SVDs ({label}): {m:7.2f} s  (runs {runs(bt[key])})"
                  f"  = {m / rel:.1f}x the release build")
        rd = build["ready"]
        ready_rel, ready_plain = median(rd["release"]), median(rd["plain"])
        print(f"build + first read of every weight: release {ready_rel:.2f} s (runs {runs(rd['release'])}), "
              f"plain {ready_plain:.2f} s (runs {runs(rd['plain'])}), ratio {ready_rel / ready_plain:.3f} "
              "(from_pretrained memory-maps the safetensors file and reads weights on first use)")
        bd = build["breakdown"]
        print("release build, one more run split up: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in bd.items())
              + f" (sum {sum(bd.values()):.2f} s)", flush=True)

        # (b)
        print(f"\n(b) forward, batch {args.batch}, {'bf16 autocast' if gpu else 'float32'} ...", flush=True)
        fwd = measure_forward(args, release, snapshot, device)
        ft = fwd["times"]
        ips_e = args.batch / median(ft["effort"])
        ips_p = args.batch / median(ft["plain"])
        fwd_ratio = ips_e / ips_p
        rel_diff = fwd["diff"] / max(fwd["scale"], 1e-12)
        print(f"attention implementation: effort {fwd['attn']['effort']}, plain {fwd['attn']['plain']}")
        print(f"Effort merged (for_inference):  {ips_e:8.2f} img/s  "
              f"(s/batch runs {runs(ft['effort'], '{:.3f}')})")
        print(f"plain CLIP + Linear head:       {ips_p:8.2f} img/s  "
              f"(s/batch runs {runs(ft['plain'], '{:.3f}')})")
        print(f"ratio effort / plain:           {fwd_ratio:8.3f}  (target >= 0.98) "
              f"{'OK' if fwd_ratio >= 0.98 else 'BELOW TARGET'}")
        print(f"logits max |effort - plain|:    {fwd['diff']:.3g} (max |logit| {fwd['scale']:.3g}, "
              f"relative {rel_diff:.3g}) {'OK' if rel_diff <= 1e-5 or gpu else 'MISMATCH'}", flush=True)

        # (c)
        train = {}
        if not args.skip_train:
            print(f"\n(c) training step, batch {args.train_batch}, 1 warm-up + {args.steps} timed "
                  f"steps, each variant in a fresh process ...", flush=True)
            train = measure_training(args, release, device)
            for name, r in train.items():
                ips = args.train_batch / median(r["times"])
                r["ips"] = ips
                if gpu:
                    mem = (f"peak {r['cuda_peak_mib']:.0f} MiB allocated "
                           f"(model and optimizer before the steps {r['cuda_before_mib']:.0f} MiB)")
                elif r["peak_rss_mib"] is not None:
                    r["delta_mib"] = r["peak_rss_mib"] - r["rss_before_mib"]
                    mem = (f"peak RSS over the steps {r['peak_rss_mib']:.0f} MiB, "
                           f"+{r['delta_mib']:.0f} MiB over {r['rss_before_mib']:.0f} MiB before")
                else:
                    mem = f"lifetime peak RSS {r['lifetime_peak_rss_mib']:.0f} MiB (includes the build)"
                print(f"{name:10s} {ips:7.3f} img/s  (s/step {runs(r['times'])}) | {mem} | "
                      f"trainable {r['trainable']:,} | loss {r['loss']:.4f}")
            if "ours" in train and "dense" in train:
                print(f"ratio ours / dense img/s: {train['ours']['ips'] / train['dense']['ips']:.3f}")

    # A block to paste into benchmarks/RESULTS.md.
    print("\n---- summary (markdown) ----")
    print(f"## effort_speed.py: Effort ({SIZE_NAMES[args.size]}, SVD residual) vs plain CLIP\n")
    print("| date | device | measure | Effort | plain CLIP | ratio | target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {date} | {where} | build (median of {args.repeats}) | {rel:.2f} s (release file) | "
          f"{plain:.2f} s (from_pretrained) | {build_ratio:.3f} | <= 1.2 |")
    print(f"| {date} | {where} | build + first read of every weight | {ready_rel:.2f} s | "
          f"{ready_plain:.2f} s | {ready_rel / ready_plain:.3f} | |")
    print(f"| {date} | {where} | forward, batch {args.batch}, {'bf16' if gpu else 'fp32'} | "
          f"{ips_e:.2f} img/s (merged) | {ips_p:.2f} img/s | {fwd_ratio:.3f} | >= 0.98 |")
    if bt["svd64"]:
        print(f"\nOfficial loader for context (plain CLIP, then the SVD of every adapted layer): "
              f"float64 {median(bt['svd64']):.1f} s, float32 {median(bt['svd32']):.1f} s.")
    print(f"\nLogits of merged Effort vs plain CLIP: max abs difference {fwd['diff']:.3g}.")
    if train:
        unit = "peak CUDA memory allocated" if gpu else "peak RSS over the steps (growth over before)"
        print(f"\nTraining step, batch {args.train_batch}, only residuals + head trainable "
              f"(Adam, {'bf16 autocast' if gpu else 'fp32'}), median of {args.steps} steps:\n")
        print(f"| date | device | variant | img/s | {unit} |")
        print("| --- | --- | --- | --- | --- |")
        for name, r in train.items():
            if gpu:
                mem = f"{r['cuda_peak_mib']:.0f} MiB"
            elif "delta_mib" in r:
                mem = f"{r['peak_rss_mib']:.0f} MiB (+{r['delta_mib']:.0f} MiB)"
            else:
                mem = f"{r['lifetime_peak_rss_mib']:.0f} MiB (lifetime)"
            label = {"ours": "factored residual (ours)", "dense": "dense W + U diag(S) V (official)",
                     "ours+ckpt": "factored + grad_checkpointing"}[name]
            print(f"| {date} | {where} | {label} | {r['ips']:.3f} | {mem} |")
        if "ours" in train and "dense" in train:
            ratio = train["ours"]["ips"] / train["dense"]["ips"]
            print(f"\nRatio ours / dense images per second: {ratio:.3f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
