"""Find the raw videos and photos that ``prepare`` turns into face crops, with their labels.

Inputs are files, folders (label folders and split folders as for face-image datasets, at any
depth), CSV manifests (``path,label[,split,video]``) or DFDC-style folders whose
``metadata.json`` maps file names to ``{"label": "FAKE"|"REAL", "split": ...}``. Each found item
gets a video id unique within the run: its path below the input root, without extension and with
the split and label folders left out (they are kept in their own fields).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from deepfake_detect.data.labels import accepted_names, parse_label, parse_split
from deepfake_detect.data.sources import IMAGE_EXTENSIONS
from deepfake_detect.data.video import VIDEO_EXTENSIONS
from deepfake_detect.errors import DataError

MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass(frozen=True)
class MediaItem:
    path: Path
    kind: str  # "video" | "image"
    video: str  # id, unique within a prepare run (relative, "/"-separated, no extension)
    label: int | None = None  # 0 real, 1 fake, None unknown
    split: str | None = None


@dataclass
class MediaScan:
    items: list[MediaItem] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def media_kind(path: str | PurePath) -> str | None:
    ext = PurePath(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def find_media(inputs: Sequence[str | Path], label: int | None = None) -> MediaScan:
    """Every video and photo below ``inputs``; ``label`` applies where no folder or file says one."""
    scan = MediaScan()
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            _walk(path, label, scan)
        elif path.is_file() and path.suffix.lower() == ".csv":
            _read_csv(path, label, scan)
        elif path.is_file() and path.name == "metadata.json":
            _walk(path.parent, label, scan)
        elif path.is_file():
            kind = media_kind(path)
            if kind is None:
                scan.problems.append((str(path), "not a video or image file"))
                continue
            scan.items.append(MediaItem(path, kind, path.stem, label, None))
        else:
            scan.problems.append((str(path), "no such file or folder"))
    check_unique_videos(scan.items)
    return scan


def _walk(root: Path, default_label: int | None, scan: MediaScan) -> None:
    before = len(scan.items)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        rel_parts = here.relative_to(root).parts
        label, split, kept = default_label, None, []
        for part in rel_parts:
            if (lab := parse_label(part)) is not None and not part.isdigit():
                label = lab
            elif (spl := parse_split(part)) is not None:
                split = spl
            else:
                kept.append(part)
        meta = _dfdc_metadata(here) if "metadata.json" in filenames else {}
        for name in sorted(filenames):
            if name.startswith(".") or name == "metadata.json":
                continue
            kind = media_kind(name)
            if kind is None:
                continue
            item_label, item_split = label, split
            if name in meta:
                item_label = meta[name].get("label", item_label)
                item_split = meta[name].get("split", item_split)
            video = "/".join((*kept, PurePath(name).stem))
            scan.items.append(MediaItem(here / name, kind, video, item_label, item_split))
    if len(scan.items) == before:
        exts = " ".join(sorted(e.lstrip(".") for e in MEDIA_EXTENSIONS))
        scan.problems.append((str(root), f"folder holds no videos or images ({exts})"))


def _dfdc_metadata(folder: Path) -> dict[str, dict]:
    """DFDC ``metadata.json``: file name -> {"label": 0|1, "split": ...}."""
    path = folder / "metadata.json"
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); fix or remove it") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping file names to their labels")
    out: dict[str, dict] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            continue
        info: dict = {}
        if (lab := parse_label(entry.get("label", ""))) is not None:
            info["label"] = lab
        if (spl := parse_split(entry.get("split", ""))) is not None:
            info["split"] = spl
        out[name] = info
    return out


def _read_csv(path: Path, default_label: int | None, scan: MediaScan) -> None:
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"CSV manifest {path} cannot be read: {e}") from e
    if not rows:
        raise DataError(f"CSV manifest {path} is empty: it needs a header path[,label,split,video]")
    cols = [c.strip().lower() for c in rows[0]]
    if "path" not in cols:
        raise DataError(
            f"CSV manifest {path} has no path column; its header is {','.join(rows[0])!r}"
        )

    def cell(row: list[str], name: str) -> str:
        i = cols.index(name) if name in cols else None
        return row[i].strip() if i is not None and i < len(row) else ""

    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        raw = cell(row, "path")
        file = Path(os.path.normpath(raw if os.path.isabs(raw) else base / raw))
        kind = media_kind(file)
        where = f"{path} line {line}"
        if kind is None:
            scan.problems.append((str(file), f"not a video or image file ({where})"))
            continue
        if not file.is_file():
            scan.problems.append((str(file), f"file not found ({where})"))
            continue
        label = default_label
        if raw_label := cell(row, "label"):
            label = parse_label(raw_label)
            if label is None:
                raise DataError(f"{where}: label {raw_label!r} is unknown ({accepted_names()})")
        split = parse_split(cell(row, "split")) if cell(row, "split") else None
        video = cell(row, "video") or PurePath(raw).with_suffix("").as_posix().lstrip("./")
        scan.items.append(MediaItem(file, kind, video, label, split))


def check_unique_videos(items: Sequence[MediaItem]) -> None:
    """Raise DataError if two files would share a video id (and so a crop folder)."""
    seen: dict[tuple, Path] = {}
    for item in items:
        key = (item.split, item.label, item.video)
        if key in seen and seen[key] != item.path:
            raise DataError(
                f"{item.path} and {seen[key]} would share the video id {item.video!r}; give them "
                "different names or put them in different folders"
            )
        seen[key] = item.path
