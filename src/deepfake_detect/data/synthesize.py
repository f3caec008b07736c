"""``synthesize``: self-blended fakes (SBI) from real face crops, to train on real data only.

Each real crop yields ``per_image`` fakes: an altered copy of the crop blended back into it
through a randomly deformed, blurred mask over the face (:func:`~deepfake_detect.data.sbi.
self_blend`). The face mask is the convex hull of the crop's landmarks (68 or 81 points, from a
prepare manifest or a DeepfakeBench-style JSON); crops without landmarks are run through a face
detector and get an ellipse over the detected face instead.

Output, readable by the training loader as it is::

    <out>/fake/<video>/<name>_sbi<k>.png
    <out>/real/<video>/<name>.<ext>        (with keep_real; a hard link when possible)
    <out>/manifest.csv                     path,label,video,split (paths relative to <out>)

A fake keeps the video id and split of its real, so a split given to the reals holds for their
fakes too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.data.faces.base import (
    Face,
    FaceDetector,
    build_face_detector,
    face_detector_names,
)
from deepfake_detect.data.images import load_rgb
from deepfake_detect.data.labels import parse_label, parse_split
from deepfake_detect.data.pool import worker_pool
from deepfake_detect.data.samples import REAL
from deepfake_detect.data.sources import is_image_file, video_from_stem, walk_folders
from deepfake_detect.data.sbi import self_blend
from deepfake_detect.errors import DataError
from deepfake_detect.outputs import RunLock, atomic_target, claim_folder, inside, safe_relpath

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "video", "split")
# landmark sets at least this large outline the face (jaw + brows); fewer are only keypoints
_OUTLINE_POINTS = 17
_MIN_MASK_FRACTION = 0.01  # a face mask smaller than this share of the crop means bad landmarks
# detected faces: the blend ellipse is inscribed in the box, a little inside it, since a
# detector box reaches past the cheeks and chin that a landmark hull would follow
_ELLIPSE_SCALE = 0.95


@dataclass
class SynthesisReport:
    made: int  # fakes written
    skipped: list[tuple[str, str]]  # (image path, reason) of reals that gave no fake
    manifest: Path
    reals: int = 0  # reals that gave fakes (and were copied with keep_real)
    by_detector: int = 0  # of those, how many had no landmarks and used a detected face
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- landmarks


def _norm_key(key: str) -> str:
    """A landmark-file key as a posix path without ``./`` (Windows-written files use ``\\``)."""
    key = key.strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _as_points(value: Any, where: str) -> np.ndarray:
    if isinstance(value, dict):
        value = value.get("landmarks", value.get("landmark"))
    try:
        pts = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        pts = np.empty(0, np.float32)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise DataError(
            f"{where}: landmarks must be a list of at least 3 [x, y] pairs, got "
            f"{json.dumps(value)[:80] if value is not None else 'nothing'}"
        )
    return pts


def load_landmarks(source: str | Path) -> dict[str, np.ndarray]:
    """Landmarks per image, ``(K, 2)`` float32 x, y in the image's pixels, from ``source``.

    ``source`` is a prepare manifest CSV (its ``landmarks`` cells hold JSON ``[[x, y], ...]`` in
    crop pixels; rows with an empty cell are left out) keyed by the ``path`` cell, or a JSON
    file mapping an image file name or relative path to ``[[x, y], ...]`` (DeepfakeBench's
    ``precomputed_landmarks.json``; a value may also be ``{"landmarks": [...]}``). Keys are
    returned as written, with ``\\`` turned into ``/`` and a leading ``./`` removed.
    """
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"landmarks file {path} does not exist: give a landmarks JSON or a manifest CSV"
        )
    out: dict[str, np.ndarray] = {}
    if path.suffix.lower() == ".csv":
        for line, row in _read_csv(path, ("path", "landmarks")):
            cell, key = (row.get("landmarks") or "").strip(), _norm_key(row.get("path") or "")
            if not cell or not key:
                continue
            try:
                value = json.loads(cell)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path} line {line}: the landmarks cell is not JSON ({e})"
                ) from None
            out[key] = _as_points(value, f"{path} line {line}")
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"landmarks file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(
            f"landmarks file {path} must hold an object mapping image names to [[x, y], ...]"
        )
    for key, value in data.items():
        out[_norm_key(str(key))] = _as_points(value, f"{path} key {key!r}")
    return out


class _LandmarkIndex:
    """Finds an image's landmarks by relative path (to the landmarks file or the input root),
    by absolute path, or by file name when that name is unique in the file."""

    def __init__(self, source: Path | None) -> None:
        self.base = Path(os.path.abspath(source)).parent if source else None
        self.points = load_landmarks(source) if source else {}
        names: dict[str, list[str]] = {}
        for key in self.points:
            names.setdefault(PurePosixPath(key).name, []).append(key)
        self.by_name = {n: keys[0] for n, keys in names.items() if len(keys) == 1}

    def find(self, image: Path, root: Path) -> np.ndarray | None:
        if not self.points:
            return None
        image = Path(os.path.abspath(image))
        keys = [str(image).replace("\\", "/")]
        for base in (self.base, Path(os.path.abspath(root))):
            if base is not None and image.is_relative_to(base):
                keys.insert(0, image.relative_to(base).as_posix())
        for key in keys:
            if key in self.points:
                return self.points[key]
        name = self.by_name.get(image.name)
        return None if name is None else self.points[name]


# --------------------------------------------------------------------------- inputs


@dataclass
class _Real:
    """One real crop to blend, with where its outputs go."""

    path: Path
    root: Path  # what relative landmark keys are taken from
    video: str  # the id written to the manifest (the source's own when it has one)
    split: str  # "" when unknown
    landmarks: np.ndarray | None = None  # from the input manifest's own cell


def _read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in cols]
            if missing:
                raise DataError(
                    f"CSV {path} has no {' or '.join(missing)} column; its header is "
                    f"{','.join(reader.fieldnames or [])!r}"
                )
            reader.fieldnames = cols
            for row in reader:
                yield reader.line_num, {k: (v or "") for k, v in row.items() if k is not None}
    except UnicodeDecodeError as e:
        raise DataError(f"CSV {path} is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise DataError(f"CSV {path} cannot be parsed: {e}") from None


def _from_manifest(csv_path: Path, skipped: list[tuple[str, str]]) -> list[_Real]:
    """The real crops of a prepare manifest (or any path,label[,video,split] CSV)."""
    base = Path(os.path.abspath(csv_path)).parent
    out = []
    for line, row in _read_csv(csv_path, ("path", "label")):
        raw = row.get("path", "").strip()
        status = row.get("status", "").strip()
        if not raw or status not in ("", "ok") or parse_label(row.get("label", "")) != REAL:
            continue  # frames without a face, failures, fakes and unlabeled rows
        path = Path(os.path.normpath(base / raw))
        if not path.is_file():
            skipped.append((str(path), f"file not found (listed in {csv_path} line {line})"))
            continue
        points = None
        if cell := row.get("landmarks", "").strip():
            try:
                points = _as_points(json.loads(cell), f"{csv_path} line {line}")
            except (json.JSONDecodeError, DataError) as e:
                skipped.append((str(path), f"bad landmarks cell in {csv_path} line {line}: {e}"))
                continue
        parts = path.relative_to(base).parts if path.is_relative_to(base) else (path.name,)
        video = row.get("video", "").strip() or _video_of(parts)
        split = parse_split(row.get("split", "")) or ""
        out.append(_Real(path, base, video, split, points))
    return out


def _video_of(parts: Sequence[str]) -> str:
    """Video id of an image at relative path ``parts`` below the split/label folders: its
    folder when it sits in one, else the ``<video>_frame_<n>`` prefix of its name or its stem."""
    if len(parts) > 1:
        return "/".join(parts[:-1])
    stem = PurePosixPath(parts[-1]).stem
    return video_from_stem(stem) or stem


def _from_folder(root: Path, skip: Path) -> list[_Real]:
    """Images below ``root``; split and label folders at its top are read as in datasets
    (``[split/]label/...``), and images under a label folder other than real are left out."""
    out = []
    for here, names in walk_folders(root):  # the one folder walk (symlinked folders once)
        if Path(os.path.abspath(here)).is_relative_to(skip):  # the output, inside an input
            continue
        for name in names:
            if name.startswith(".") or not is_image_file(name):
                continue
            parts = list((here / name).relative_to(root).parts)
            split = ""
            if len(parts) > 1 and (s := parse_split(parts[0])):
                split, parts = s, parts[1:]
            if len(parts) > 1 and (label := parse_label(parts[0])) is not None:
                if label != REAL:
                    continue
                parts = parts[1:]
            out.append(_Real(here / name, root, _video_of(parts), split))
    return out


def _gather(inputs: Sequence[Path], out: Path, skipped: list[tuple[str, str]]) -> list[_Real]:
    reals: list[_Real] = []
    skip = Path(os.path.abspath(out))
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            reals += _from_folder(path, skip)
        elif path.is_file() and path.suffix.lower() == ".csv":
            reals += _from_manifest(path, skipped)
        elif path.is_file() and is_image_file(path):
            reals.append(_Real(path, path.parent, _video_of([path.name]), ""))
        elif not path.exists():
            raise DataError(f"synthesize input {path} does not exist")
        else:
            raise DataError(
                f"synthesize input {path} is not an image, a folder of images or a manifest CSV"
            )
    return reals


# --------------------------------------------------------------------------- blending


def detected_face_mask(face: Face, shape: tuple[int, int]) -> np.ndarray:
    """An ``H x W`` float {0, 1} blend mask for a face found by a detector.

    Five keypoints are too few to outline a face (their hull covers only eyes to mouth), so
    unless the detector gives an outline (dlib's 68 or 81 points: their convex hull is used) the
    mask is an ellipse inscribed in the face box, 5% inside it, tilted along the eye line when
    there are keypoints: roughly the jaw-and-brow hull that SBI uses.
    """
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    if face.landmarks is not None and len(face.landmarks) >= _OUTLINE_POINTS:
        hull = cv2.convexHull(np.round(face.landmarks).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
        return mask.astype(np.float32)
    x1, y1, x2, y2 = (float(v) for v in face.box[:4])
    angle = 0.0
    if face.keypoints is not None:
        (lx, ly), (rx, ry) = face.keypoints[0], face.keypoints[1]
        angle = math.degrees(math.atan2(float(ry - ly), float(rx - lx)))
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    axes = (max(1.0, (x2 - x1) / 2 * _ELLIPSE_SCALE), max(1.0, (y2 - y1) / 2 * _ELLIPSE_SCALE))
    shift = 4  # sub-pixel drawing: cv2.ellipse takes fixed-point coordinates
    cv2.ellipse(
        mask,
        (round(centre[0] * 2**shift), round(centre[1] * 2**shift)),
        (round(axes[0] * 2**shift), round(axes[1] * 2**shift)),
        angle,
        0,
        360,
        1,
        -1,
        cv2.LINE_8,
        shift,
    )
    return mask.astype(np.float32)


_DETECTORS: dict[str, FaceDetector] = {}  # per process: workers build their own once


def _detector(config: DetectConfig) -> FaceDetector:
    key = config.model_dump_json()
    if key not in _DETECTORS:
        _DETECTORS[key] = build_face_detector(config)
    return _DETECTORS[key]


def _seed(seed: int, key: str, k: int) -> np.random.SeedSequence:
    """The seed of fake ``k`` of the real with output ``key``: fixed by the run seed and the
    output name, so workers, input order and added images do not change a fake."""
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.SeedSequence([seed, digest, k])


@dataclass
class _Job:
    src: str
    real_out: str | None  # absolute destination of the real copy, or None
    fake_outs: list[str]
    key: str
    seed: int
    landmarks: np.ndarray | None
    detect: DetectConfig


def _blend(job: _Job) -> tuple[str, str]:
    """Write the fakes (and real copy) of one crop: ("ok" | "detected", "") or ("skip", why)."""
    try:
        image = np.asarray(load_rgb(job.src))
    except DataError as e:
        return "skip", getattr(e, "reason", str(e))
    h, w = image.shape[:2]
    how = "ok"
    info: np.ndarray
    if job.landmarks is not None:
        info = job.landmarks
    else:
        try:
            faces = _detector(job.detect).detect([image])[0]
        except DataError as e:
            return "skip", f"face detection failed: {e}"
        if not faces:
            return "skip", "no landmarks for this image and the face detector found no face"
        info = detected_face_mask(max(faces, key=lambda f: f.side), (h, w))
        how = "detected"
    fakes = []
    for k in range(len(job.fake_outs)):
        rng = np.random.default_rng(_seed(job.seed, job.key, k))
        try:
            fake, mask = self_blend(image, info, rng, return_mask=True)
        except Exception as e:  # noqa: BLE001 - one odd image must not end a long run
            return "skip", f"self-blending failed: {e}"
        if float((mask > 0.5 * max(float(mask.max()), 1e-6)).mean()) < _MIN_MASK_FRACTION:
            return "skip", (
                "the face mask covers almost none of the image: are the landmarks in this "
                f"image's pixel coordinates ({w}x{h})?"
            )
        fakes.append(fake)
    for dest, fake in zip(job.fake_outs, fakes):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fake).save(dest, format="PNG", compress_level=1)
    if job.real_out is not None:
        _copy(Path(job.src), Path(job.real_out))
    return how, ""


def _copy(src: Path, dest: Path) -> None:
    """A hard link when ``src`` and ``dest`` share a file system (no extra space), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and os.path.samefile(src, dest):
        return  # linked by an earlier run
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _run(jobs: list[_Job], workers: int, progress: bool) -> Iterator[tuple[str, str]]:
    results: Iterable[tuple[str, str]]
    if workers > 1 and len(jobs) > 1:
        pool = worker_pool(workers)
        results = pool.map(_blend, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 4))))
    else:
        pool, results = None, map(_blend, jobs)
    try:
        if progress:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("self-blending", total=len(jobs))
                for r in results:
                    bar.advance(task)
                    yield r
        else:
            yield from results
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _with_splits(reals: list[_Real], val: float, test: float, seed: int) -> list[_Real]:
    """Reals without a split get one here: the loader splits each label on its own, which could
    otherwise put a real in train and its self-blended fake in val."""
    from dataclasses import replace

    from deepfake_detect.data.samples import Sample
    from deepfake_detect.data.splits import assign_splits

    if all(r.split for r in reals) or not reals:
        return reals
    samples = [Sample(r.path, 0, r.video, r.split or None) for r in reals]
    split = assign_splits(samples, val, test, seed)
    return [replace(r, split=s.split or "") for r, s in zip(reals, split, strict=True)]


MAX_PER_IMAGE = 1000  # fakes of one real crop; more only repeats the same blends


def synthesize(
    inputs: Sequence[str | Path],
    out: str | Path,
    landmarks: str | Path | None = None,
    per_image: int = 1,
    seed: int = 0,
    detect: DetectConfig | None = None,
    workers: int = 0,
    progress: bool = True,
    keep_real: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    force: bool = False,
) -> SynthesisReport:
    """Make ``per_image`` self-blended fakes of every real crop in ``inputs`` under ``out``.

    ``inputs``: face-crop images, folders of them (searched recursively; ``[split/]label/``
    folders at the top are understood and only real ones are used), or prepare manifests (rows
    labelled real whose status is ok). Landmarks come from ``landmarks`` (see
    :func:`load_landmarks`), else from the manifest's own ``landmarks`` cell, else the face is
    detected with ``detect`` (default :class:`DetectConfig`) and blended through an ellipse
    (:func:`detected_face_mask`). Images that cannot be read or hold no face are skipped and
    reported. The same ``seed`` gives the same bytes, whatever ``workers`` is (0 or 1: in this
    process). Writes ``out/manifest.csv`` (path,label,video,split), replacing an earlier one.
    Reals without a split are split here (grouped by video, ``val_fraction`` / ``test_fraction``)
    so that a real and its fakes always land in the same split.
    """
    if not 1 <= per_image <= MAX_PER_IMAGE:
        raise DataError(f"synthesize: per_image must be from 1 to {MAX_PER_IMAGE}, got {per_image}")
    if seed < 0:
        raise DataError(f"synthesize: seed must be a non-negative integer, got {seed}")
    out = claim_folder(out, "synthesize", inputs=inputs, force=force)
    lock = RunLock(out, "synthesize").acquire()
    try:
        return _synthesize(inputs, out, landmarks, per_image, seed, detect, workers, progress,
                           keep_real, val_fraction, test_fraction)
    finally:
        lock.release()


def _synthesize(inputs, out: Path, landmarks, per_image, seed, detect, workers, progress,
                keep_real, val_fraction, test_fraction) -> SynthesisReport:
    skipped: list[tuple[str, str]] = []
    reals = _gather([Path(p) for p in inputs], out, skipped)
    if not reals and not skipped:
        raise DataError(
            f"synthesize: no real face-crop images found in {', '.join(map(str, inputs))}; "
            "give crop images, folders of them or a prepare manifest"
        )
    reals = _with_splits(reals, val_fraction, test_fraction, seed)
    index = _LandmarkIndex(Path(landmarks) if landmarks else None)
    detect = detect or DetectConfig()
    if detect.backend not in face_detector_names():  # fail now, not in a worker mid-run
        build_face_detector(detect)
    jobs: list[_Job] = []
    # per job: its real and the (path relative to out, label) of its outputs
    planned: list[tuple[_Real, list[tuple[str, str]]]] = []
    owner: dict[str, Path] = {}
    for real in reals:
        folder = safe_relpath(real.video, fallback="video").as_posix()
        key = f"{folder}/{real.path.name}"
        if key in owner:
            skipped.append((str(real.path), f"same video and file name as {owner[key]}"))
            continue
        owner[key] = real.path
        points = index.find(real.path, real.root)
        fake_rel = [f"fake/{folder}/{real.path.stem}_sbi{k}.png" for k in range(per_image)]
        real_rel = f"real/{folder}/{real.path.name}" if keep_real else None
        jobs.append(
            _Job(
                src=str(real.path),
                real_out=str(inside(out, real_rel)) if real_rel else None,
                fake_outs=[str(inside(out, p)) for p in fake_rel],
                key=key,
                seed=seed,
                landmarks=points if points is not None else real.landmarks,
                detect=detect,
            )
        )
        outputs = ([(real_rel, "real")] if real_rel else []) + [(p, "fake") for p in fake_rel]
        planned.append((real, outputs))

    out.mkdir(parents=True, exist_ok=True)
    report = SynthesisReport(made=0, skipped=skipped, manifest=out / MANIFEST)
    manifest_rows: list[tuple[str, str, str, str]] = []
    for job, (real, outputs), (status, reason) in zip(jobs, planned, _run(jobs, workers, progress)):
        if status == "skip":
            skipped.append((job.src, reason))
            continue
        report.reals += 1
        report.made += len(job.fake_outs)
        report.by_detector += status == "detected"
        manifest_rows += [(rel, label, real.video, real.split) for rel, label in outputs]
    with atomic_target(report.manifest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(manifest_rows)
    if report.by_detector:
        report.notes.append(
            f"{report.by_detector} crops had no landmarks: their faces were detected and blended "
            "through an ellipse instead of a landmark hull"
        )
    return report
