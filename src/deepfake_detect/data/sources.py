"""Find labelled face images in dataset folders and CSV manifests.

Every path given is one dataset. Video ids are paths below the dataset root (``train/fake/v1``),
so that frames of one video can be kept together when splits are made, while videos of different
labels or splits never share an id.

A sample's group (manipulation method, generator, source) comes from a CSV's ``group`` column or
from a folder under a label folder (``fake/Deepfakes/000_003/0001.png``: group ``Deepfakes``),
see :func:`is_group_folder`; a group folder changes no video id below it.
"""

from __future__ import annotations

import csv
import errno
import itertools
import logging
import os
import re
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from deepfake_detect.data.labels import (
    accepted_names,
    label_name,
    parse_label,
    parse_split,
)
from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
)

# "<video>_frame_<n>", "<video>-<n>", "<video>_f<n>": frames of one video in a flat folder
_FRAME_STEM = re.compile(r"^(?P<video>.+)(?:_frame_?|-|_f)\d+$", re.IGNORECASE)
# stems that are only a frame number ("0001", "frame_0001"): the folder is the video
_NUMBER_STEM = re.compile(r"^(?:frame|img|image|f)?[_-]?\d+$", re.IGNORECASE)

_CSV_COLUMNS = ("path", "label", "video", "split", "frame", "status", "reason", "group")
# names of a column of per-video frame folders (the seed's training_pairs.csv), read as "path"
_FOLDER_COLUMNS = (
    "video_path", "video_folder", "video_dir", "folder", "frames_dir", "frame_dir",
    "dir", "directory",
    "video",  # last: "video,label" with folders in the video column; else video is an id column
)
# crops written by ``prepare`` are named "<frame>" or "<frame>_<face>" inside the video's folder
_CROP_STEM = re.compile(r"^(?P<frame>\d+)(?:_\d+)?$")


@dataclass(frozen=True)
class FoundVideo:
    """A video file in a label folder of a dataset folder, found by ``scan(..., videos=True)``."""

    path: Path
    label: int
    split: str | None
    video: str  # id by the folder rules: its path below the dataset root, without extension
    dataset: str
    root: Path  # the dataset folder as given
    label_dir: Path  # the label folder it lies in
    group: str | None = None  # e.g. "Deepfakes" for fake/Deepfakes/000_003.mp4


@dataclass
class Discovery:
    """What :func:`scan` found: the samples and the files it left out."""

    samples: list[Sample] = field(default_factory=list)
    # files in label folders that are not images (by extension), and hidden files
    ignored: list[Path] = field(default_factory=list)
    # files a CSV lists (or images in a folder it lists) that do not exist or are broken
    # symbolic links: (path, reason)
    missing: list[tuple[Path, str]] = field(default_factory=list)
    # dataset name -> "split folders" | "label folders" | "csv"
    layouts: dict[str, str] = field(default_factory=dict)
    # rows of a prepare manifest that hold no crop (e.g. a frame without a face): (where, reason)
    no_crop: list[tuple[str, str]] = field(default_factory=list)
    # video files in label folders (only with ``scan(..., videos=True)``; else they are ignored)
    videos: list[FoundVideo] = field(default_factory=list)


def describe_layout() -> str:
    """How a dataset may be laid out, for error messages."""
    exts = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    return (
        "Accepted dataset layouts:\n"
        "  1. split folders: <root>/train/{real,fake}/..., <root>/val/..., <root>/test/...\n"
        "  2. label folders: <root>/real/..., <root>/fake/...  (train/val split made for you)\n"
        "  3. CSV manifest with header path,label[,video,split,group]; paths relative to the CSV's"
        " folder\n"
        "     A path may be a folder holding one video's frames (a training_pairs.csv with header"
        " video_path,label or folder,label works too)\n"
        "Inside a label folder images may sit in per-video subfolders (fake/<video>/0001.jpg)\n"
        "or be named <video>_frame_<n>, <video>-<n> or <video>_f<n>; any other image is its own"
        " video.\n"
        "A folder under a label folder holding per-video subfolders, video files or frames of"
        " several videos is a group (fake/<method>/<video>/...; data.group_depth overrides).\n"
        f"Image extensions: {exts}.\n"
        f"Accepted names (any case): {accepted_names()}."
    )


def is_image_file(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_EXTENSIONS


def _is_video_file(name: str) -> bool:
    # imported here: data.video pulls in PyAV and the config schema, which plain scans never need
    from deepfake_detect.data.video import VIDEO_EXTENSIONS

    return PurePath(name).suffix.lower() in VIDEO_EXTENSIONS


NO_SUCH_FILE = "no such file or folder"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file, or None when it is one (a symlink to one counts).

    A symbolic link whose target is missing: ``"broken symbolic link: target X missing"``
    (X: where the link leads, as far as it resolves); links that lead back to themselves:
    ``"symbolic link loop"``; nothing at all: :data:`NO_SUCH_FILE`.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path) and e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"broken symbolic link: target {os.path.realpath(path)} missing"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return NO_SUCH_FILE
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    return "a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file"


def walk_folders(
    root: str | Path, errors: list[tuple[Path, str]] | None = None
) -> Iterator[tuple[Path, list[str]]]:
    """``(folder, names)`` for ``root`` and every folder below it, top down, subfolders in name
    order: ``names`` are the sorted names of the folder's entries that are not folders (files,
    and symbolic links that lead nowhere or loop, see :func:`file_problem`).

    The one folder walk of datasets (:func:`scan`), ``prepare``'s media discovery and
    ``predict``'s inputs. Symlinked folders are followed, but each real folder is visited once,
    so that folder links that loop end; hidden folders (names starting with ".") are not
    entered, and hidden names are the caller's to skip or count. Folders that cannot be
    listed go to ``errors`` as ``(folder, reason)``.
    """
    visited: set[str] = set()

    def failed(e: OSError) -> None:
        if errors is not None:
            errors.append((Path(e.filename or root), f"cannot list folder ({e.strerror or e})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)))
        yield Path(dirpath), sorted(filenames)


def walk_files(
    root: str | Path, errors: list[tuple[Path, str]] | None = None
) -> list[Path]:
    """Every visible entry below the folder ``root`` that is not a folder, sorted: files, and
    symbolic links that lead nowhere or loop (see :func:`file_problem`), so that callers can
    report them. The walk is :func:`walk_folders`' (links followed, each real folder once,
    hidden folders and files skipped)."""
    return sorted(
        here / name for here, names in walk_folders(root, errors) for name in names
        if _visible(Path(name))
    )


def folder_marks(
    parts: Sequence[str], default_label: int | None = None
) -> tuple[int | None, str | None, list[str]]:
    """The label and split that the folders ``parts`` (below an input root, outermost first)
    give the files in them, at any depth, the innermost winning, and the other folder names
    (part of a video id). Label folders by name (``real``, ``fake`` and their synonyms; not
    the digit names, which are video or frame numbers in a tree), split folders likewise. A
    folder named like a label right inside a label folder of that label is a plain folder:
    FaceForensics++' method ``Deepfakes`` in ``fake/Deepfakes/``."""
    label, split, kept, _ = _marks(parts, default_label)
    return label, split, kept


def label_folder_depth(parts: Sequence[str]) -> int | None:
    """How many of the folders ``parts`` lead down to the innermost label folder (as
    :func:`folder_marks` decides); None when none of them is a label folder."""
    return _marks(parts, None)[3]


def _marks(
    parts: Sequence[str], default_label: int | None
) -> tuple[int | None, str | None, list[str], int | None]:
    """:func:`folder_marks` and the number of ``parts`` up to the innermost label folder."""
    label, split, kept, depth = default_label, None, [], None
    for i, part in enumerate(parts):
        lab = None if part.isdigit() else parse_label(part)
        if lab is not None and not (depth == i and lab == label):
            label, depth = lab, i + 1
        elif (spl := parse_split(part)) is not None:
            split = spl
        else:
            kept.append(part)
    return label, split, kept, depth


def is_group_folder(files: Iterable[tuple[int, str]]) -> bool:
    """Whether a folder right under a label folder is a group (a manipulation method, a
    generator, a source) rather than one video, from the files below it: ``(depth, name)``,
    depth 0 for a file in the folder itself, 1 in a subfolder, and so on.

    A group holds per-video subfolders (subfolders with images), video files (each a video),
    or images of at least two videos by the frame-name rules (``<video>_frame_<n>``). A folder
    of numbered frames, or of one video's ``<video>_frame_<n>`` files, is a video, as ever.
    """
    named: set[str] = set()
    for depth, name in files:
        if name.startswith("."):
            continue
        if is_image_file(name):
            if depth > 0:
                return True
            if (video := video_from_stem(PurePath(name).stem)) is not None:
                named.add(video)
        elif _is_video_file(name):  # only asked for files that are no image: no PyAV otherwise
            return True
    return len(named) >= 2


def video_from_stem(stem: str) -> str | None:
    """The video name in a frame file name such as ``v1_frame_12``, or None."""
    m = _FRAME_STEM.match(stem)
    return m.group("video") if m else None


def discover(paths: Sequence[str | Path], *, group_depth: int | None = None) -> list[Sample]:
    """All labelled images in ``paths`` (folders or CSV manifests), sorted within each dataset;
    ``group_depth``: see :func:`scan`."""
    found = scan(paths, group_depth=group_depth)
    log_discovery(found)
    return found.samples


def log_discovery(found: Discovery) -> None:
    """Warn about the files a scan left out."""
    if found.ignored:
        log.warning(
            "ignored %d non-image or hidden files in label folders, e.g. %s",
            len(found.ignored), found.ignored[0],
        )
    if found.missing:
        log.warning(
            "left out %d files listed in CSV manifests that do not exist or cannot be read, "
            "e.g. %s: %s",
            len(found.missing), found.missing[0][0], found.missing[0][1],
        )
    if found.no_crop:
        log.info(
            "%d manifest rows hold no face crop (e.g. %s: %s)",
            len(found.no_crop), found.no_crop[0][0], found.no_crop[0][1],
        )


def scan(
    paths: Sequence[str | Path], videos: bool = False, *, group_depth: int | None = None
) -> Discovery:
    """Like :func:`discover`, also returning the ignored and missing files.

    With ``videos`` the video files in label folders of dataset folders are returned in
    ``Discovery.videos`` (for the caller to cut into face crops) instead of being ignored, and a
    dataset folder that holds videos but no images is accepted.

    ``group_depth`` (``data.group_depth``): None, folders under a label folder are groups as
    :func:`is_group_folder` says; 0, no folder groups; k, the first k folder levels under the
    label folder, joined with "/", are the group.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = Discovery()
    seen: dict[Path, Path] = {}
    names: set[str] = set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise DataError(
                f"data path {path} does not exist: give a dataset folder or CSV manifest.\n"
                + describe_layout()
            )
        real = path.resolve()
        if real in seen:
            raise DataError(
                f"data path {path} is given twice (also as {seen[real]}): list each dataset once"
            )
        seen[real] = path
        # name as given (not symlink-resolved), e.g. "ffpp" for /data/ffpp -> /mnt/x/ff_v2
        shown = Path(os.path.abspath(path))
        name = _unique_name(shown.stem if path.is_file() else shown.name, names)
        if path.is_dir():
            out.layouts[name] = _scan_folder(path, name, out, videos, group_depth)
        elif path.suffix.lower() == ".csv":
            _scan_csv(path, name, out)
            out.layouts[name] = "csv"
        else:
            raise DataError(
                f"data path {path} is neither a folder nor a .csv manifest.\n" + describe_layout()
            )
    return out


def _unique_name(name: str, taken: set[str]) -> str:
    name = name or "dataset"
    unique, i = name, 2
    while unique in taken:
        unique, i = f"{name}-{i}", i + 1
    taken.add(unique)
    return unique


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _scan_folder(
    root: Path, dataset: str, out: Discovery, videos: bool = False, group_depth: int | None = None
) -> str:
    entries = sorted(p for p in root.iterdir() if _visible(p))
    dirs = [p for p in entries if p.is_dir()]
    split_dirs = [(d, s) for d in dirs if (s := parse_split(d.name)) is not None]
    label_dirs = [(d, lab) for d in dirs if (lab := parse_label(d.name)) is not None]
    if split_dirs and label_dirs:
        raise DataError(
            f"dataset folder {root} mixes split folders "
            f"({', '.join(d.name for d, _ in split_dirs)}) with label folders "
            f"({', '.join(d.name for d, _ in label_dirs)}): put every label folder inside a "
            "split folder, or use label folders only.\n" + describe_layout()
        )
    if not split_dirs and not label_dirs:
        raise DataError(
            f"dataset folder {root} has no label or split folders; found: {_listing(entries)}.\n"
            + describe_layout()
        )
    before, videos_before = len(out.samples), len(out.videos)
    if split_dirs:
        for split_dir, split in split_dirs:
            inner = sorted(p for p in split_dir.iterdir() if _visible(p))
            labels = [
                (d, lab) for d in inner if d.is_dir() and (lab := parse_label(d.name)) is not None
            ]
            if not labels:
                raise DataError(
                    f"split folder {split_dir} has no label folders (e.g. real/, fake/); found: "
                    f"{_listing(inner)}.\n" + describe_layout()
                )
            for label_dir, label in labels:
                _scan_label_folder(
                    root, label_dir, label, split, dataset, out, videos, group_depth
                )
        layout = "split folders"
    else:
        for label_dir, label in label_dirs:
            _scan_label_folder(root, label_dir, label, None, dataset, out, videos, group_depth)
        layout = "label folders"
    if len(out.samples) == before and len(out.videos) == videos_before:
        others = [p for p in out.ignored if _is_below(p, root)]
        hint = (
            f"; found {len(others)} other files, e.g. {others[0].name}"
            " (videos must be turned into face-crop images first)"
            if others
            else ""
        )
        raise DataError(f"dataset folder {root} holds no images{hint}.\n" + describe_layout())
    out.samples[before:] = sorted(out.samples[before:], key=lambda s: str(s.path))
    return layout


def _is_below(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _listing(entries: list[Path], limit: int = 12) -> str:
    if not entries:
        return "nothing"
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(shown) + more


def _scan_label_folder(
    root: Path,
    label_dir: Path,
    label: int,
    split: str | None,
    dataset: str,
    out: Discovery,
    videos: bool = False,
    group_depth: int | None = None,
) -> None:
    prefix = label_dir.relative_to(root).as_posix()
    # listed first: whether a folder is a group depends on everything below it
    listing = [(d.relative_to(label_dir).parts, names) for d, names in walk_folders(label_dir)]
    groups: set[str] = set()
    if group_depth is None:
        below: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for parts, filenames in listing:
            if parts:
                below[parts[0]] += [(len(parts) - 1, name) for name in filenames]
        groups = {top for top, files in below.items() if is_group_folder(files)}
    for parts, filenames in listing:
        here = label_dir.joinpath(*parts)
        if group_depth is None:
            depth = 1 if parts and parts[0] in groups else 0
        else:  # a file above the group level has no group
            depth = group_depth if len(parts) >= group_depth else 0
        group = "/".join(parts[:depth]) or None
        flat = len(parts) == depth  # right in the label folder or a group folder
        for fname in filenames:
            file = here / fname
            if videos and not fname.startswith(".") and _is_video_file(fname):
                # a video file is always a video of its own, whatever its name looks like
                video = file.relative_to(root).with_suffix("").as_posix()
                out.videos.append(
                    FoundVideo(file, label, split, video, dataset, root, label_dir, group)
                )
                continue
            if fname.startswith(".") or not is_image_file(fname):
                out.ignored.append(file)
                continue
            frame, stem = None, file.stem
            if flat and not (depth and _NUMBER_STEM.match(stem)):
                # videos by the frame-name rules, as in a label folder
                video = "/".join((prefix, *parts, video_from_stem(stem) or stem))
            else:
                # the folder is the video, its path the id (groups change no id); so too for
                # numbered frames right in a group folder (real/<video>/ with group_depth 1)
                video = "/".join((prefix, *parts))
                if m := _CROP_STEM.match(file.stem):
                    frame = f"{video}/{int(m.group('frame'))}"
            out.samples.append(Sample(file, label, video, split, dataset, frame, group))


@dataclass
class CsvTable:
    """A CSV manifest as read by :func:`read_csv_table`."""

    path: Path
    header: list[str]  # the first line's cells, as written
    rows: list[tuple[int, list[str]]]  # (line number, cells) of every row that is not blank


def read_csv_table(path: Path, needs: str = "path,label") -> CsvTable:
    """The one reader of CSV manifests (datasets, ``prepare``'s inputs): UTF-8 (a byte-order
    mark is fine), the first line the header; a DataError naming the file when it cannot be
    read or parsed, or is empty (``needs``: the header it should have, for the message)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as e:
        raise DataError(f"CSV manifest {path} is not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise DataError(f"CSV manifest {path} cannot be parsed: {e}") from e
    except OSError as e:
        raise DataError(f"CSV manifest {path} cannot be read: {e.strerror or e}") from e
    if header is None:
        raise DataError(f"CSV manifest {path} is empty: it needs a header {needs}")
    return CsvTable(path, header, rows)


def listed_problem(path: Path, csv_path: Path, line: int) -> str | None:
    """Why a file a CSV manifest lists cannot be read (see :func:`file_problem`), with where it
    is listed; None when it is a readable file."""
    problem = file_problem(path)
    if problem is None:
        return None
    why = "file not found" if problem == NO_SUCH_FILE else problem
    return f"{why} (listed in {csv_path} line {line})"


def _scan_csv(csv_path: Path, dataset: str, out: Discovery) -> None:
    base = csv_path.parent
    samples: list[Sample] = []
    first_line: dict[Path, int] = {}
    table = read_csv_table(csv_path)
    header = table.header
    cols = [h.strip().lower() for h in header]
    pending: list[tuple[int, list[str]]] = []
    folders = _folder_column(cols)
    if folders is not None:
        cols[folders] = "path"
    elif _is_headerless_pair(header, base):
        # "<folder>,<label>" from the first line: a training_pairs.csv without header
        cols, pending, folders = ["path", "label"], [(1, header)], 0
    missing_cols = [c for c in ("path", "label") if c not in cols]
    if missing_cols:
        raise DataError(
            f"CSV manifest {csv_path} has no {' or '.join(missing_cols)} column; its "
            f"header is {','.join(header)!r}: the first line must name the columns, "
            "e.g. path,label,video,split (video and split optional)"
        )
    idx = {c: cols.index(c) for c in _CSV_COLUMNS if c in cols}
    status = idx.get("status")
    for line, row in itertools.chain(pending, table.rows):
        if status is not None and status < len(row) and row[status].strip() not in ("", "ok"):
            # a prepare manifest records frames without a face too; they hold no image
            reason = row[idx["reason"]] if "reason" in idx and idx["reason"] < len(row) else ""
            out.no_crop.append((f"{csv_path} line {line}", reason or row[status].strip()))
            continue
        folder = _row_folder(row, idx, base, csv_path, line, folders is not None)
        if folder is not None:
            if folder in first_line:
                raise DataError(
                    f"{csv_path} line {line}: folder {folder} is already listed on line "
                    f"{first_line[folder]}: list each video once"
                )
            first_line[folder] = line
            samples += _folder_rows(
                folder, row, idx, base, csv_path, line, dataset, out.missing
            )
            continue
        sample = _csv_row(row, idx, base, csv_path, line, dataset)
        if sample.path in first_line:
            raise DataError(
                f"{csv_path} line {line}: {sample.path} is already listed on line "
                f"{first_line[sample.path]}: list each image once"
            )
        first_line[sample.path] = line
        problem = listed_problem(sample.path, csv_path, line)
        if problem is None:
            samples.append(sample)
        else:
            out.missing.append((sample.path, problem))
    if not samples:
        if out.no_crop and not first_line:
            raise DataError(
                f"CSV manifest {csv_path} lists no face crops: all {len(out.no_crop)} rows are "
                f"failures (e.g. {out.no_crop[0][1]}); check the prepare summary"
            )
        if first_line:
            example = next(iter(first_line))
            raise DataError(
                f"CSV manifest {csv_path}: none of its {len(first_line)} files exist, e.g. "
                f"{example}; relative paths are taken from the CSV's folder {base}"
            )
        raise DataError(f"CSV manifest {csv_path} lists no images: add rows below the header")
    out.samples.extend(sorted(samples, key=lambda s: str(s.path)))


def _csv_row(
    row: list[str], idx: dict[str, int], base: Path, csv_path: Path, line: int, dataset: str
) -> Sample:
    def cell(name: str) -> str:
        i = idx.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    where = f"{csv_path} line {line}"
    raw_path = cell("path")
    if not raw_path:
        raise DataError(f"{where}: the path cell is empty")
    if not is_image_file(raw_path):
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"{where}: {raw_path} is not an image file (extensions {exts}) nor a folder of "
            "frames; videos must be turned into face-crop images first"
        )
    label, split = row_label_and_split(cell, where)
    rel = PurePath(raw_path)
    path = Path(os.path.normpath(rel if rel.is_absolute() else base / rel))
    key = cell("video") or _video_key(path, base)
    video = "/".join(p for p in (split, label_name(label), key) if p)
    raw_frame = cell("frame")
    frame = f"{video}/{int(raw_frame) if raw_frame.isdigit() else raw_frame}" if raw_frame else None
    return Sample(path, label, video, split, dataset, frame, cell("group") or None)


def row_label_and_split(
    cell: Callable[[str], str], where: str, required: bool = True, default: int | None = None
) -> tuple[int | None, str | None]:
    """The label and split cells of a manifest row (``cell(name)``: the stripped cell, "" when
    absent), by the names of :mod:`~deepfake_detect.data.labels`. An empty label cell is an
    error when ``required``, else ``default``; an unknown name is always an error, naming
    ``where``; an empty split is None (assigned later)."""
    raw_label = cell("label")
    label = parse_label(raw_label) if raw_label or required else default
    if label is None and (raw_label or required):
        raise DataError(
            f"{where}: label {raw_label!r} is not 0/1 or a known name ({accepted_names()})"
        )
    split = None
    if raw_split := cell("split"):
        split = parse_split(raw_split)
        if split is None:
            raise DataError(
                f"{where}: split {raw_split!r} is not train, val or test (or a synonym); "
                "leave it empty to have it assigned"
            )
    return label, split


def _folder_column(cols: list[str]) -> int | None:
    """Index of the column of video folders in a CSV without a path column, or None."""
    if "path" in cols:
        return None
    for name in _FOLDER_COLUMNS:
        if name in cols:
            return cols.index(name)
    return None


def resolve_listed(raw: str, base: Path) -> Path:
    """A path a manifest lists: relative paths are taken from the manifest's folder ``base``."""
    rel = PurePath(raw)
    return Path(os.path.normpath(rel if rel.is_absolute() else base / rel))


def _is_headerless_pair(header: list[str], base: Path) -> bool:
    """Whether the first line is already a ``<folder>,<label>`` row (no header line)."""
    return (
        len(header) == 2
        and parse_label(header[1]) is not None
        and bool(header[0].strip())
        and resolve_listed(header[0].strip(), base).is_dir()
    )


def _row_folder(
    row: list[str], idx: dict[str, int], base: Path, csv_path: Path, line: int, pairs: bool
) -> Path | None:
    """The folder a row's path names when it holds a video's frames, else None (an image row).

    In a CSV of video folders (``pairs``) every row must name an existing folder; in a
    ``path,label`` manifest a row is a folder row when its path is an existing folder.
    """
    i = idx["path"]
    raw = row[i].strip() if i < len(row) else ""
    if not raw or is_image_file(raw):
        return None
    folder = resolve_listed(raw, base)
    if folder.is_dir():
        return folder
    if pairs or not PurePath(raw).suffix:
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"{csv_path} line {line}: video folder {folder} {what}: each row must name a folder "
            f"of that video's frames (relative paths are taken from the CSV's folder {base})"
        )
    return None


def _folder_rows(
    folder: Path,
    row: list[str],
    idx: dict[str, int],
    base: Path,
    csv_path: Path,
    line: int,
    dataset: str,
    missing: list[tuple[Path, str]],
) -> list[Sample]:
    """The images directly in ``folder`` as frames of one video (a CSV row naming a folder);
    image names that are not readable files (broken symbolic links) go to ``missing``."""

    def cell(name: str) -> str:
        i = idx.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    where = f"{csv_path} line {line}"
    label, split = row_label_and_split(cell, where)
    images = []
    for p in sorted(folder.iterdir()):
        if not _visible(p) or not is_image_file(p.name) or p.is_dir():
            continue
        problem = file_problem(p)
        if problem is None:
            images.append(p)
        else:
            missing.append((p, f"{problem} (in {folder}, listed in {csv_path} line {line})"))
    if not images:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"{where}: video folder {folder} holds no images (extensions {exts}): put the video's "
            "frames or face crops in it (deepfake-detect prepare cuts them from a video)"
        )
    try:
        key = folder.relative_to(base).as_posix()
    except ValueError:
        key = PurePath(*folder.parts[1:]).as_posix()  # elsewhere: drop the anchor
    video = "/".join(p for p in (split, label_name(label), cell("video") or key) if p)
    group = cell("group") or None
    samples = []
    for path in images:
        m = _CROP_STEM.match(path.stem)
        frame = f"{video}/{int(m.group('frame'))}" if m else None
        samples.append(Sample(path, label, video, split, dataset, frame, group))
    return samples


def _video_key(path: Path, base: Path) -> str:
    """Video of a CSV row without a video cell, by the folder rules applied to its path."""
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = PurePath(*path.parts[1:])  # absolute path elsewhere: drop the anchor
    dirs = rel.parent.parts
    stem = rel.stem
    marks = [
        i for i, d in enumerate(dirs) if parse_label(d) is not None or parse_split(d) is not None
    ]
    if marks:
        # below a label (or split) folder: a subfolder is a video, as in folder datasets
        if len(dirs) > marks[-1] + 1:
            return "/".join(dirs)
    elif dirs and _NUMBER_STEM.match(stem):
        # frames named by number only: their folder is the video
        return "/".join(dirs)
    return "/".join((*dirs, video_from_stem(stem) or stem))
