"""`deepfake-detect serve` under load: a loopback server answering concurrent photo uploads,
against `predict` scoring the same photos in one process.

Both sides use the same checkpoint (a random-weight detector, default `efficientnet_b0` at 224
px, saved with the default face settings), device and batch size, in one process:
- predict: the library call behind `deepfake-detect predict` on the N photo files, the model
  loaded beforehand (untimed), timed from file names to rows (decode, face detection, crops,
  scoring, aggregation);
- server: a uvicorn server on 127.0.0.1 (`run_in_thread`), the model loaded beforehand; N
  photo uploads (multipart POST /v1/predict) from `--concurrency` client threads (httpx),
  timed from the first request sent to the last answer received. The client threads run in
  the same process as the server and take their share of the CPU.
Runs alternate (``--repeats``), the best of each side counting. Every answer of every server
run is checked: P(fake) equal to predict's for the same file within 1e-5. Prints
latency p50/p95, requests/s, predict's files/s and the ratio server / predict (target >= 0.8).

    uv run python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.predict import predict_files
from deepfake_detect.models import build_detector, checkpoint_meta, export_safetensors
from deepfake_detect.serve import ServeSettings, create_app, load_engine, run_in_thread

REPO = Path(__file__).resolve().parents[1]


def shared_faces() -> Path:
    shared = Path(os.environ.get("DEEPFAKE_DETECT_SHARED", REPO.parent / "shared"))
    return shared / "media" / "faces"


def make_checkpoint(folder: Path, model: str, size: int) -> Path:
    torch.manual_seed(0)
    det = build_detector({"name": model, "input_size": size}).eval()
    meta = checkpoint_meta(det, threshold=0.5,
                           experiment={"model": det.config.model_dump(mode="json")})
    return export_safetensors(det, folder / "model.safetensors", meta)


def make_photos(source: Path, folder: Path, n: int, max_side: int) -> list[Path]:
    """``n`` distinct files cycling through the photos of ``source``, shrunk to ``max_side``
    (an upload's usual size; 0: as they are)."""
    originals = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not originals:
        raise SystemExit(f"no photos in {source}; set DEEPFAKE_DETECT_SHARED or --photos")
    folder.mkdir(parents=True)
    encoded = []
    for p in originals:
        im = Image.open(p).convert("RGB")
        if max_side and max(im.size) > max_side:
            im.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    paths = []
    for i in range(n):
        path = folder / f"photo{i:04d}.jpg"
        path.write_bytes(encoded[i % len(encoded)])
        paths.append(path)
    return paths


def time_predict(predictor, files: list[Path], device: str, batch: int) -> tuple[float, dict]:
    start = time.perf_counter()
    rows = predict_files(predictor, files, batch_size=batch, device=device, progress=False,
                         num_workers=0)
    seconds = time.perf_counter() - start
    return seconds, {Path(r.filename).name: r.score for r in rows}


def load_server(base_url: str, files: list[Path], concurrency: int) -> tuple[float, list, list]:
    """(seconds, latencies, answers) of every file posted once, ``concurrency`` at a time."""
    import httpx

    payloads = [(p.name, p.read_bytes()) for p in files]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies = [0.0] * len(files)
    answers: list = [None] * len(files)
    local = threading.local()

    def one(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base_url, timeout=300, limits=limits)
        name, data = payloads[i]
        start = time.perf_counter()
        response = client.post("/v1/predict", files={"file": (name, data, "image/jpeg")})
        latencies[i] = time.perf_counter() - start
        answers[i] = (response.status_code, response.json())

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(files))))
    return time.perf_counter() - start, latencies, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0", help="registry name")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="face crops per forward pass")
    parser.add_argument("--photos", type=Path, default=None, help="folder of face photos "
                        "(default: the shared media/faces)")
    parser.add_argument("--max-side", type=int, default=1024, help="photos shrunk to this "
                        "longest side (0: as they are)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; "
                        "the best of each counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "model", args.model, args.size)
        files = make_photos(args.photos or shared_faces(), tmp / "photos", args.requests,
                            args.max_side)
        settings = ServeSettings(checkpoints=[ckpt], device=args.device, batch_size=args.batch,
                                 image_workers=max(16, args.concurrency))
        engine = load_engine(settings)
        device = str(engine.options.device)
        predictor = ModelSource(ckpt).load()
        time_predict(predictor, files[:8], device, args.batch)  # warm-up (kernels, allocator)
        app = create_app(settings, engine)
        predict_runs, server_runs = [], []
        with run_in_thread(app) as base_url:
            load_server(base_url, files[:8], min(8, args.concurrency))  # warm-up
            for _ in range(args.repeats):  # alternating, so that both see the same machine
                predict_s, expected = time_predict(predictor, files, device, args.batch)
                predict_runs.append(predict_s)
                batches_before = engine.batches
                run = load_server(base_url, files, args.concurrency)
                server_runs.append((run, engine.batches - batches_before))
        predict_s = min(predict_runs)
        (server_s, latencies, answers), batches = min(server_runs, key=lambda r: r[0][0])

    worst, bad = 0.0, []
    every = [(path, answer) for (_, _, run), _ in server_runs for path, answer in zip(files, run)]
    for path, (status, body) in every:
        want = expected[path.name]
        got = body.get("p_fake") if status == 200 else "error"
        if status != 200 or (want is None) != (got is None):
            bad.append(f"{path.name}: HTTP {status} {got!r}, predict {want!r}")
        elif want is not None:
            worst = max(worst, abs(got - want))
            if abs(got - want) > 1e-5:
                bad.append(f"{path.name}: p_fake {got} != predict {want}")
    lat = np.asarray(latencies) * 1000
    server_rps, predict_fps = len(files) / server_s, len(files) / predict_s
    faces = sum(b.get("counts", {}).get("faces", 0) for s, b in answers if s == 200)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, model: {args.model} at "
          f"{args.size} px, batch {args.batch}, photos: {len(files)} (<= {args.max_side} px), "
          f"concurrency {args.concurrency}")
    print(f"predict:  {predict_fps:7.2f} files/s ({predict_s:.1f} s; runs "
          f"{', '.join(f'{t:.1f}' for t in predict_runs)} s)")
    print(f"server:   {server_rps:7.2f} requests/s ({server_s:.1f} s; runs "
          f"{', '.join(f'{r[0][0]:.1f}' for r in server_runs)} s); latency p50 "
          f"{np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, max "
          f"{lat.max():.0f} ms; {faces} faces in {batches} crop batches "
          f"({faces / max(batches, 1):.1f} crops per batch)")
    print(f"answers: {len(every) - len(bad)}/{len(every)} equal to predict (max |diff| "
          f"{worst:.2g})")
    for line in bad[:10]:
        print(f"  MISMATCH {line}")
    ratio = server_rps / predict_fps
    print(f"ratio (server / predict): {ratio:.3f}  (target >= 0.80) "
          f"{'OK' if ratio >= 0.8 else 'BELOW TARGET'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
