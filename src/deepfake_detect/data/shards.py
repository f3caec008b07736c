"""Sharded datasets: the face crops of a dataset packed into litdata chunks, one per split.

``write_shards`` scans the inputs as training does, makes the splits exactly as
:class:`~deepfake_detect.data.datamodule.FaceDataModule` would (``assign_splits``, a video never
straddles splits), and writes ``out/<split>/`` (a litdata optimized dataset: each item holds the
image file's bytes as they were cut, never re-encoded, its label, its index within the split and
its metadata), ``out/<split>/samples.csv`` (the split's samples in index order) and
``out/shards.json`` (format marker, counts, inputs, version).

Training reads such a folder when ``data.path`` names it (:func:`is_shard_folder`): the loaders
are litdata ``StreamingDataLoader``s over :class:`ShardDataset`.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litdata import StreamingDataset

from deepfake_detect.data.images import ImageLoadError, decode_rgb, verify_images
from deepfake_detect.data.samples import CLASS_NAMES, Sample
from deepfake_detect.data.sources import log_discovery, scan
from deepfake_detect.data.splits import assign_splits
from deepfake_detect.errors import DataError

log = logging.getLogger(__name__)

MARKER = "shards.json"
FORMAT = 1
SPLITS = ("train", "val", "test")
COLUMNS = ("index", "path", "label", "video", "split", "dataset", "frame", "group")


@dataclass
class ShardReport:
    out: Path
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    videos: dict[str, int]  # split -> videos
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def table(self) -> list[tuple[str, str]]:
        rows = []
        for split, per in self.counts.items():
            shown = ", ".join(f"{per[n]} {n}" for n in CLASS_NAMES)
            total = sum(per.values())
            rows.append((split, f"{total} images ({shown}), {self.videos[split]} videos"))
        rows.append(("skipped", f"{len(self.skipped)} unreadable images"))
        rows.append(("shards", str(self.out)))
        return rows


# --------------------------------------------------------------------------- writing


def _item(index: int, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One litdata item: the file's bytes as cut, label, index in the split, metadata."""
    rec = records[index]
    return {
        "image": Path(rec["path"]).read_bytes(),
        "label": int(rec["label"]),
        "index": int(rec["index"]),
        # one JSON blob: litdata would read a str that names an existing file as that file
        "meta": json.dumps(rec).encode("utf-8"),
    }


def _record(index: int, s: Sample) -> dict[str, Any]:
    return {"index": index, "path": str(s.path), "label": s.label, "video": s.video,
            "split": s.split, "dataset": s.dataset, "frame": s.frame, "group": s.group}


def write_shards(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    workers: int = 1,
    chunk_bytes: str | int = "64MB",
    group_depth: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    verify: str = "header",
) -> ShardReport:
    """Write the samples of ``inputs`` as one litdata dataset per split under ``out``."""
    import litdata

    from deepfake_detect import __version__
    from deepfake_detect.outputs import OutputError, RunLock, atomic_write, claim_folder

    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    for src in inputs:  # claim_folder refuses an --out that holds an input; also the reverse
        if src.is_dir() and Path(out).resolve().is_relative_to(src.resolve()):
            raise OutputError(f"--out {out} lies inside the input {src}; write the shards into a "
                              "folder of their own, outside the inputs")
    out = claim_folder(out, "shard", inputs=inputs)
    with RunLock(out, "shard"):
        found = scan(inputs, group_depth=group_depth)
        log_discovery(found)
        if found.videos:
            log.warning("left out %d video files: cut them into face crops with `prepare` first",
                        len(found.videos))
        samples = assign_splits(found.samples, val_fraction, test_fraction, split_seed)
        skipped = [(str(p), r) for p, r in found.missing]
        bad = verify_images([s.path for s in samples], verify)  # after splitting, as training
        if bad:
            bad_paths = {p for p, _ in bad}
            samples = [s for s in samples if s.path not in bad_paths]
            skipped += [(str(p), reason) for p, reason in bad]
        if not samples:
            raise DataError(f"no readable images found in {', '.join(map(str, inputs))}")
        counts: dict[str, dict[str, int]] = {}
        videos: dict[str, int] = {}
        for split in SPLITS:
            part = [s for s in samples if s.split == split]
            target = out / split
            if target.exists():  # a rerun into this command's own folder
                shutil.rmtree(target)
            if not part:
                continue
            records = [_record(i, s) for i, s in enumerate(part)]
            _optimize(litdata, functools.partial(_item, records=records), len(records),
                      target, chunk_bytes, workers)
            _write_index(target / "samples.csv", records)
            per = Counter(CLASS_NAMES[s.label] for s in part)
            counts[split] = {n: per.get(n, 0) for n in CLASS_NAMES}
            videos[split] = len({(s.dataset, s.video) for s in part})
        info = {
            "deepfake_detect": __version__,
            "deepfake_detect.shards": FORMAT,
            "tool_command": "shard",
            "inputs": [str(p) for p in inputs],
            "splits": list(counts),
            "counts": counts,
            "videos": videos,
            "split_rule": {"val_fraction": val_fraction, "test_fraction": test_fraction,
                           "split_seed": split_seed, "group_depth": group_depth},
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
        }
        atomic_write(out / MARKER, json.dumps(info, indent=2))
    return ShardReport(out, counts, videos, skipped)


def _optimize(litdata: Any, fn: Callable[[int], dict], n: int, target: Path,
              chunk_bytes: str | int, workers: int) -> None:
    """``litdata.optimize`` over the item numbers 0..n-1. Its workers fork where the OS can (no
    main-module import guard needed, quick start), and the process-wide start method it sets
    is put back afterwards so that later DataLoaders are not changed behind the caller's back."""
    import multiprocessing
    import os

    before = multiprocessing.get_start_method(allow_none=True)
    forks = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
    method = "fork" if forks else "spawn"
    # litdata stages chunks in <tmp>/chunks and <tmp>/data unless told otherwise: keep its work
    # inside the output folder (the tool writes nowhere else) and remove it afterwards
    work = target.parent / ".litdata-work"
    folders = {"DATA_OPTIMIZER_CACHE_FOLDER": work / "chunks",
               "DATA_OPTIMIZER_DATA_CACHE_FOLDER": work / "data"}
    saved = {k: os.environ.get(k) for k in folders}
    os.environ.update({k: str(v) for k, v in folders.items()})
    try:
        litdata.optimize(fn=fn, inputs=list(range(n)), output_dir=str(target),
                         chunk_bytes=chunk_bytes, num_workers=max(1, workers),
                         start_method=method, verbose=False)
    finally:
        multiprocessing.set_start_method(before, force=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(work, ignore_errors=True)  # ours: made by this call


def _write_index(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for r in records:
            writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])


# --------------------------------------------------------------------------- reading


def shard_info(path: str | Path) -> dict[str, Any] | None:
    """The ``shards.json`` of a shard folder, or None when ``path`` is not one."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("deepfake_detect.shards") is None:
        return None
    if info["deepfake_detect.shards"] != FORMAT:
        raise DataError(f"{path}: shard format {info['deepfake_detect.shards']} is not the "
                        f"{FORMAT} this version reads; write it again with `deepfake-detect shard`")
    return info


def is_shard_folder(path: str | Path) -> bool:
    return shard_info(path) is not None


def read_index(folder: str | Path, split: str) -> list[Sample]:
    """The samples of ``split`` of a shard folder, in index order (``path``: the source file)."""
    path = Path(folder) / split / "samples.csv"
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(Sample(Path(row["path"]), int(row["label"]), row["video"],
                              row["split"] or None, row["dataset"], row["frame"] or None,
                              row["group"] or None))
    return out


class ShardDataset(StreamingDataset):
    """A litdata ``StreamingDataset`` over one split of a shard folder whose items are what
    :class:`~deepfake_detect.data.datasets.FaceImageDataset` gives: ``{"image", "label",
    "index"}`` (``index``: the sample's place in :func:`read_index`), or ``{"error", "path",
    "index"}`` for bytes that do not decode (:func:`collate_skipping` drops those)."""

    def __init__(self, input_dir: str | Path, transform: Callable[[Any], Any], *,
                 shuffle: bool = False, seed: int = 0, **options: Any) -> None:
        super().__init__(str(input_dir), shuffle=shuffle, seed=seed, drop_last=False, **options)
        self.image_transform = transform

    def __getitem__(self, index: Any) -> dict[str, Any]:
        item = super().__getitem__(index)
        try:
            meta = json.loads(bytes(item["meta"]).decode("utf-8"))
        except ValueError:
            meta = {}
        name = meta.get("path", f"item {item['index']}")
        try:
            image = decode_rgb(bytes(item["image"]), name)
        except ImageLoadError as e:
            return {"error": e.reason, "path": str(name), "index": int(item["index"])}
        return {"image": self.image_transform(image), "label": int(item["label"]),
                "index": int(item["index"])}


def raw_items(folder: str | Path, split: str) -> list[dict[str, Any]]:
    """Every item of ``split`` as stored (bytes undecoded), in index order (tests, extraction)."""
    target = Path(folder) / split
    if not (target / "index.json").is_file():
        return []
    ds = StreamingDataset(str(target), shuffle=False)
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        it["image"] = bytes(it["image"])
        it["meta"] = json.loads(bytes(it["meta"]).decode("utf-8"))
    return sorted(items, key=lambda it: int(it["index"]))


def extract_split(folder: str | Path, split: str, dest: str | Path) -> list[Sample]:
    """Write the images of ``split`` to ``dest`` as files (byte for byte) and return its
    samples pointing at them, in index order: for the evaluation code, which reads files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    samples = read_index(folder, split)
    for it in raw_items(folder, split):
        i = int(it["index"])
        source = samples[i]
        target = dest / f"{i:07d}_{source.path.name}"
        target.write_bytes(it["image"])
        samples[i] = Sample(target, source.label, source.video, source.split, source.dataset,
                            source.frame, source.group)
    return samples
