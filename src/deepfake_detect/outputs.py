"""Where the tool may write, and how: the one mechanism behind every output of every command.

- Names that come from data (manifest cells, file stems, metadata keys, labels) become safe
  relative paths (:func:`safe_relpath`) and are joined under the output root with
  :func:`inside`, which refuses anything that would resolve outside it (``..``, absolute paths,
  symbolic links leading out).
- A folder output is claimed with :func:`claim_folder`: new, empty, or one this tool made for
  the same command; anything else is refused unless the user says ``--force``.
- A file output is claimed with :func:`claim_file`: never one of the command's inputs, and an
  existing file that this tool did not write is replaced only with ``--force``.
- A run folder is locked for the lifetime of its process (:class:`RunLock`, an OS lock that the
  kernel drops when the process dies), so two runs never interleave their files.
- Files are written atomically (:func:`atomic_target`): a reader (or a resume after a kill)
  sees the old file or the new one, never half of one; modes follow the umask.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from deepfake_detect.errors import OutputError

LOCK_FILE = ".deepfake-detect.lock"
# Files that say "this folder is deepfake-detect's" in folders of older runs (no lock file), with
# the command they stand for when they do not name one ("unknown": accepted by every command).
MARKERS = {"run.json": "unknown", "prepare.json": "prepare"}
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f<>:\"|?*\\]")


# --------------------------------------------------------------------------- names from data


def safe_name(value: str, fallback: str = "_") -> str:
    """One path component from arbitrary text: no separators, control characters, ``.``/``..``
    or leading dots (hidden files), at most 128 characters."""
    name = _UNSAFE_CHARS.sub("_", str(value).replace("/", "_")).strip().lstrip(".")
    name = name[:128].rstrip(" .")
    return name or fallback


def safe_relpath(value: str, fallback: str = "_") -> PurePosixPath:
    """A relative path from arbitrary text (``a/b/c`` keeps its folders): every component made
    safe by :func:`safe_name`, with empty, ``.`` and ``..`` parts and any drive or root dropped,
    so the result can never climb out of the folder it is joined to."""
    parts = [p for p in str(value).replace("\\", "/").split("/") if p.strip() not in ("", ".", "..")]
    safe = [safe_name(p) for p in parts]
    return PurePosixPath(*safe) if safe else PurePosixPath(fallback)


def inside(root: str | Path, rel: str | os.PathLike) -> Path:
    """``root / rel``, refused (OutputError) when it would resolve outside ``root``, e.g. through
    ``..`` or a symbolic link that leads out."""
    root = Path(root)
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise OutputError(f"{path}: refused to write outside the output folder {root} "
                          "(the name comes from the data: check it for '..' or a symbolic link)")
    return path


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process's umask now, without changing it where the system can say (Linux); else by
    setting and restoring it under a lock."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def follow_umask(path: str | Path) -> None:
    """Give a file written by a library that uses ``mkstemp`` (mode 0600) the mode a plain
    ``open`` would have given it."""
    os.chmod(path, 0o666 & ~_umask())


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces
    ``path`` in one step (``os.replace``) with the mode a plain ``open`` would have given (the
    umask applies; libraries that write via ``mkstemp`` would leave 0600). On error the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_target`."""
    with atomic_target(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, "utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


# --------------------------------------------------------------------------- claiming outputs


def folder_owner(folder: Path) -> str | None:
    """The command that made ``folder`` (``train``, ``evaluate``, ``prepare``...), or None when
    no file of this tool says so."""
    lock = folder / LOCK_FILE
    if lock.is_file():
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads(lock.read_text("utf-8") or "{}").get("command") or "") or "unknown"
    for marker, default in MARKERS.items():
        file = folder / marker
        if file.is_file():
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(file.read_text("utf-8"))
                if isinstance(info, dict) and "deepfake_detect" in info:
                    return info.get("tool_command") or default
    return None


def _visible_entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name != LOCK_FILE]


def claim_folder(folder: str | Path, command: str, *, force: bool = False,
                 inputs: Iterable[str | Path] = (), what: str = "--out") -> Path:
    """Make ``folder`` this command's output folder, or refuse with a one-line reason.

    Accepted: a new or empty folder, or one made by an earlier run of the same ``command``.
    Refused: a file; a folder holding any of ``inputs``; a folder another command made; a
    non-empty folder this tool did not make (unless ``force``).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder; give a folder path")
    for given in inputs:
        src = Path(given)
        if src.exists() and (src.resolve() == folder.resolve() or src.resolve().is_relative_to(folder.resolve())):
            raise OutputError(f"{what} {folder} holds the input {src}; write into a folder of its "
                              "own, outside the inputs")
    if folder.is_dir() and _visible_entries(folder):
        owner = folder_owner(folder)
        if owner not in (None, "unknown", command) and not force:
            raise OutputError(f"{what} {folder} is a `{owner}` folder; `{command}` writes into a "
                              "folder of its own: choose a new --out")
        if owner is None and not force:
            raise OutputError(f"{what} {folder} is not empty and was not written by deepfake-detect; "
                              "choose a new or empty folder (or add --force to write into it)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {folder}: the folder is not writable; choose another --out")
    return folder


def claim_file(path: str | Path, *, inputs: Iterable[str | Path] = (), force: bool = False,
               what: str = "--out") -> Path:
    """Make ``path`` a file output of this command, or refuse with a one-line reason: never one
    of ``inputs`` (or a file inside an input folder's own name), never a folder, and an existing
    file this tool did not write (:func:`written_by_tool`) only with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():  # a device, pipe or socket: never replaced
        raise OutputError(f"{what} {path} is not a regular file; give the path of a file to write")
    if path.exists():
        ours = written_by_tool(path)
        for given in inputs:
            src = Path(given)
            with contextlib.suppress(OSError):
                if src.is_file() and os.path.samefile(src, path):
                    raise OutputError(f"{what} {path} is one of the inputs; it would be "
                                      "overwritten: choose another file name")
                # a file inside an input folder is an input too (--force does not change that)
                if src.is_dir() and not ours and path.resolve().is_relative_to(src.resolve()):
                    raise OutputError(f"{what} {path} lies in the input folder {src}; "
                                      "choose a file name outside the inputs")
        if not force and not ours:
            raise OutputError(f"{what} {path} exists and was not written by deepfake-detect; "
                              "choose another name (or add --force to replace it)")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot create {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {path}: not writable; choose another location")
    return path


# Each output format this tool writes, recognised by its content, so that rerunning a command
# may replace its own earlier output but never a user's file of the same name.
PNG_SOFTWARE = "deepfake-detect"


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.readline(4096).decode("utf-8", "replace").lstrip("\ufeff").strip()


# The headers of the CSV files that commands write as file outputs (predict's predictions,
# per-face rows and submission); a user's manifest (path,label,...) is none of them.
CSV_HEADERS = ("filename,label,score,frames,faces,error", "filename,frame,face,time,box,score",
               "filename,label")


def _csv_ours(path: Path) -> bool:
    header = _first_line(path)
    return header == "filename,label" or any(header.startswith(h) for h in CSV_HEADERS[:2])


def _json_ours(path: Path) -> bool:
    data = json.loads(path.read_text("utf-8"))
    if isinstance(data, dict):
        return "deepfake_detect" in data or data.get("tool") == "deepfake-detect"
    return isinstance(data, list) and all(isinstance(r, dict) and "filename" in r for r in data)


def _safetensors_ours(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return "deepfake_detect" in (fh.metadata() or {})


def _yaml_ours(path: Path) -> bool:
    return _first_line(path).startswith("ensemble:")


def _png_ours(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return str(im.info.get("Software", "")).startswith(PNG_SOFTWARE)


def _onnx_ours(path: Path) -> bool:
    """An ONNX model this tool exported: its metadata holds the ``deepfake_detect.format`` key
    (read from the protobuf without loading the graph's weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(p.key == "deepfake_detect.format" for p in model.metadata_props)


_SIGNATURES: dict[str, Callable[[Path], bool]] = {
    ".csv": _csv_ours, ".json": _json_ours, ".safetensors": _safetensors_ours,
    ".yaml": _yaml_ours, ".yml": _yaml_ours, ".png": _png_ours, ".onnx": _onnx_ours,
}


def written_by_tool(path: Path) -> bool:
    """Whether ``path`` looks like an output of this tool (an empty file counts as nobody's)."""
    check = _SIGNATURES.get(path.suffix.lower())
    if check is None or path.stat().st_size == 0:
        return path.stat().st_size == 0
    try:
        return bool(check(path))
    except Exception:  # noqa: BLE001 - unreadable or another format: not ours
        return False


# --------------------------------------------------------------------------- run-folder lock


class RunLock:
    """An exclusive OS lock on ``<folder>/.deepfake-detect.lock`` held while a command runs.

    The kernel releases it when the process ends, however it ends (a kill too), so a stale lock
    can never block a later run; a second process asking for it is refused at once with the
    holder's pid and command. The file also marks the folder as this tool's (:func:`folder_owner`).
    """

    def __init__(self, folder: str | Path, command: str):
        self.folder = Path(folder)
        self.command = command
        self._fh = None

    def acquire(self, wait: bool = False, shared: bool = False) -> RunLock:
        """Take the lock; if another process holds it, refuse at once (OutputError), or with
        ``wait`` block until it is free. ``shared``: several holders at once (the parts of a
        split ``prepare``), none while an exclusive holder runs; a shared holder leaves the
        file's holder record to the exclusive ones."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; folders are still claimed
            return self
        path = self.folder / LOCK_FILE
        try:
            fh = open(path, "a+", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write its lock file ({exc.strerror or exc}); "
                              "choose a writable --out") from None
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            fcntl.flock(fh, mode | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            fh.close()
            raise OutputError(
                f"{self.folder} is in use by another deepfake-detect run (pid {holder.get('pid', '?')}, "
                f"`{holder.get('command', '?')}` since {holder.get('since', '?')}); wait for it to "
                "finish or choose another --out"
            ) from None
        if not shared:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "command": self.command,
                                 "argv": " ".join(sys.argv),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
            fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the lock; the file stays as the folder's marker
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def owned_folder(folder: str | Path, command: str, *, inputs: Iterable[str | Path] = (),
                 force: bool = False) -> Iterator[Path]:
    """:func:`claim_folder` and hold its :class:`RunLock` for the block."""
    path = claim_folder(folder, command, inputs=inputs, force=force)
    with RunLock(path, command):
        yield path


@contextlib.contextmanager
def atomic_open(path: str | Path, encoding: str = "utf-8", newline: str | None = "") -> Iterator:
    """A text file handle whose content replaces ``path`` in one step when the block ends."""
    with atomic_target(path) as tmp, open(tmp, "w", encoding=encoding, newline=newline) as fh:
        yield fh


class PartLock:
    """The locks of a part run: the folder's lock held *shared* (parts run side by side; a
    whole run or a merge, which hold it exclusively, are refused meanwhile, and refuse it) and
    ``<folder>/.deepfake-detect.lock`` exclusively (:class:`RunLock`: the same part twice is
    refused). OS locks: the kernel drops them when the process dies (NFS: Linux maps them onto
    the server's byte-range locks).

    ``prepare --part i/n`` (own lock in ``.parts/part-<i>-of-<n>``) and ``shard --node-rank r
    --num-nodes n`` (in ``.nodes/node-<r>-of-<n>``) both use it, so that both kinds of split runs
    follow one locking rule."""

    def __init__(self, out: Path, part: tuple[int, int], *, folder: Path, command: str = "prepare",
                 flag: str | None = None, name: str | None = None, doing: str = "prepared"):
        i, n = part
        self.out, self.part, self.command, self.folder = out, part, command, folder
        self.flag = flag or f"--part {i}/{n}"  # how the user asks for this part
        self.name = name or f"part {i}/{n}"
        self.doing = doing
        self._shared: RunLock | None = None
        self._own: RunLock | None = None

    def acquire(self) -> PartLock:
        # a folder's first run marks it as the command's (the lock file names the command)
        with contextlib.suppress(OutputError):
            RunLock(self.out, self.command).acquire().release()
        what = f"{self.command} {self.flag}"
        # retried for a moment: parts starting together each hold the folder's lock exclusively
        # for an instant (the marking above); only a lasting holder (a whole run, a merge) refuses
        for attempt in range(20):
            try:
                self._shared = RunLock(self.out, what).acquire(shared=True)
                break
            except OutputError as exc:
                if attempt == 19:
                    raise OutputError(f"{exc} (a whole-folder run: run {self.flag} after it)") from None
                time.sleep(0.05)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._own = RunLock(self.folder, what).acquire()
        except OutputError as exc:
            self.release()
            raise OutputError(f"{self.name} of {self.out} is being {self.doing} by another run "
                              f"({exc}); run each part once at a time") from None
        return self

    def release(self) -> None:
        for lock in (self._own, self._shared):
            if lock is not None:
                lock.release()
        self._own = self._shared = None

    def __enter__(self) -> PartLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
