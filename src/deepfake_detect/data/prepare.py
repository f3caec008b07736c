"""``prepare``: videos and photos -> face crops on disk plus a manifest the loader reads.

Work is split per video (and per chunk of photos). Each unit streams its sampled frames through
the face pipeline (:class:`~deepfake_detect.data.faces.pipeline.FacePipeline`: faces detected in
batches, tracked and cut, as prediction on raw media does), writes the crops, and finally
records its manifest rows in a small part file under ``<out>/.parts``; that file is what marks
the unit as finished. A rerun reuses finished units whose source and settings are unchanged and
redoes the rest, so an interrupted run resumes where it stopped. Frames without a face and
failed videos are rows of the manifest too, with a reason.

Scale-out: ``prepare(..., part=(i, n))`` processes only the units whose key hashes to ``i``
modulo ``n`` (a rule that does not depend on the machine), so that ``n`` machines sharing the
output folder (e.g. over NFS) each do ``1/n`` of the work. A part run holds the folder's lock
shared (a whole run or a merge is refused meanwhile) and a lock of its own part exclusively (the
same part twice is refused), and writes ``manifest.part-<i>-of-<n>.csv`` and
``prepare.part-<i>-of-<n>.json``, never ``manifest.csv``. :func:`merge_parts` then checks that all
``n`` parts are there and complete and writes ``manifest.csv`` and ``prepare.json`` as one whole
run would have.

``shards=ShardOptions(dir, ...)`` (``prepare --shards DIR``, ``prepare-merge --shards DIR``): once
the whole output is written, it is packed into litdata shards in ``dir`` by
:func:`~deepfake_detect.data.shards.write_shards`, still under the folder's lock; a part run
refuses it (a part is not the whole dataset).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deepfake_detect import __version__
from deepfake_detect.config.schema import PrepareConfig
from deepfake_detect.data.faces.base import FaceDetector, MergedDetector, check_detect_config
from deepfake_detect.data.faces.cascade import build_face_finder
from deepfake_detect.data.faces.crop import encode_crop
from deepfake_detect.data.faces.pipeline import (  # in_background: re-exported
    FaceCut,
    FacePipeline,
    in_background,  # noqa: F401
)
from deepfake_detect.data.labels import label_name
from deepfake_detect.data.media_inputs import MediaItem, find_media
from deepfake_detect.data.pool import worker_pool
from deepfake_detect.data.video import VideoError
from deepfake_detect.errors import DataError, OutputError
from deepfake_detect.outputs import (
    PartLock,
    RunLock,
    atomic_write,
    claim_folder,
    inside,
    safe_relpath,
)

if TYPE_CHECKING:  # shards pull in litdata: imported where they are written
    from deepfake_detect.data.shards import ShardOptions, ShardReport

MANIFEST = "manifest.csv"
SETTINGS = "prepare.json"
PARTS = ".parts"
COLUMNS = (
    "path", "label", "video", "frame", "face", "box", "landmarks", "score", "split",
    "status", "reason", "source", "time",
    "pass",  # which detection pass found the face: fast, low_score, contrast, mtcnn
    "group",  # manipulation method / generator / source, from the input's folder or CSV
)
UNLABELED = "unlabeled"
PHOTO_CHUNK = 64  # photos per work unit: one part file and one detection pass each
VIDEOS_AT_ONCE = 2  # per process: decoding one overlaps detecting the other; shared batches


@dataclass
class Unit:
    """One piece of work: a video, or a chunk of photos."""

    key: str
    items: list[MediaItem]

    @property
    def kind(self) -> str:
        return self.items[0].kind


@dataclass
class UnitResult:
    key: str
    rows: list[dict]
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reused: bool = False


@dataclass
class PrepareReport:
    out: Path
    manifest: Path
    videos: int = 0
    videos_failed: int = 0
    photos: int = 0
    frames_read: int = 0
    faces: int = 0
    frames_without_face: int = 0
    short_videos: int = 0
    reused: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    problems: list[tuple[str, str]] = field(default_factory=list)  # inputs left out
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shards: ShardReport | None = None  # with ``shards=``: the shards written from the output

    def table(self) -> list[tuple[str, str]]:
        rows = [
            ("videos", f"{self.videos} ({self.videos_failed} failed)"),
            ("photos", str(self.photos)),
            ("frames read", str(self.frames_read)),
            ("face crops written", str(self.faces)),
            ("frames without a face", str(self.frames_without_face)),
            ("short videos (all frames taken)", str(self.short_videos)),
            ("reused from an earlier run", str(self.reused)),
            ("inputs left out", str(len(self.problems))),
        ]
        rows += [(f"failure: {reason}", str(n)) for reason, n in sorted(self.failures.items())]
        rows.append(("time", f"{self.seconds:.1f} s"))
        return rows


_NOT_SUMMARY = ("out", "manifest", "shards")  # report fields that prepare.json's summary leaves out


def _fingerprint(config: PrepareConfig) -> str:
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _source_stamp(items: Sequence[MediaItem]) -> list[list]:
    out = []
    for item in items:
        try:
            st = item.path.stat()
            out.append([str(item.path), st.st_size, int(st.st_mtime_ns)])
        except OSError:
            out.append([str(item.path), -1, -1])
    return out


def make_units(items: Sequence[MediaItem]) -> list[Unit]:
    """Videos one per unit; photos grouped by folder, label and split into chunks."""
    units: list[Unit] = []
    photos: dict[tuple, list[MediaItem]] = {}
    for item in items:
        if item.kind == "video":
            units.append(Unit(_unit_key(item), [item]))
        else:
            photos.setdefault((item.split, item.label, item.path.parent), []).append(item)
    for group in photos.values():
        for i in range(0, len(group), PHOTO_CHUNK):
            chunk = group[i : i + PHOTO_CHUNK]
            units.append(Unit(_unit_key(*chunk), chunk))
    return units


def _unit_key(*items: MediaItem) -> str:
    ident = "\n".join(f"{i.split}|{i.label}|{i.video}|{i.path}" for i in items)
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def item_folder(item: MediaItem) -> Path:
    """Crops of an item go to ``[<split>/]<label>/<video id>/`` below the output folder; the
    video id comes from data (a manifest cell, a file name), so it is made a safe relative
    path that cannot leave the output folder."""
    label = UNLABELED if item.label is None else label_name(item.label)
    return Path(*(p for p in (item.split, label) if p), safe_relpath(item.video))


# --------------------------------------------------------------------------- one unit


class UnitProcessor:
    """Turns units into crops and manifest rows; holds the face detector (one per process).

    :meth:`run_many` works on several videos at once, one thread each: their frames are decoded
    side by side and detected together, in batches of ``detect.batch_size`` frames filled from
    all of them (:class:`~deepfake_detect.data.faces.base.MergedDetector`)."""

    def __init__(self, config: PrepareConfig, out: Path, detector: FaceDetector | None = None):
        self.config = config
        self.out = out
        # built on the first frame detected: a rerun whose units are all reused never loads a
        # face model
        self.detector = MergedDetector(
            detector or (lambda: build_face_finder(config.detect, config.crop)),
            config.detect.batch_size,
        )
        self.pipeline = FacePipeline(config, self.detector)
        self.fingerprint = _fingerprint(config)

    def run_many(self, units: Sequence[Unit], at_once: int = 1) -> Iterator[UnitResult]:
        """The results of ``units``, ``at_once`` of them worked on together (in the order they
        finish)."""
        if at_once <= 1 or len(units) <= 1:
            yield from map(self.run, units)
            return

        def one(unit: Unit) -> UnitResult:
            with self.detector.merger.client():
                return self.run(unit)

        pool = ThreadPoolExecutor(min(at_once, len(units)), thread_name_prefix="prepare")
        try:
            for fut in as_completed([pool.submit(one, u) for u in units]):
                yield fut.result()
        finally:  # an interrupted run starts no further unit
            pool.shutdown(wait=True, cancel_futures=True)

    def run(self, unit: Unit) -> UnitResult:
        part = self.out / PARTS / f"{unit.key}.json"
        stamp = _source_stamp(unit.items)
        done = _read_part(part)
        if done and done.get("fingerprint") == self.fingerprint and done.get("sources") == stamp:
            return UnitResult(unit.key, done["rows"], done["stats"], done["notes"], reused=True)
        # Redo the unit: remove the crops that earlier runs of it wrote (listed in its part
        # file, or in its journal when the run was interrupted), and nothing else.
        remove_own_crops(self.out, unit.key, done)
        journal = part.with_suffix(".pending")
        try:
            if unit.kind == "video":
                result = self._video(unit.items[0], journal)
            else:
                result = self._photos(unit.items, journal)
        except Exception as exc:  # noqa: BLE001 - one broken unit must not stop the run
            item = unit.items[0]
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
            rows = [_failure_row(i, "error", reason) for i in unit.items]
            result = UnitResult(unit.key, rows, {"failed": len(unit.items), "frames": 0}, [
                f"{item.path}: {reason}"
            ])
        result.key = unit.key
        _write_part(part, {
            "fingerprint": self.fingerprint, "sources": stamp, "rows": result.rows,
            "stats": result.stats, "notes": result.notes,
        })
        journal.unlink(missing_ok=True)
        return result

    # -- videos

    def _video(self, item: MediaItem, journal: Path) -> UnitResult:
        try:
            faces = self.pipeline.video(item.path)
        except VideoError as e:
            return UnitResult("", [_failure_row(item, e.reason, str(e))], {"failed": 1, "frames": 0})
        rows = [self._row_of(item, cut, journal) for cut in faces]
        notes = faces.notes
        stats = {"frames": faces.frames, "short": int(faces.short), "failed": 0}
        if faces.failure is not None:
            status, reason = faces.failure
            return UnitResult("", [_failure_row(item, status, reason)], {**stats, "failed": 1})
        if faces.decode_error:
            notes.append(f"decoding stopped after {faces.frames} frames: {faces.decode_error}")
            stats["decode_error"] = 1
        return UnitResult("", rows, stats, [f"{item.path}: {n}" for n in notes])

    # -- photos

    def _photos(self, items: list[MediaItem], journal: Path) -> UnitResult:
        failures: list[dict] = []  # first, as a unit's rows always listed them
        rows: list[dict] = []
        photos = self.pipeline.photos(i.path for i in items)
        for item, faces in zip(items, photos, strict=True):
            if faces.failure is not None:
                status, detail = faces.failure
                failures.append(_failure_row(item, status, f"{item.path}: {detail}"))
                continue
            rows += [self._row_of(item, cut, journal) for cut in faces]
        return UnitResult("", failures + rows, {
            "frames": len(items) - len(failures), "failed": len(failures), "photos": len(items),
        })

    # -- crops

    def _row_of(self, item: MediaItem, cut: FaceCut, journal: Path) -> dict:
        """The manifest row of one cut, its crop written below the output folder first (and
        listed in the unit's journal, so that a redo can remove it)."""
        if not cut.ok:
            return _row(item, cut.frame, cut.time, status="no_face", reason=cut.reason)
        crop = self.config.crop
        folder = item_folder(item)
        inside(self.out, folder).mkdir(parents=True, exist_ok=True)
        name = f"{cut.frame:05d}" + ("" if cut.track is None else f"_{cut.track}")
        rel = folder / f"{name}.{crop.format}"
        target = inside(self.out, rel)
        with open(journal, "a", encoding="utf-8") as listed:  # what a redo may remove
            listed.write(rel.as_posix() + "\n")
        target.write_bytes(encode_crop(cut.pixels, crop.format, crop.quality))
        marks = cut.landmarks
        return _row(
            item, cut.frame, cut.time, path=rel.as_posix(), face=cut.track or 0,
            box=[round(float(v), 1) for v in cut.box],
            landmarks=[] if marks is None else marks.round(1).tolist(),
            score=round(float(cut.face.score), 4), **{"pass": cut.face.found_by},
        )


def _row(item: MediaItem, frame: int | str, when: float, **cells) -> dict:
    row = {
        "path": "", "label": "" if item.label is None else label_name(item.label),
        "video": item.video, "frame": frame, "face": "", "box": "", "landmarks": "", "score": "",
        "split": item.split or "", "status": "ok", "reason": "", "source": str(item.path),
        "time": round(float(when), 3), "pass": "", "group": item.group or "",
    }
    for key in ("box", "landmarks"):
        if key in cells:
            cells[key] = json.dumps(cells[key], separators=(",", ":"))
    row.update(cells)
    return row


def _failure_row(item: MediaItem, status: str, reason: str) -> dict:
    return _row(item, "", 0.0, status=status, reason=reason, time="")


def remove_own_crops(out: Path, key: str, done: dict | None, keep: Collection[str] = ()) -> None:
    """Remove the crops that earlier runs of unit ``key`` wrote into ``out``: those its part
    file lists (``done``) and those its journal lists (an interrupted run); nothing else, and
    none of ``keep`` (paths that current units wrote since)."""
    journal = out / PARTS / f"{key}.pending"
    listed = [r.get("path", "") for r in (done or {}).get("rows", [])]
    if journal.is_file():
        listed += journal.read_text("utf-8").splitlines()
    for rel in filter(None, listed):
        if rel in keep:
            continue
        try:
            path = inside(out, rel)
        except OutputError:
            continue  # not ours to touch
        if path.is_file() and not path.is_symlink():
            path.unlink()
    journal.unlink(missing_ok=True)


def _read_part(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _write_part(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), "utf-8")
    os.replace(tmp, path)  # atomic: a part file is either complete or absent


# --------------------------------------------------------------------------- the run

_WORKER: UnitProcessor | None = None
_AT_ONCE = 1


def _init_worker(config_json: str, out: str, threads: int, at_once: int) -> None:
    global _WORKER, _AT_ONCE
    import torch

    torch.set_num_threads(threads)
    _WORKER = UnitProcessor(PrepareConfig.model_validate_json(config_json), Path(out))
    _AT_ONCE = at_once


def _run_units(units: list[Unit]) -> list[UnitResult]:
    assert _WORKER is not None
    return list(_WORKER.run_many(units, _AT_ONCE))


def _run_all(
    units: list[Unit], config: PrepareConfig, out: Path, workers: int, at_once: int,
    detector: FaceDetector | None,
) -> Iterator[UnitResult]:
    if workers <= 1 or len(units) <= 1:
        yield from UnitProcessor(config, out, detector).run_many(units, at_once)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    initargs = (config.model_dump_json(), str(out), threads, at_once)
    # a worker process takes `at_once` units at a time, so that they can share its batches
    groups = [units[i:i + at_once] for i in range(0, len(units), at_once)]
    with worker_pool(workers, _init_worker, initargs) as pool:
        futures = {pool.submit(_run_units, g): g for g in groups}
        for fut in as_completed(futures):
            try:
                yield from fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OS
                reason = f"worker failed: {type(exc).__name__}: {exc}"
                for unit in futures[fut]:
                    rows = [_failure_row(i, "error", reason) for i in unit.items]
                    yield UnitResult(unit.key, rows, {"failed": len(unit.items)}, [reason])


def prepare(
    inputs: Sequence[str | Path],
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    label: int | None = None,
    workers: int = 1,
    videos_at_once: int = VIDEOS_AT_ONCE,
    progress: bool = True,
    detector: FaceDetector | None = None,
    force: bool = False,
    part: tuple[int, int] | None = None,
    shards: ShardOptions | None = None,
) -> PrepareReport:
    """Detect, crop and save the faces of every video and photo in ``inputs`` below ``out``.

    ``out`` must be new, empty or an earlier ``prepare`` output (``force`` accepts another
    non-empty folder); it may never hold the inputs. A second input set prepared into the same
    ``out`` with the same settings is added to its manifest.

    ``workers`` processes each work on ``videos_at_once`` videos together, whose frames share
    detection batches (the crops do not depend on either).

    ``part=(i, n)``: only the ``i``-th of ``n`` parts of the work (see the module's notes and
    :func:`merge_parts`).

    ``shards``: when the run is done, also pack ``out`` into litdata shards (as ``shard out``
    would, see :class:`~deepfake_detect.data.shards.ShardOptions`); not with ``part`` (a part
    is not the whole dataset: ``merge_parts(out, shards=...)`` does it then)."""
    started = time.perf_counter()
    part = check_part(part)
    _check_shards_with_part(shards, part)
    if workers < 0:
        raise DataError(f"workers must be >= 1 (got {workers}; 0 and 1 both work in this process)")
    if videos_at_once < 1:
        raise DataError(f"videos_at_once must be >= 1 (got {videos_at_once})")
    if detector is None:
        check_detect_config((config or PrepareConfig()).detect)
    out = claim_folder(out, "prepare", inputs=inputs, force=force)
    scan = find_media(inputs, label=label)
    # An --out inside an input folder: its crops are outputs, never inputs of a later run.
    own = [i for i in scan.items if i.path.resolve().is_relative_to(out.resolve())]
    items = [i for i in scan.items if i not in own]
    if not items:
        where = "; ".join(f"{p}: {r}" for p, r in scan.problems[:5]) or "no inputs given"
        raise DataError(f"prepare found no videos or images to process ({where})")
    report = prepare_items(
        items, out, config, inputs=inputs, problems=scan.problems, workers=workers,
        videos_at_once=videos_at_once, progress=progress, detector=detector, started=started, force=force,
        part=part, shards=shards,
    )
    if own:
        report.notes.append(f"{len(own)} files inside --out {out} were left out (outputs of prepare)")
    return report


def prepare_items(
    items: Sequence[MediaItem],
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    inputs: Sequence[str | Path] = (),
    problems: Sequence[tuple[str, str]] = (),
    workers: int = 1,
    videos_at_once: int = VIDEOS_AT_ONCE,
    progress: bool = True,
    detector: FaceDetector | None = None,
    description: str = "preparing",
    started: float | None = None,
    wait: bool = False,
    force: bool = False,
    part: tuple[int, int] | None = None,
    shards: ShardOptions | None = None,
) -> PrepareReport:
    """:func:`prepare` for media already found (``items`` with their labels, splits and video
    ids); ``inputs`` and ``problems`` are only recorded in ``prepare.json`` and the report.

    ``out`` is locked while this runs; another run into it is refused, or with ``wait`` (a
    dataset's crop cache shared by the ranks of a distributed run) waited for. ``force``: see
    :func:`deepfake_detect.outputs.claim_folder`. ``part``, ``shards``: see :func:`prepare`."""
    config = config or PrepareConfig()
    part = check_part(part)
    _check_shards_with_part(shards, part)
    if detector is None:
        check_detect_config(config.detect)
    out = claim_folder(out, "prepare", force=force)
    if shards is not None:  # a bad --shards is refused before the work, not after hours of it
        shards.claim([*inputs, out])
    locked = (RunLock(out, "prepare").acquire(wait=wait) if part is None else
              PartLock(out, part, folder=out / PARTS / f"part-{part[0]}-of-{part[1]}").acquire())
    try:
        report = _prepare_locked(items, out, config, inputs, problems, (workers, videos_at_once),
                                 progress, detector, description, started, part)
        if shards is not None:  # under the lock: no other run changes the crops meanwhile
            report.shards = shards.write(out)
        return report
    finally:
        locked.release()


def _check_shards_with_part(shards: ShardOptions | None, part: tuple[int, int] | None) -> None:
    if shards is not None and part is not None:
        raise DataError(f"--shards with --part {part[0]}/{part[1]}: a part is not the whole dataset; "
                        "run the parts without --shards and give it to the merge: "
                        f"deepfake-detect prepare-merge OUT --shards {shards.out}")


def _prepare_locked(
    items: Sequence[MediaItem], out: Path, config: PrepareConfig, inputs: Sequence[str | Path],
    problems: Sequence[tuple[str, str]], parallel: tuple[int, int], progress: bool,
    detector: FaceDetector | None, description: str, started: float | None,
    part: tuple[int, int] | None = None,
) -> PrepareReport:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from deepfake_detect.runinfo import environment

    started = time.perf_counter() if started is None else started
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    every = make_units(items)
    if part is None:
        units = every
        earlier = _earlier_units(out, units, _fingerprint(config))
        manifest = out / MANIFEST
    else:
        units = [u for u in every if part_of(u.key, part[1]) == part[0]]
        # checks the settings only: superseded units are removed by the merge (other parts
        # may be writing crops at their paths now), earlier units join the manifest there
        _earlier_units(out, every, _fingerprint(config), remove=False)
        earlier = []
        manifest = out / _part_file("manifest", part, "csv")
        (out / _part_file("prepare", part, "json")).unlink(missing_ok=True)  # until done
    report = PrepareReport(out=out, manifest=manifest, problems=list(problems))
    results: dict[str, UnitResult] = {}
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[faces]} faces"), TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(description, total=len(units), faces=0)
        by_key = {u.key: u for u in units}
        for result in _run_all(units, config, out, *parallel, detector):
            results[result.key] = result
            _tally(report, result, by_key[result.key])
            bar.update(task, advance=1, faces=report.faces)
    # input order, stable; then the units of earlier input sets prepared into this folder.
    # The group is the items' as found now: a reused unit's rows may predate it (the crops
    # do not depend on it, so it is no part of a unit's key)
    groups = {str(i.path): i.group or "" for i in items}
    rows = [
        {**row, "group": groups.get(row.get("source", ""), "")}
        for unit in units for row in results[unit.key].rows
    ]
    rows += [row for done in earlier for row in done["rows"]]
    _write_manifest(report.manifest, rows)
    report.seconds = time.perf_counter() - started
    given = [str(p) for p in inputs]
    if part is not None:
        atomic_write(out / _part_file("prepare", part, "json"), json.dumps({
            "prepare": config.model_dump(mode="json"),
            "fingerprint": _fingerprint(config),
            "part": list(part),
            "inputs": given,
            "units": [u.key for u in every],  # all parts' units, in input order
            "rows": [[u.key, len(results[u.key].rows)] for u in units],  # this part's, in order
            "summary": {k: v for k, v in asdict(report).items() if k not in _NOT_SUMMARY},
            **environment(),
            "version": __version__,
            "tool_command": "prepare",
        }, indent=2, default=str))
        return report
    before = _read_settings(out)
    atomic_write(out / SETTINGS, json.dumps({
        "prepare": config.model_dump(mode="json"),
        "inputs": [*(p for p in before.get("inputs", []) if p not in given), *given],
        "summary": {k: v for k, v in asdict(report).items() if k not in _NOT_SUMMARY},
        **environment(),
        "version": __version__,
        "tool_command": "prepare",
    }, indent=2, default=str))
    if earlier:
        report.notes.append(f"the manifest also keeps {sum(len(p['rows']) for p in earlier)} rows "
                            f"of {len(earlier)} earlier units prepared into {out}")
    return report


def _read_settings(out: Path) -> dict:
    try:
        data = json.loads((out / SETTINGS).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _earlier_units(out: Path, units: Sequence[Unit], fingerprint: str, *, remove: bool = True,
                   keep: Collection[str] = ()) -> list[dict]:
    """Finished units of earlier runs into ``out`` that this run does not redo: they stay in
    the manifest. A unit whose source files this run prepares again (e.g. under another label)
    is superseded: its crops (but none of ``keep``) and part file are removed (with
    ``remove``; else it is only left out). Units made with other settings are refused, as one
    manifest must not mix two crop geometries."""
    return _earlier(out, {u.key for u in units}, {str(i.path) for u in units for i in u.items},
                    fingerprint, remove=remove, keep=keep)


def _earlier(out: Path, current: Collection[str], sources: Collection[str], fingerprint: str, *,
             remove: bool = True, keep: Collection[str] = ()) -> list[dict]:
    kept: list[dict] = []
    for part in sorted((out / PARTS).glob("*.json")):
        if part.stem in current or (done := _read_part(part)) is None:
            continue
        if {row.get("source") for row in done.get("rows", [])} <= sources:
            if remove:
                remove_own_crops(out, part.stem, done, keep)
                part.unlink(missing_ok=True)
            continue
        if done.get("fingerprint") != fingerprint:
            raise DataError(
                f"{out} holds crops of other inputs made with other settings (see {out / SETTINGS}); "
                "prepare into it with the same settings, or choose a new --out"
            )
        kept.append(done)
    return kept


def _tally(report: PrepareReport, result: UnitResult, unit: Unit) -> None:
    stats = result.stats
    if unit.kind == "video":
        report.videos += 1
        report.videos_failed += int(stats.get("failed", 0) > 0)
        report.short_videos += int(stats.get("short", 0))
        if stats.get("decode_error"):
            report.failures["decoding stopped early"] = report.failures.get("decoding stopped early", 0) + 1
    else:
        report.photos += len(unit.items)
    report.frames_read += int(stats.get("frames", 0))
    report.reused += int(result.reused)
    counts = Counter(r["status"] for r in result.rows)
    report.faces += counts.pop("ok", 0)
    report.frames_without_face += counts.get("no_face", 0)
    for status, n in counts.items():
        key = status.replace("_", " ")
        report.failures[key] = report.failures.get(key, 0) + n
    report.notes += result.notes


def _write_manifest(path: Path, rows: Iterable[dict]) -> None:
    # per process: ranks of a distributed run may rewrite one cached manifest at the same time
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_prepare_settings(data_paths: Sequence[str | Path]) -> PrepareConfig | None:
    """The face-pipeline settings recorded by ``prepare`` beside a dataset, if any."""
    for given in data_paths:
        path = Path(given)
        folder = path if path.is_dir() else path.parent
        settings = folder / SETTINGS
        if settings.is_file():
            try:
                return PrepareConfig.model_validate(json.loads(settings.read_text("utf-8"))["prepare"])
            except (OSError, ValueError, KeyError):
                return None
    return None


# --------------------------------------------------------------------------- parts (scale-out)

_PART_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_PART_SUMMARY = re.compile(r"prepare\.part-(\d+)-of-(\d+)\.json")


def _bad_part(given: object) -> DataError:
    return DataError(f"--part {given}: give i/n with 0 <= i < n, e.g. --part 0/4 ... --part 3/4 "
                     "on four machines")


def parse_part(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``, or a one-line DataError naming the fix."""
    match = _PART_TEXT.fullmatch(str(text))
    if match is None:
        raise _bad_part(text)
    return check_part((int(match[1]), int(match[2])))  # type: ignore[return-value]


def check_part(part: tuple[int, int] | None) -> tuple[int, int] | None:
    """``part`` as ``(i, n)`` with ``0 <= i < n``, or a DataError."""
    if part is None:
        return None
    try:
        i, n = (int(v) for v in part)
    except (TypeError, ValueError):
        raise _bad_part(part) from None
    if n < 1 or not 0 <= i < n:
        raise _bad_part(f"{i}/{n}")
    return i, n


def part_of(key: str, n: int) -> int:
    """The part (of ``n``) that unit ``key`` belongs to: from its key (a hash of its inputs)
    alone, so every machine agrees, and adding inputs moves no other unit."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16) % n


def _part_file(stem: str, part: tuple[int, int], suffix: str) -> str:
    return f"{stem}.part-{part[0]}-of-{part[1]}.{suffix}"




def merge_parts(out: str | Path, shards: ShardOptions | None = None) -> PrepareReport:
    """Join the parts that ``prepare --part i/n`` runs wrote into ``out``: check that all ``n``
    are there, of the same inputs and settings, and complete, then write ``manifest.csv`` (rows
    in the order one whole run writes them) and ``prepare.json``, under the folder's lock. The
    part manifests and summaries are removed afterwards (the units' part files stay, so a part
    rerun later reuses them). ``shards``: then pack the merged output into litdata shards too
    (see :func:`prepare`)."""
    out = Path(out)
    if not out.is_dir():
        raise DataError(f"{out} is not a folder; give the --out of the prepare --part runs")
    out = claim_folder(out, "prepare")
    if shards is not None:  # checked before the merge, against the parts' inputs too
        given = {p for path in out.glob("prepare.part-*-of-*.json")
                 for p in (_read_part(path) or {}).get("inputs", [])}
        shards.claim([*sorted(given), out])
    with RunLock(out, "prepare"):  # refused while a part runs (it holds the lock shared)
        report = _merge_locked(out)
        if shards is not None:
            report.shards = shards.write(out)
        return report


def _merge_locked(out: Path) -> PrepareReport:
    from deepfake_detect.runinfo import environment

    started = time.perf_counter()
    found: dict[tuple[int, int], dict] = {}
    for path in sorted(out.glob("prepare.part-*-of-*.json")):
        if (match := _PART_SUMMARY.fullmatch(path.name)) is None:
            continue
        data = _read_part(path)
        if not isinstance(data, dict) or not {"units", "rows", "fingerprint"} <= data.keys():
            raise DataError(f"{path} is unreadable; rerun that part (prepare ... --part "
                            f"{match[1]}/{match[2]}) and merge again")
        found[int(match[1]), int(match[2])] = data
    if not found:
        raise DataError(f"{out} holds no part summaries (prepare.part-<i>-of-<n>.json): run "
                        f"`deepfake-detect prepare INPUTS --out {out} --part i/n` for i = 0 .. n-1 "
                        "first")
    splits = sorted({n for _, n in found})
    if len(splits) > 1:
        raise DataError(f"{out} mixes parts of different splits (n = {', '.join(map(str, splits))}): "
                        "remove the prepare.part-*-of-<n>.json and manifest.part-*-of-<n>.csv of the "
                        "split you abandoned and merge again")
    n = splits[0]
    first = found[min(found)]
    if len({d["fingerprint"] for d in found.values()}) > 1:
        odd = [f"{i}/{n}" for (i, _), d in sorted(found.items()) if d["fingerprint"] != first["fingerprint"]]
        raise DataError(f"the parts in {out} were made with different settings (parts {', '.join(odd)} "
                        f"differ from part {min(found)[0]}/{n}); rerun them with the same settings")
    if any(d["units"] != first["units"] for d in found.values()):
        raise DataError(f"the parts in {out} were made from different inputs; give every part the "
                        "same inputs (the same paths on every machine) and rerun the odd ones")
    inputs = " ".join(shlex.quote(p) for p in first.get("inputs", [])) or "INPUTS"

    def rerun(parts: Iterable[int]) -> str:
        return "; ".join(f"deepfake-detect prepare {inputs} --out {shlex.quote(str(out))} "
                         f"--part {i}/{n}" for i in parts)

    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise DataError(f"{out}: part{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(f'{i}/{n}' for i in missing)} missing (not run or not finished); "
                        f"run: {rerun(missing)}")
    rows_of: dict[str, list[dict]] = {}
    incomplete: list[int] = []
    for i in range(n):
        data = found[i, n]
        manifest = out / _part_file("manifest", (i, n), "csv")
        try:
            with open(manifest, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            incomplete.append(i)
            continue
        counts = [(str(k), int(c)) for k, c in data["rows"]]
        done = [_read_part(out / PARTS / f"{k}.json") for k, _ in counts]
        if (sum(c for _, c in counts) != len(rows)
                or any(d is None or d.get("fingerprint") != first["fingerprint"] for d in done)
                or any(part_of(k, n) != i for k, _ in counts)):
            incomplete.append(i)
            continue
        at = 0
        for key, count in counts:
            rows_of[key] = rows[at:at + count]
            at += count
    if incomplete:
        raise DataError(f"{out}: part{'s' if len(incomplete) > 1 else ''} "
                        f"{', '.join(f'{i}/{n}' for i in incomplete)} incomplete (a manifest or unit "
                        f"file missing or changed); run again: {rerun(incomplete)}")
    if set(rows_of) != set(first["units"]):
        raise DataError(f"{out}: the parts do not cover the inputs' units exactly once; rerun all "
                        f"parts: {rerun(range(n))}")
    rows = [row for key in first["units"] for row in rows_of[key]]
    earlier = _earlier(out, set(rows_of), {r.get("source", "") for r in rows}, first["fingerprint"],
                       keep={r["path"] for r in rows if r.get("path")})
    rows += [row for done in earlier for row in done["rows"]]
    report = PrepareReport(out=out, manifest=out / MANIFEST)
    for data in (found[i, n] for i in range(n)):
        summary = data.get("summary", {})
        for name in ("videos", "videos_failed", "photos", "frames_read", "faces",
                     "frames_without_face", "short_videos", "reused"):
            setattr(report, name, getattr(report, name) + int(summary.get(name, 0)))
        for reason, count in summary.get("failures", {}).items():
            report.failures[reason] = report.failures.get(reason, 0) + int(count)
        report.notes += summary.get("notes", [])
        report.seconds = max(report.seconds, float(summary.get("seconds", 0.0)))
    report.problems = [tuple(p) for p in first.get("summary", {}).get("problems", [])]
    _write_manifest(report.manifest, rows)
    before = _read_settings(out)
    given = list(first.get("inputs", []))
    atomic_write(out / SETTINGS, json.dumps({
        "prepare": first["prepare"],
        "inputs": [*(p for p in before.get("inputs", []) if p not in given), *given],
        "summary": {k: v for k, v in asdict(report).items() if k not in _NOT_SUMMARY},
        "merged_parts": n,
        **environment(),
        "version": __version__,
        "tool_command": "prepare",
    }, indent=2, default=str))
    for i in range(n):  # merged: a later merge must not mix these in again
        (out / _part_file("manifest", (i, n), "csv")).unlink(missing_ok=True)
        (out / _part_file("prepare", (i, n), "json")).unlink(missing_ok=True)
    if earlier:
        report.notes.append(f"the manifest also keeps {sum(len(p['rows']) for p in earlier)} rows "
                            f"of {len(earlier)} earlier units prepared into {out}")
    report.notes.append(f"merged {n} parts (merge took {time.perf_counter() - started:.1f} s)")
    return report
