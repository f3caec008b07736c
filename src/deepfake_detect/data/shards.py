"""Sharded datasets: the face crops of a dataset packed into litdata chunks, one per split.

``write_shards`` scans the inputs as training does, makes the splits exactly as
:class:`~deepfake_detect.data.datamodule.FaceDataModule` would (``assign_splits``, a video never
straddles splits), and writes ``out/<split>/`` (a litdata optimized dataset: each item holds the
image file's bytes as they were cut, never re-encoded, its label, its index within the split and
its metadata), ``out/<split>/samples.csv`` (the split's samples in index order) and
``out/shards.json`` (format marker, counts, inputs, version). ``shards.json`` is removed when a
run starts and written last, so a folder whose run was interrupted is never taken for a
complete shard folder.

Several machines: ``write_shards(..., node=(r, n))`` on each of ``n`` machines that share ``out``
(e.g. over NFS). Every node scans the same inputs and makes the same splits (deterministic), then
writes only its share of each split, the item numbers ``[len*r//n, len*(r+1)//n)``, as a litdata
dataset of its own in ``out/.nodes/node-<r>-of-<n>/<split>/`` (with that share's
``samples.csv``), and finally ``node.json``, which marks the node as finished and records its
inputs, split settings and a digest of the whole split plan. The last node to finish (or
``merge_shard_nodes``, the ``shard-merge`` command) checks that all ``n`` nodes are there,
finished, and agree, joins each split's node datasets with litdata's ``merge_datasets`` into
``out/<split>/``, writes the split's ``samples.csv`` and ``shards.json``, and removes the node
folders: the result is the folder one machine would have written (same samples, ``index``
numbering, bytes and counts; only the chunk layout differs).

Why not litdata's own multi-node mode (``DATA_OPTIMIZER_NUM_NODES`` / ``DATA_OPTIMIZER_NODE_RANK``)
on a shared local folder: each ``optimize`` call first deletes every ``*.bin`` and ``*index.json``
in its output folder (a node starting later wipes the chunks of one that finished), the last rank
merges whichever ``<rank>-index.json`` exist at that moment without waiting for the others on a
local path, and chunk names (``node_rank * num_workers + worker``) collide when nodes use different
``--workers``. Outside Lightning's cloud, where all nodes start together and write to object
storage, that leaves an incomplete or broken dataset; separate node datasets joined by
``merge_datasets`` do not.

Training reads a shard folder when ``data.path`` names it (see
:mod:`deepfake_detect.data.shard_reader`): the loaders are litdata ``StreamingDataLoader``s.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import os
import logging
import re
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfake_detect.data.images import verify_images
from deepfake_detect.data.samples import CLASS_NAMES, Sample
from deepfake_detect.data.shard_reader import FORMAT, MARKER, SPLITS, check_chunks
from deepfake_detect.data.sources import log_discovery, scan
from deepfake_detect.data.splits import assign_splits
from deepfake_detect.errors import DataError, OutputError
from deepfake_detect.outputs import PartLock

log = logging.getLogger(__name__)

COLUMNS = ("index", "path", "label", "video", "split", "dataset", "frame", "group")
NODES = ".nodes"  # the node parts of a multi-node run, below the output folder
NODE_FILE = "node.json"  # in a node's folder, written last: the node is finished
NODE_FORMAT = 1
_NODE_DIR = re.compile(r"node-(\d+)-of-(\d+)")
_DEFAULT_RULE = {"val_fraction": 0.15, "test_fraction": 0.0, "split_seed": 0, "group_depth": None}


class NodesNotReady(DataError):
    """Some nodes of a multi-node shard are missing or unfinished (the others may still run)."""


@dataclass
class ShardReport:
    out: Path
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    videos: dict[str, int]  # split -> videos
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
    node: tuple[int, int] | None = None  # a node's share (counts are of that share), or None
    merged_nodes: int = 0  # node parts joined into this dataset (0: written by one machine)

    def table(self) -> list[tuple[str, str]]:
        rows = []
        for split, per in self.counts.items():
            shown = ", ".join(f"{per[n]} {n}" for n in CLASS_NAMES)
            total = sum(per.values())
            rows.append((split, f"{total} images ({shown}), {self.videos[split]} videos"))
        rows.append(("skipped", f"{len(self.skipped)} unreadable images"))
        if self.merged_nodes:
            rows.append(("nodes", f"{self.merged_nodes} merged"))
        rows.append(("shards", str(self.out)))
        return rows


@dataclass(frozen=True)
class ShardOptions:
    """``prepare --shards DIR`` (and ``prepare-merge --shards DIR``): pack the prepared output
    into shards in ``out`` as ``shard PREPARED --out DIR`` with these options would."""

    out: Path
    workers: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    split_seed: int = 0
    group_depth: int | None = None

    def claim(self, inputs: Sequence[str | Path]) -> Path:
        """Refuse a ``--shards`` folder that holds, or lies in, the prepare output or inputs
        (checked before the prepare work starts)."""
        return claim_shard_folder(self.out, inputs, what="--shards")

    def write(self, prepared: str | Path) -> ShardReport:
        return write_shards([prepared], self.out, workers=self.workers,
                            val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                            split_seed=self.split_seed, group_depth=self.group_depth)


def claim_shard_folder(out: str | Path, inputs: Sequence[str | Path], what: str = "--out") -> Path:
    """``out`` claimed as a ``shard`` folder: never one holding an input, nor one inside an input
    folder (claim_folder checks the first; the second here)."""
    for src in map(Path, inputs):
        if src.is_dir() and Path(out).resolve().is_relative_to(src.resolve()):
            raise OutputError(f"{what} {out} lies inside the input {src}; write the shards into a "
                              "folder of their own, outside the inputs")
    from deepfake_detect.outputs import claim_folder

    return claim_folder(out, "shard", inputs=inputs, what=what)


# --------------------------------------------------------------------------- the plan


@dataclass
class _Plan:
    """What every machine computes alike from the inputs: the samples of each split in index
    order, and the files left out."""

    inputs: list[str]
    rule: dict[str, Any]
    verify: str
    records: dict[str, list[dict[str, Any]]]  # split -> records, index order
    skipped: list[tuple[str, str, str]]  # (path, reason, split; "" for a file never split)

    def settings(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "split_rule": self.rule, "verify": self.verify}

    def digest(self) -> str:
        """Equal on two machines only if they found the same samples, splits and skipped files
        (the same inputs can differ between machines: other files, paths, unreadable ones)."""
        blob = json.dumps({"records": self.records, "skipped": self.skipped}, sort_keys=True)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def _record(index: int, s: Sample) -> dict[str, Any]:
    return {"index": index, "path": str(s.path), "label": s.label, "video": s.video,
            "split": s.split, "dataset": s.dataset, "frame": s.frame, "group": s.group}


def _plan(inputs: list[Path], group_depth: int | None, val_fraction: float, test_fraction: float,
          split_seed: int, verify: str) -> _Plan:
    found = scan(inputs, group_depth=group_depth)
    log_discovery(found)
    if found.videos:
        log.warning("left out %d video files: cut them into face crops with `prepare` first",
                    len(found.videos))
    samples = assign_splits(found.samples, val_fraction, test_fraction, split_seed)
    skipped = [(str(p), r, "") for p, r in found.missing]
    bad = verify_images([s.path for s in samples], verify)  # after splitting, as training
    if bad:
        split_of = {s.path: s.split or "" for s in samples}
        bad_paths = {p for p, _ in bad}
        samples = [s for s in samples if s.path not in bad_paths]
        # the split is kept so that evaluating one split counts its own unreadable files
        skipped += [(str(p), reason, split_of.get(p, "")) for p, reason in bad]
    if not samples:
        raise DataError(f"no readable images found in {', '.join(map(str, inputs))}")
    records = {split: [_record(i, s) for i, s in enumerate(s for s in samples if s.split == split)]
               for split in SPLITS}
    rule = {"val_fraction": val_fraction, "test_fraction": test_fraction,
            "split_seed": split_seed, "group_depth": group_depth}
    return _Plan([str(p) for p in inputs], rule, verify, records, skipped)


def _tally(records: Sequence[dict[str, Any]]) -> tuple[dict[str, int], int]:
    """Images per class name, and videos, of ``records``."""
    per = Counter(CLASS_NAMES[int(r["label"])] for r in records)
    return {n: per.get(n, 0) for n in CLASS_NAMES}, len({(r["dataset"], r["video"]) for r in records})


def _totals(plan: _Plan) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    videos: dict[str, int] = {}
    for split in SPLITS:
        if plan.records[split]:
            counts[split], videos[split] = _tally(plan.records[split])
    return counts, videos


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


def check_node(node: tuple[int, int] | None) -> tuple[int, int] | None:
    """``node`` as ``(rank, count)`` with ``0 <= rank < count``, or a one-line DataError."""
    if node is None:
        return None
    try:
        r, n = (int(v) for v in node)
    except (TypeError, ValueError):
        raise DataError(f"node {node!r}: give --node-rank R --num-nodes N") from None
    if n < 1 or not 0 <= r < n:
        raise DataError(f"--node-rank {r} --num-nodes {n}: give 0 <= R < N, e.g. --node-rank 0 "
                        "--num-nodes 4 ... --node-rank 3 --num-nodes 4 on four machines")
    return r, n


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
    node: tuple[int, int] | None = None,
) -> ShardReport:
    """Write the samples of ``inputs`` as one litdata dataset per split under ``out``.

    ``node=(r, n)``: machine ``r`` of ``n`` sharing ``out`` writes only its share (see the
    module's notes); when it finds all ``n`` nodes finished, it merges them (the report is then
    the merged dataset's), else the report is its share's and a note says what is missing."""
    from deepfake_detect.outputs import RunLock

    node = check_node(node)
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    out = claim_shard_folder(out, inputs)
    settings = (group_depth, val_fraction, test_fraction, split_seed, verify)
    if node is None:
        with RunLock(out, "shard"):
            return _write_whole(out, _plan(inputs, *settings), chunk_bytes, workers)
    with _node_lock(out, node):
        share = _write_node(out, _plan(inputs, *settings), node, chunk_bytes, workers)
    return _merge_if_ready(out, share)


def _write_whole(out: Path, plan: _Plan, chunk_bytes: str | int, workers: int) -> ShardReport:
    import litdata

    (out / MARKER).unlink(missing_ok=True)  # until this run is complete
    for split in SPLITS:
        records = plan.records[split]
        target = out / split
        if target.exists():  # a rerun into this command's own folder
            shutil.rmtree(target)
        if not records:
            continue
        _optimize(litdata, functools.partial(_item, records=records), range(len(records)),
                  target, chunk_bytes, workers, out / ".litdata-work")
        _write_index(target / "samples.csv", records)
    counts, videos = _totals(plan)
    _write_marker(out, plan.settings(), counts, videos, plan.skipped)
    report = ShardReport(out, counts, videos, [(p, r) for p, r, _ in plan.skipped])
    if _node_parts(out):
        report.notes.append(f"{out / NODES} holds node parts of a multi-node run, left as they "
                            "are and not part of this dataset; remove them if they are not needed")
    return report


def _node_dir(out: Path, node: tuple[int, int]) -> Path:
    return out / NODES / f"node-{node[0]}-of-{node[1]}"


def _node_lock(out: Path, node: tuple[int, int]) -> PartLock:
    """prepare's part locking: the folder's lock shared (nodes run side by side; a whole run or
    a merge is refused meanwhile) and the node folder's lock exclusively (a node twice is
    refused)."""
    r, n = node
    return PartLock(out, node, command="shard", folder=_node_dir(out, node),
                    flag=f"--node-rank {r} --num-nodes {n}", name=f"node {r}/{n}", doing="written")


def _share(total: int, node: tuple[int, int]) -> tuple[int, int]:
    """The item numbers ``[lo, hi)`` of a split of ``total`` items that ``node`` writes:
    contiguous, so a node reads neighbouring files, and together exactly ``0 .. total-1``."""
    r, n = node
    return total * r // n, total * (r + 1) // n


def _write_node(out: Path, plan: _Plan, node: tuple[int, int], chunk_bytes: str | int,
                workers: int) -> ShardReport:
    import litdata

    from deepfake_detect import __version__
    from deepfake_detect.outputs import atomic_write

    folder = _node_dir(out, node)
    (folder / NODE_FILE).unlink(missing_ok=True)  # until this run is complete: a rerun redoes it
    shares: dict[str, list[int]] = {}
    counts: dict[str, dict[str, int]] = {}
    videos: dict[str, int] = {}
    for split in SPLITS:
        records = plan.records[split]
        lo, hi = _share(len(records), node)
        shares[split] = [lo, hi, len(records)]
        target = folder / split
        if target.exists():  # this node's own earlier run
            shutil.rmtree(target)
        if hi <= lo:
            continue
        _optimize(litdata, functools.partial(_item, records=records), range(lo, hi), target,
                  chunk_bytes, workers, folder / ".litdata-work")
        _write_index(target / "samples.csv", records[lo:hi])
        counts[split], videos[split] = _tally(records[lo:hi])
    total_counts, total_videos = _totals(plan)
    atomic_write(folder / NODE_FILE, json.dumps({
        "deepfake_detect": __version__,
        "deepfake_detect.shard_node": NODE_FORMAT,
        "tool_command": "shard",
        "node": list(node),
        **plan.settings(),
        "plan": plan.digest(),
        "splits": shares,  # split -> [first item, end, items in the split]
        "counts": total_counts,  # of the whole dataset: every node computes the same plan
        "videos": total_videos,
        "skipped": [list(s) for s in plan.skipped],
    }, indent=2))
    return ShardReport(out, counts, videos, [(p, r) for p, r, _ in plan.skipped], node=node)


def _merge_if_ready(out: Path, share: ShardReport) -> ShardReport:
    """After a node: merge the nodes when all are finished (the last node to finish does it).
    Nodes still running hold the folder's lock shared, so the exclusive lock is the test."""
    from deepfake_detect.outputs import RunLock

    r, n = share.node  # type: ignore[misc]
    share.notes.append(f"node {r}/{n} written to {_node_dir(out, (r, n))}")
    # without the lock first: while a node has not finished, taking the folder's lock (even for
    # a moment) could refuse a node that starts just then
    missing = [i for i in range(n) if not (_node_dir(out, (i, n)) / NODE_FILE).is_file()]
    if missing:
        own = _node_info(_node_dir(out, (r, n)), (r, n)) or {"inputs": ["INPUTS"], "split_rule": {}}
        share.notes.append(f"not merged yet: {_missing(out, missing, n, own)}")
        return share
    try:
        lock = RunLock(out, "shard").acquire()
    except OutputError:
        share.notes.append(f"other nodes are still writing into {out} (or merging); the last one "
                           f"to finish merges the nodes, or run: deepfake-detect shard-merge {out}")
        return share
    try:
        merged = _merge_locked(out, n, reference=r)
    except NodesNotReady as exc:
        share.notes.append(f"not merged yet: {exc}")
        return share
    except DataError as exc:  # nodes that disagree: the user must act, the run says so
        raise DataError(f"node {r}/{n} is written, but the nodes cannot be merged: {exc}") from None
    finally:
        lock.release()
    merged.notes[:0] = share.notes
    return merged


def merge_shard_nodes(out: str | Path, num_nodes: int | None = None) -> ShardReport:
    """Join the node parts that ``shard --node-rank r --num-nodes n`` runs wrote into ``out``
    (normally the last node does it itself): check that all ``n`` nodes are there, finished and
    agree, then write the splits, their ``samples.csv`` and ``shards.json`` as one machine
    would have, under the folder's lock, and remove the node parts."""
    from deepfake_detect.outputs import RunLock, claim_folder

    out = Path(out)
    if not out.is_dir():
        raise DataError(f"{out} is not a folder; give the --out of the shard --node-rank runs")
    out = claim_folder(out, "shard")
    with RunLock(out, "shard"):  # refused while a node runs (it holds the lock shared)
        return _merge_locked(out, num_nodes)


def _node_parts(out: Path) -> dict[tuple[int, int], Path]:
    parts: dict[tuple[int, int], Path] = {}
    if (out / NODES).is_dir():
        for path in (out / NODES).iterdir():
            if path.is_dir() and (m := _NODE_DIR.fullmatch(path.name)):
                parts[int(m[1]), int(m[2])] = path
    return parts


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _node_info(folder: Path, node: tuple[int, int]) -> dict[str, Any] | None:
    info = _read_json(folder / NODE_FILE)
    keys = {"node", "inputs", "split_rule", "verify", "plan", "splits", "counts", "videos", "skipped"}
    if (info is None or info.get("deepfake_detect.shard_node") != NODE_FORMAT
            or not keys <= info.keys() or info["node"] != list(node)
            or not isinstance(info["splits"], dict)):
        return None
    try:
        for split in SPLITS:
            _bounds(info, split)
    except (TypeError, ValueError):  # not what a node writes: as if it had not finished
        return None
    return info


def _command(info: dict[str, Any], out: Path, nodes: Iterable[int], n: int) -> str:
    """The commands that (re)make ``nodes`` with ``info``'s inputs and options."""
    inputs = " ".join(shlex.quote(p) for p in info["inputs"])
    rule = info["split_rule"]
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in rule.items()
                    if v is not None and v != _DEFAULT_RULE.get(k))
    return "; ".join(f"deepfake-detect shard {inputs} --out {shlex.quote(str(out))}{flags} "
                     f"--node-rank {r} --num-nodes {n}" for r in nodes)


def _missing(out: Path, missing: Sequence[int], n: int, info: dict[str, Any]) -> str:
    return (f"{out}: node{'s' if len(missing) > 1 else ''} {', '.join(f'{r}/{n}' for r in missing)} "
            f"missing (not run, not finished or still running); run: "
            f"{_command(info, out, missing, n)}")


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    shown = []
    if a["inputs"] != b["inputs"]:
        shown.append(f"inputs {' '.join(a['inputs'])} vs {' '.join(b['inputs'])}")
    for key in _DEFAULT_RULE:
        if a["split_rule"].get(key) != b["split_rule"].get(key):
            shown.append(f"--{key.replace('_', '-')} {a['split_rule'].get(key)} vs "
                         f"{b['split_rule'].get(key)}")
    if a["verify"] != b["verify"]:
        shown.append(f"verify {a['verify']} vs {b['verify']}")
    return ", ".join(shown)


def _bounds(info: dict[str, Any], split: str) -> tuple[int, int, int]:
    """A node's share of ``split``: first item, end, items in the split (none: ``0, 0, 0``)."""
    lo, hi, total = info["splits"].get(split, (0, 0, 0))
    return int(lo), int(hi), int(total)


def _share_problem(folder: Path, split: str, lo: int, hi: int) -> str | None:
    """Why a node's share of ``split`` is not complete, or None."""
    if hi <= lo:
        return None  # nothing to hold
    index = _read_json(folder / split / "index.json")
    chunks = (index or {}).get("chunks")
    if not isinstance(chunks, list) or sum(int(c.get("chunk_size", 0)) for c in chunks) != hi - lo:
        return f"{split}: its litdata index is missing or does not hold {hi - lo} items"
    bad = check_chunks(folder / split)  # what training checks: present, whole, its item count
    if bad:
        name, _, reason = bad[0]
        return f"{split}: chunk {name}: {reason}"
    try:
        numbers = [row[0] for row in _rows(folder / split / "samples.csv")]
    except (OSError, ValueError, IndexError):
        numbers = []
    if numbers != [str(i) for i in range(lo, hi)]:
        return f"{split}: samples.csv is missing or does not list items {lo} .. {hi - 1}"
    return None


def _rows(path: Path) -> Iterator[list[str]]:
    """The rows of a share's samples.csv below its header (ValueError: not ours)."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        if tuple(next(reader, ())) != COLUMNS:
            raise ValueError(f"{path}: not a samples.csv of deepfake-detect shard")
        yield from reader


def _merge_locked(out: Path, n: int | None = None, reference: int | None = None) -> ShardReport:
    import litdata

    parts = _node_parts(out)
    sizes = sorted({count for _, count in parts})
    if n is None:
        if not sizes:
            raise DataError(f"{out} holds no node parts ({NODES}/node-R-of-N): run `deepfake-detect "
                            f"shard INPUTS --out {out} --node-rank R --num-nodes N` for R = 0 .. "
                            "N-1 first")
        if len(sizes) > 1:
            raise DataError(f"{out} holds node parts of different --num-nodes "
                            f"({', '.join(map(str, sizes))}): merge one of them with "
                            f"`deepfake-detect shard-merge {out} --num-nodes N`")
        n = sizes[0]
    infos = {r: info for r in range(n) if (r, n) in parts
             and (info := _node_info(parts[r, n], (r, n))) is not None}
    if not infos:
        raise NodesNotReady(f"{out}: no node of --num-nodes {n} has finished; run `deepfake-detect "
                            f"shard INPUTS --out {out} --node-rank R --num-nodes {n}` for R = 0 .. "
                            f"{n - 1}")
    ref = reference if reference in infos else min(infos)
    base = infos[ref]
    # disagreeing nodes first: they need a rerun with other options, whatever else is missing
    odd = [r for r, info in infos.items() if _differences(info, base)]
    if odd:
        raise DataError(f"{out}: node{'s' if len(odd) > 1 else ''} "
                        f"{', '.join(f'{r}/{n}' for r in odd)} ran with other inputs or options "
                        f"than node {ref}/{n} ({_differences(infos[odd[0]], base)}); every node "
                        f"needs the same ones: run {_command(base, out, odd, n)}")
    odd = [r for r, info in infos.items() if info["plan"] != base["plan"]]
    if odd:
        raise DataError(f"{out}: node{'s' if len(odd) > 1 else ''} "
                        f"{', '.join(f'{r}/{n}' for r in odd)} found other samples than node "
                        f"{ref}/{n} in the same inputs (files added, removed or unreadable on one "
                        "machine, or the input paths lead elsewhere there); make the inputs the "
                        f"same on every machine and run: {_command(base, out, odd, n)}")
    missing = [r for r in range(n) if r not in infos]
    if missing:
        raise NodesNotReady(_missing(out, missing, n, base))
    for split in SPLITS:  # shares must tile each split exactly (nodes of other tool versions?)
        bounds = [_bounds(infos[r], split) for r in range(n)]
        ends = [0] + [hi for _, hi, _ in bounds]
        if any(lo != ends[r] for r, (lo, _, _) in enumerate(bounds)) or ends[-1] != bounds[0][2]:
            raise DataError(f"{out}: the nodes' shares of {split} do not cover its {bounds[0][2]} "
                            "items exactly once (nodes of different deepfake-detect versions?); "
                            f"run all nodes with one version: {_command(base, out, range(n), n)}")
    broken = {r: why for r in range(n) for split in SPLITS
              if (why := _share_problem(parts[r, n], split, *_bounds(infos[r], split)[:2]))}
    if broken:
        first = next(iter(broken))
        raise NodesNotReady(f"{out}: node{'s' if len(broken) > 1 else ''} "
                            f"{', '.join(f'{r}/{n}' for r in broken)} incomplete ({broken[first]}); "
                            f"run again: {_command(base, out, broken, n)}")

    (out / MARKER).unlink(missing_ok=True)  # until the merge is complete
    for split in SPLITS:
        target = out / split
        if target.exists():  # an earlier run's or merge's, of this command
            shutil.rmtree(target)
        shares = [parts[r, n] / split for r in range(n)
                  if _bounds(infos[r], split)[1] > _bounds(infos[r], split)[0]]
        if not shares:
            continue
        if len(shares) == 1:  # litdata's merge takes two or more datasets; one is the split
            shutil.copytree(shares[0], target, ignore=shutil.ignore_patterns("samples.csv"))
        else:
            with _env(TQDM_DISABLE="1"):  # litdata's own bars would interleave with ours
                litdata.merge_datasets([str(s) for s in shares], str(target))
        with open(target / "samples.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for share in shares:
                writer.writerows(_rows(share / "samples.csv"))
    skipped = list(dict.fromkeys(tuple(s) for r in range(n) for s in infos[r]["skipped"]))
    _write_marker(out, {k: base[k] for k in ("inputs", "split_rule", "verify")}, base["counts"],
                  base["videos"], skipped, nodes=n)
    for r in range(n):  # merged: copies of the node parts are in the splits now
        shutil.rmtree(parts[r, n])
    report = ShardReport(out, base["counts"], base["videos"], [(p, r) for p, r, _ in skipped],
                         merged_nodes=n)
    report.notes.append(f"merged {n} node parts into {out} (and removed them)")
    others = sorted({count for _, count in parts} - {n})
    if others:
        report.notes.append(f"{out / NODES} still holds node parts of --num-nodes "
                            f"{', '.join(map(str, others))} (an earlier attempt?), left as they "
                            "are; remove them if they are not needed")
    else:
        with contextlib.suppress(OSError):
            (out / NODES).rmdir()  # only when empty: nothing else is removed here
    return report


def _write_marker(out: Path, settings: dict[str, Any], counts: dict[str, dict[str, int]],
                  videos: dict[str, int], skipped: Sequence[Sequence[str]], **extra: Any) -> None:
    from deepfake_detect import __version__
    from deepfake_detect.outputs import atomic_write

    info = {
        "deepfake_detect": __version__,
        "deepfake_detect.shards": FORMAT,
        "tool_command": "shard",
        "inputs": settings["inputs"],
        "splits": list(counts),
        "counts": counts,
        "videos": videos,
        "split_rule": settings["split_rule"],
        "skipped": [{"path": p, "reason": r, **({"split": sp} if sp else {})}
                    for p, r, sp in skipped],
        **extra,
    }
    atomic_write(out / MARKER, json.dumps(info, indent=2))


def _optimize(litdata: Any, fn: Callable[[int], dict], items: range, target: Path,
              chunk_bytes: str | int, workers: int, work: Path) -> None:
    """``litdata.optimize`` over the item numbers ``items``. Its workers fork where the OS can
    (no main-module import guard needed, quick start), and the process-wide start method it sets
    is put back afterwards so that later DataLoaders are not changed behind the caller's back."""
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    forks = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
    method = "fork" if forks else "spawn"
    # litdata stages chunks in <tmp>/chunks and <tmp>/data unless told otherwise: keep its work
    # inside the output folder (the tool writes nowhere else; ``work`` is per node, as litdata
    # empties it first) and remove it afterwards. Its node variables are pinned to one node: an
    # environment set for a litdata multi-node job would make it write only a share of ``items``.
    env = {"DATA_OPTIMIZER_CACHE_FOLDER": str(work / "chunks"),
           "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(work / "data"),
           "DATA_OPTIMIZER_NUM_NODES": "1", "DATA_OPTIMIZER_NODE_RANK": "0"}
    try:
        with _env(**env):
            litdata.optimize(fn=fn, inputs=list(items), output_dir=str(target),
                             chunk_bytes=chunk_bytes, num_workers=max(1, workers),
                             start_method=method, verbose=False)
    finally:
        multiprocessing.set_start_method(before, force=True)
        shutil.rmtree(work, ignore_errors=True)  # ours: made by this call


def _write_index(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for r in records:
            writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])


@contextlib.contextmanager
def _env(**values: str):
    """Environment variables set for the duration of a call, then put back as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
