"""Speed and memory of ``prepare`` on the shared videos, measured side by side in one run.

For each video: decode-only time of the sampled frames (the same frames prepare reads), the
time of the whole prepare step (decode, face detection, crop, PNG write, manifest), their ratio
(target <= 3 on CPU), frames per second, a full decode of every frame for comparison (what a
pipeline that decodes whole videos pays), and the peak memory of prepare on the 1080p video,
measured in a fresh process (target < 1.5 GB).

Then several videos in one run (two copies of each shared video) with ``videos_at_once`` 1, 2
and 4: one video at a time against videos decoded side by side sharing detection batches.

    uv run python benchmarks/prepare_speed.py [--frames 32] [--device cpu] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPFAKE_DETECT_SHARED", REPO.parent / "shared"))


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _decode_sampled(video: Path, frames) -> int:
    from deepfake_detect.data.video import read_frames

    return sum(1 for _ in read_frames(video, frames))


def _decode_all(video: Path) -> int:
    import av

    with av.open(str(video)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for f in c.decode(stream) if f.to_ndarray(format="rgb24") is not None)


def _peak_rss_of_prepare(video: Path, args) -> float:
    """Peak resident memory (MiB) of a fresh process running prepare on one video."""
    code = (
        "import sys, resource, tempfile\n"
        "from deepfake_detect.config.schema import PrepareConfig\n"
        "from deepfake_detect.data.prepare import prepare\n"
        f"cfg = PrepareConfig.model_validate({{'frames': {{'count': {args.frames}}}, "
        f"'detect': {{'device': '{args.device}'}}}})\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        f"    prepare([{str(video)!r}], d, cfg, label=0, progress=False)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss across
    # fork and exec, so a child of this (large) benchmark process would report the parent's.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # KiB


def _several_videos(cfg, detector, args) -> dict:
    """prepare of several videos in one run (two copies of each shared video), one video at a
    time against several at once (their frames decoded side by side and detected in shared
    batches): the same crops, timed side by side."""
    import shutil

    from deepfake_detect.data.prepare import prepare

    videos = sorted((SHARED / "media" / "videos").glob("*.mp4"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as src:
        for k in range(2):
            for v in videos:
                shutil.copy(v, Path(src) / f"{v.stem}_{k}.mp4")
        copies = sorted(Path(src).glob("*.mp4"))
        frames = sum(_decode_sampled(v, cfg.frames) for v in copies)
        decode = _best(lambda: [_decode_sampled(v, cfg.frames) for v in copies], args.repeat)
        out["videos"], out["frames"], out["decode_s"] = len(copies), frames, decode
        print(f"{len(copies)} videos ({frames} sampled frames): decode-only {decode:.3f} s")
        for at_once in (1, 2, 4):
            def run() -> None:
                with tempfile.TemporaryDirectory() as d:
                    prepare([src], d, cfg, label=0, progress=False, detector=detector,
                            videos_at_once=at_once)

            whole = _best(run, args.repeat)
            out[f"at_once_{at_once}_s"] = whole
            print(f"  videos_at_once {at_once}: prepare {whole:.3f} s ({frames / whole:.1f} "
                  f"frames/s), ratio prepare/decode {whole / decode:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import torch

    from deepfake_detect.config.schema import PrepareConfig
    from deepfake_detect.data.faces.cascade import build_face_finder
    from deepfake_detect.data.prepare import prepare

    cfg = PrepareConfig.model_validate(
        {"frames": {"count": args.frames}, "detect": {"device": args.device}}
    )
    detector = build_face_finder(cfg.detect, cfg.crop)  # built once, as a prepare worker does
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.frames} frames per video")
    results = {}
    for video in sorted((SHARED / "media" / "videos").glob("*.mp4")):
        n = _decode_sampled(video, cfg.frames)
        decode = _best(lambda: _decode_sampled(video, cfg.frames), args.repeat)
        full = _best(lambda: _decode_all(video), 1)

        def run() -> None:
            with tempfile.TemporaryDirectory() as d:
                prepare([video], d, cfg, label=0, progress=False, detector=detector)

        whole = _best(run, args.repeat)
        results[video.name] = {
            "frames": n, "decode_s": decode, "full_decode_s": full, "prepare_s": whole,
            "ratio": whole / decode, "prepare_fps": n / whole,
        }
        print(
            f"{video.name}: {n} frames | decode-only {decode:.3f} s | prepare {whole:.3f} s "
            f"({n / whole:.1f} frames/s) | ratio prepare/decode {whole / decode:.2f} "
            f"| full decode of every frame {full:.3f} s"
        )
    results["several_videos"] = _several_videos(cfg, detector, args)
    big = SHARED / "media" / "videos" / "faces_1080p.mp4"
    peak = _peak_rss_of_prepare(big, args)
    results["peak_rss_mib_1080p"] = peak
    print(f"peak memory of prepare on {big.name} (fresh process): {peak:.0f} MiB")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
