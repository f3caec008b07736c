"""Find the raw videos and photos that ``prepare`` turns into face crops, with their labels.

Inputs are files, folders (label folders and split folders as for face-image datasets, at any
depth), CSV manifests (``path,label[,split,video]``) or DFDC-style folders whose
``metadata.json`` maps file names to ``{"label": "FAKE"|"REAL", "split": ...}``. Each found item
gets a video id unique within the run: its path below the input root, without extension and with
the split and label folders left out (they are kept in their own fields).

Discovery follows the rules of dataset folders (:mod:`deepfake_detect.data.sources`, whose
walker, CSV reader and label / split names this module uses): symlinked folders are followed,
each real folder once; hidden files and folders are skipped; a broken symbolic link, a link
loop or a file a manifest lists that is missing is reported in ``problems`` with the same
reason everywhere, and left out.

An item's group (manipulation method, generator, source) is the folder right under its label
folder when that folder is a group by the rule of dataset folders
(:func:`~deepfake_detect.data.sources.is_group_folder`: ``fake/Deepfakes/000_003.mp4`` is in
group ``Deepfakes``), or a CSV's ``group`` cell; ``prepare`` writes it into its manifest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

from deepfake_detect.data.labels import parse_label, parse_split
from deepfake_detect.data.sources import (
    IMAGE_EXTENSIONS,
    file_problem,
    folder_marks,
    is_group_folder,
    label_folder_depth,
    listed_problem,
    read_csv_table,
    resolve_listed,
    row_label_and_split,
    walk_folders,
)
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
    group: str | None = None  # manipulation method / generator / source, e.g. "Deepfakes"


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


def find_media(
    inputs: Sequence[str | Path], label: int | None = None, *, group_depth: int | None = None
) -> MediaScan:
    """Every video and photo below ``inputs``; ``label`` applies where no folder or file says one.
    ``group_depth`` as for dataset folders (:func:`~deepfake_detect.data.sources.scan`)."""
    scan = MediaScan()
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            _walk(path, label, scan, group_depth)
        elif path.is_file() and path.suffix.lower() == ".csv":
            _read_csv(path, label, scan)
        elif path.is_file() and path.name == "metadata.json":
            _walk(path.parent, label, scan, group_depth)
        elif (problem := file_problem(path)) is not None:
            scan.problems.append((str(path), problem))
        else:
            kind = media_kind(path)
            if kind is None:
                scan.problems.append((str(path), "not a video or image file"))
                continue
            scan.items.append(MediaItem(path, kind, path.stem, label, None))
    check_unique_videos(scan.items)
    return scan


def _walk(
    root: Path, default_label: int | None, scan: MediaScan, group_depth: int | None = None
) -> None:
    before, problems = len(scan.items), len(scan.problems)
    unlisted: list[tuple[Path, str]] = []
    found: list[tuple[MediaItem, _Below]] = []
    for here, filenames in walk_folders(root, unlisted):
        parts = here.relative_to(root).parts
        label, split, kept = folder_marks(parts, default_label)
        depth = label_folder_depth(parts)
        below = None if depth is None else _Below(
            root.joinpath(*parts[:depth]), tuple(p for p in parts[depth:] if parse_split(p) is None)
        )
        meta = _dfdc_metadata(here) if "metadata.json" in filenames else {}
        for name in filenames:
            if name.startswith(".") or name == "metadata.json":
                continue
            kind = media_kind(name)
            if kind is None:
                continue
            if (problem := file_problem(here / name)) is not None:
                scan.problems.append((str(here / name), problem))
                continue
            item_label, item_split = label, split
            if name in meta:
                item_label = meta[name].get("label", item_label)
                item_split = meta[name].get("split", item_split)
            video = "/".join((*kept, PurePath(name).stem))
            found.append((MediaItem(here / name, kind, video, item_label, item_split), below))
    scan.items += _with_groups(found, group_depth)
    scan.problems += [(str(p), why) for p, why in unlisted]
    if len(scan.items) == before and len(scan.problems) == problems:
        exts = " ".join(sorted(e.lstrip(".") for e in MEDIA_EXTENSIONS))
        scan.problems.append((str(root), f"folder holds no videos or images ({exts})"))


@dataclass(frozen=True)
class _Below:
    """Where a file lies under its innermost label folder."""

    label_dir: Path
    folders: tuple[str, ...]  # the folders between (split folders left out)


def _with_groups(
    found: list[tuple[MediaItem, _Below | None]], group_depth: int | None
) -> list[MediaItem]:
    """The items with their folder groups (None for ``below``: no label folder, no group)."""
    depth = 1 if group_depth is None else group_depth
    groups: set[tuple[Path, str]] = set()
    if group_depth is None:  # the folder right under a label folder, when it is a group
        files: dict[tuple[Path, str], list[tuple[int, str]]] = defaultdict(list)
        for item, below in found:
            if below is not None and below.folders:
                key = (below.label_dir, below.folders[0])
                files[key].append((len(below.folders) - 1, item.path.name))
        groups = {key for key, listed in files.items() if is_group_folder(listed)}
    out = []
    for item, below in found:
        if not depth or below is None or len(below.folders) < depth:
            out.append(item)
        elif group_depth is None and (below.label_dir, below.folders[0]) not in groups:
            out.append(item)
        else:
            out.append(replace(item, group="/".join(below.folders[:depth])))
    return out


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
    table = read_csv_table(path, "path[,label,split,video]")
    cols = [c.strip().lower() for c in table.header]
    if "path" not in cols:
        raise DataError(
            f"CSV manifest {path} has no path column; its header is {','.join(table.header)!r}"
        )

    for line, row in table.rows:
        def cell(name: str, row: list[str] = row) -> str:
            i = cols.index(name) if name in cols else None
            return row[i].strip() if i is not None and i < len(row) else ""

        raw = cell("path")
        file = resolve_listed(raw, path.parent)
        if media_kind(file) is None:
            why = f"not a video or image file (listed in {path} line {line})"
            scan.problems.append((str(file), why))
            continue
        if (problem := listed_problem(file, path, line)) is not None:
            scan.problems.append((str(file), problem))
            continue
        label, split = row_label_and_split(cell, f"{path} line {line}", required=False,
                                           default=default_label)
        video = cell("video") or PurePath(raw).with_suffix("").as_posix().lstrip("./")
        group = cell("group") or None
        scan.items.append(MediaItem(file, media_kind(file), video, label, split, group))


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
