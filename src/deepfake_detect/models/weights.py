"""Reading weight files without running pickled code, and loading them into modules.

PyTorch files are read with ``torch.load(weights_only=True)``: only tensors, plain containers and
the harmless classes in :data:`SAFE_GLOBALS` can be rebuilt. A file that needs anything else is
refused (naming what it needs); nothing here ever unpickles with ``weights_only`` off, nor tells
users to.

Before anything is unpickled, a file's format is judged by its content (:func:`sniff_weights_file`):
a PyTorch zip or legacy pickle, or safetensors. Anything else (an image, a text or YAML file, an
empty or cut-off file, a folder) is refused with a one-line message saying what the file is.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfake_detect.errors import CheckpointError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


def _numpy_globals() -> list[Any]:
    # Real checkpoints carry numpy scalars (e.g. ``best_acc``) and arrays; rebuilding them only
    # allocates data. Files written with numpy 1.x name the ``numpy.core`` module, 2.x
    # ``numpy._core``.
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    out: list[Any] = [np.dtype, np.ndarray]
    for fn in (multiarray.scalar, multiarray._reconstruct):
        out += [(fn, f"numpy.core.multiarray.{fn.__name__}"),
                (fn, f"numpy._core.multiarray.{fn.__name__}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


# Official FSFM checkpoints (and many research ones) store their training arguments as an
# argparse.Namespace: a plain attribute bag, harmless to rebuild.
SAFE_GLOBALS: list[Any] = [*_numpy_globals(), argparse.Namespace]
"""Classes and functions, beyond torch's defaults, that weight files may reference."""


def allow_safe_globals(*objs: Any) -> None:
    """Allow more harmless classes (e.g. ``argparse.Namespace``) in weight files read here.

    Each item is a class/function or a ``(obj, "module.qualified.Name")`` pair for files that
    name it under another path.
    """
    for obj in objs:
        if obj not in SAFE_GLOBALS:
            SAFE_GLOBALS.append(obj)


def is_safetensors(path: Path) -> bool:
    """True for a safetensors file, judged by content (8-byte header length, then JSON)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


# -- what a file is, judged by its content ------------------------------------------------------

ACCEPTED_WEIGHTS = ("accepted: a .ckpt/.pth/.pt written by PyTorch or Lightning, or a "
                    ".safetensors file")
ACCEPTED_CHECKPOINTS = ("accepted: a .ckpt/.pth/.pt written by PyTorch or Lightning, a "
                        ".safetensors file, or an ensemble .yaml")

# torch.save's legacy (non-zip) format starts with this number, pickled as LONG1 (10 bytes).
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# safetensors refuses headers over 100 MB; a larger "length" means the file is something else.
_MAX_SAFETENSORS_HEADER = 100_000_000
_HEAD_BYTES = 4096
_YAML_SUFFIXES = (".yaml", ".yml")
# (offset, bytes, what the file is): formats people pass by mistake.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"BM", "a BMP image"),
    (8, b"WEBP", "a WebP image"),
    (8, b"AVI ", "an AVI video"),
    (4, b"ftyp", "an MP4/MOV video"),
    (0, b"\x1aE\xdf\xa3", "a WebM/Matroska video"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. Keras .h5), not a PyTorch file"),
    (0, b"\x93NUMPY", "a NumPy .npy array, not a PyTorch file"),
    (0, b"GGUF", "a GGUF model file, not a PyTorch file"),
    (0, b"%PDF", "a PDF document"),
    (0, b"\x1f\x8b", "a gzip-compressed file (unpack it first)"),
    (0, b"BZh", "a bzip2-compressed file (unpack it first)"),
    (0, b"\xfd7zXZ\x00", "an xz-compressed file (unpack it first)"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (unpack it first)"),
    (0, b"Rar!\x1a\x07", "a RAR archive (unpack it first)"),
)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A library's error text cut to one short line, for the end of a message; empty when the
    text only gives advice (torch's suggests turning ``weights_only`` off, which we never do)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    first = first.split(". ", 1)[0].rstrip(".")
    if "weights_only" in first or "safe_globals" in first:
        return ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _with_detail(text: str, exc: BaseException) -> str:
    detail = short_reason(exc)
    return f"{text} ({detail})" if detail else text


def _not_a_checkpoint(path: Path, what: str, accepted: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a checkpoint: {what}; {accepted}")


def damaged_file_error(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: the file is truncated or damaged ({detail}); copy or download it again"
    )


def folder_hint(path: Path) -> str:
    """The message for a folder given where a checkpoint file is expected, naming the
    checkpoint files it holds (a training run's ``model.safetensors``, ``checkpoints/*.ckpt``)."""
    found = [path / "model.safetensors", path / "checkpoints" / "best.ckpt",
             path / "checkpoints" / "last.ckpt"]
    found = [p for p in found if p.is_file()]
    if not found:
        try:
            found = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in (*SAFETENSORS_SUFFIXES, *TORCH_SUFFIXES))[:3]
        except OSError:
            found = []
    if found:
        return (f"{path} is a folder; give the checkpoint file inside it: "
                f"{' or '.join(str(p) for p in found)}")
    return (f"{path} is a folder; give the checkpoint file inside it (e.g. "
            f"{path / 'model.safetensors'} or {path / 'checkpoints' / 'best.ckpt'}); "
            "it holds no .safetensors, .ckpt, .pth or .pt file")


def _describe_yaml(path: Path, text: str) -> str:
    """What a YAML file given as a checkpoint is (read without building any value, so that
    aliases cannot blow up)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        return (f"a YAML file that does not parse ({where}{exc.problem or 'invalid YAML'}), "
                "so neither a checkpoint nor an ensemble file")
    except (yaml.YAMLError, RecursionError):
        return "a YAML file that does not parse, so neither a checkpoint nor an ensemble file"
    keys = set()
    if isinstance(node, yaml.MappingNode):
        keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    if "ensemble" in keys:
        return ("an ensemble file, where one checkpoint is needed (predict and evaluate take an "
                "ensemble file as their only --checkpoint; an ensemble member must be a "
                "checkpoint, not another ensemble file)")
    if keys & {"model", "train", "data", "name"}:
        return ("a config YAML, not weights: give it with --config and the weights file with "
                "--checkpoint")
    return "a YAML file without an 'ensemble:' section, so neither a checkpoint nor an ensemble file"


def _describe_text(path: Path, head: bytes, size: int) -> str | None:
    """What a text file is, or None when ``head`` is not text."""
    if b"\x00" in head:
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=size <= len(head))
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r\f\v\x1b" for c in text):
        return None
    start = text.lstrip().lower()
    if start.startswith("version https://git-lfs"):
        return ("a Git LFS pointer, not the weights themselves (fetch them with `git lfs pull`, "
                "or download the file itself)")
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page (a failed download?)"
    if path.suffix.lower() in _YAML_SUFFIXES:
        if size > 4 * 1024 * 1024:
            return "a large text file"
        try:
            full = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeError):
            return "a text file"
        return _describe_yaml(path, full)
    return "a text file"


def _sniff_safetensors(path: Path, head: bytes, size: int) -> None:
    """Raise when a file that starts like safetensors is cut short or its header is damaged."""
    n = int.from_bytes(head[:8], "little")
    if 8 + n > size:
        raise damaged_file_error(path, f"its safetensors header needs {8 + n} bytes, the file has {size}")
    try:
        with path.open("rb") as fh:
            fh.seek(8)
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items()
                if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise damaged_file_error(path, "its safetensors header is not valid JSON") from None
    need = 8 + n + max(ends, default=0)
    if need > size:
        raise damaged_file_error(path, f"its tensors need {need} bytes, the file has {size}")


def _sniff_zip(path: Path, accepted: str) -> str:
    if not zipfile.is_zipfile(path):
        raise damaged_file_error(path, "a PyTorch zip file whose end, the zip directory, is missing")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise damaged_file_error(path, short_reason(exc) or "a zip file whose directory cannot be read") from None
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        raise _not_a_checkpoint(
            path, "a TorchScript model (torch.jit.save), which deepfake-detect does not run; "
            "give the weights it was trained with", accepted)
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise _not_a_checkpoint(
            path, "a zip archive without PyTorch's data.pkl (e.g. a .zip, .npz or .keras file)",
            accepted)
    return "torch_zip"


def _sniff_tar(path: Path, accepted: str) -> str:
    import tarfile

    try:
        with tarfile.open(path) as tf:
            names = tf.getnames()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise damaged_file_error(path, short_reason(exc) or "a tar archive that cannot be read") from None
    if "pickle" in names and "storages" in names:
        return "torch_legacy"  # torch.save's oldest format
    raise _not_a_checkpoint(path, "a tar archive (unpack it and give the checkpoint inside)",
                            accepted)


def sniff_weights_file(
    path: str | Path, accepted: str = ACCEPTED_WEIGHTS, missing: str = "weights file not found"
) -> str:
    """The format of a weights file, judged by its content before anything is unpickled:
    ``"torch_zip"`` (``torch.save``), ``"torch_legacy"`` (its older pickle format) or
    ``"safetensors"``.

    Anything else raises :class:`CheckpointError` with a one-line message naming the file and
    saying what it is: missing, a folder, empty, truncated or damaged, an image, a text or YAML
    file, another known format, or unknown. ``accepted`` ends the message for files of the
    wrong kind; ``missing`` starts it for a path that does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(folder_hint(path))
    if not path.exists():
        raise CheckpointError(f"{missing}: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a device or pipe?); {accepted}")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc}); check the "
                              "path and its permissions") from None
    suffix = path.suffix.lower()
    if size == 0:
        raise damaged_file_error(path, "it is empty: 0 bytes")
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path, accepted)
    if head[:1] == b"\x80" and len(head) >= 2 and 2 <= head[1] <= 5:
        # Protocols 4 and 5 put a FRAME instruction (1 + 8 bytes) before the magic number.
        body = head[11:] if head[1] >= 4 and head[2:3] == b"\x95" else head[2:]
        if body[:len(_TORCH_LEGACY_MAGIC)] == _TORCH_LEGACY_MAGIC:
            return "torch_legacy"
        if len(body) < len(_TORCH_LEGACY_MAGIC) and _TORCH_LEGACY_MAGIC.startswith(body):
            raise damaged_file_error(path, f"a PyTorch file cut off after {size} bytes")
        raise _not_a_checkpoint(
            path, "a plain Python pickle (not written by torch.save), which deepfake-detect "
            "does not unpickle", accepted)
    header_length = int.from_bytes(head[:8], "little")
    if len(head) >= 9 and head[8:9] == b"{" and header_length <= _MAX_SAFETENSORS_HEADER:
        _sniff_safetensors(path, head, size)
        return "safetensors"
    if suffix in SAFETENSORS_SUFFIXES and len(head) < 9:
        raise damaged_file_error(path, f"only {size} bytes, shorter than a safetensors header")
    for offset, magic, what in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic and (magic != b"BM" or suffix == ".bmp"):
            raise _not_a_checkpoint(path, what, accepted)
    if len(head) > 262 and head[257:262] == b"ustar":
        return _sniff_tar(path, accepted)
    text = _describe_text(path, head, size)
    if text is not None:
        raise _not_a_checkpoint(path, text, accepted)
    if suffix in SAFETENSORS_SUFFIXES:
        raise damaged_file_error(path, "its first bytes are not a safetensors header")
    raise CheckpointError(
        f"{path}: unknown format, not a checkpoint (first bytes: {head[:8].hex(' ')}); "
        f"{accepted}"
    )


def _refused_names(path: Path, exc: Exception) -> list[str]:
    # torch names builtins without their module ("GLOBAL getattr").
    found = re.findall(r"GLOBAL ([A-Za-z_][\w.]*)(?=\s)", str(exc))
    names = [n if "." in n else f"builtins.{n}" for n in found]
    try:
        # Lists every global the pickle names, without executing anything.
        allowed = _safe_global_names()
        names += [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                  if n not in allowed]
    except Exception:  # noqa: BLE001 - best effort, the first name is already known
        pass
    return list(dict.fromkeys(names))


def _safe_global_names() -> set[str]:
    out = set()
    for obj in SAFE_GLOBALS:
        if isinstance(obj, tuple):
            out.add(obj[1])
        else:
            out.add(f"{obj.__module__}.{obj.__qualname__}")
    return out


def _refusal_message(path: Path, names: list[str]) -> str:
    what = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"{path}: refused: the file holds pickled Python objects ({what}) beyond tensors and "
        "plain data; rebuilding them would run code from the file, and deepfake-detect never "
        "runs pickled code from weight files. Re-save the weights, in an environment you trust, "
        "as a plain state dict (torch.save(model.state_dict(), 'model.pt')) or as .safetensors "
        "(safetensors.torch.save_file), and give that file"
    )


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` and :data:`SAFE_GLOBALS` allowed.

    The format is checked first (:func:`sniff_weights_file`); a safetensors file gives its
    tensors. Every failure is a one-line :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    kind = sniff_weights_file(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return torch_load_file(path, kind)


def _zip_damage(path: Path) -> str:
    """Why the pickle inside a PyTorch zip file is damaged (a CRC mismatch), or ''. Only the
    small ``data.pkl`` is read: its tensors' data are checked by torch as they are read."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name == "data.pkl" or name.endswith("/data.pkl"):
                    zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return short_reason(exc) or "its data.pkl cannot be read"
    except Exception:  # noqa: BLE001 - e.g. an unsupported compression: not known to be damaged
        return ""
    return ""


def torch_load_file(path: Path, kind: str) -> Any:
    """``torch.load`` (weights only) of a file :func:`sniff_weights_file` judged to be ``kind``
    (``"torch_zip"`` or ``"torch_legacy"``); failures are one-line :class:`CheckpointError`."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            # Memory-mapping avoids holding a second copy of large checkpoints (zip format only).
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=kind == "torch_zip")
    except pickle.UnpicklingError as exc:
        # Damaged bytes can read as any pickle instruction, an unknown global among them.
        damage = _zip_damage(path) if kind == "torch_zip" else ""
        if damage:
            raise damaged_file_error(path, damage) from None
        names = _refused_names(path, exc)
        if names:
            raise CheckpointError(_refusal_message(path, names)) from None
        detail = short_reason(exc)
        raise CheckpointError(
            f"{path}: the file is truncated or damaged, or its pickled data uses instructions "
            "that torch's safe (weights-only) reader does not support"
            + (f" ({detail})" if detail else "")
            + "; re-save the weights with torch.save(model.state_dict(), path) at default "
            "settings, or as .safetensors"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse the file means it is damaged
        raise damaged_file_error(path, short_reason(exc) or type(exc).__name__) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise damaged_file_error(path, _with_detail("not a valid safetensors file", exc)) from None


_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def _tensor_items(obj: Mapping) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def unwrap_state_dict(obj: Any, source: str | Path = "") -> dict[str, torch.Tensor]:
    """The tensor mapping inside common checkpoint containers (``{"state_dict": ...}`` etc.)."""
    while isinstance(obj, Mapping):
        tensors = _tensor_items(obj)
        inner = next(
            (obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None
        )
        # A container key wins unless the mapping is itself mostly tensors.
        if inner is not None and len(tensors) < len(obj) / 2:
            obj = inner
            continue
        if tensors:
            return tensors
        break
    keys = ", ".join(map(str, list(obj)[:10])) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"{source}: found no tensors (top level: {keys}). Expected a state dict, possibly inside "
        f"one of the keys {', '.join(_CONTAINER_KEYS)}."
    )


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str], source: str | Path = ""
) -> dict[str, torch.Tensor]:
    """Remove each prefix, in order, from the keys that start with it."""
    out = dict(state_dict)
    for prefix in prefixes:
        if not prefix:
            continue
        renamed: dict[str, torch.Tensor] = {}
        for key, value in out.items():
            new = key[len(prefix):] if key.startswith(prefix) else key
            if new in renamed:
                raise CheckpointError(
                    f"{source}: removing prefix {prefix!r} makes two keys named {new!r}; "
                    "check model.strip_prefix"
                )
            renamed[new] = value
        out = renamed
    return out


def read_state_dict(
    path: str | Path, strip_prefix: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Tensors of a weight file (.safetensors, .pth, .pt, .bin, .ckpt) on CPU.

    Common containers are unwrapped, a DataParallel ``module.`` prefix and then each of
    ``strip_prefix`` are removed from the keys.
    """
    path = Path(path)
    kind = sniff_weights_file(path)
    if kind == "safetensors":
        sd = _read_safetensors(path)
    else:
        sd = unwrap_state_dict(torch_load_file(path, kind), path)
    return strip_prefixes(sd, ("module.", *strip_prefix), path)


# -- loading into modules ----------------------------------------------------------------------


def _skippable(key: str) -> bool:
    # BatchNorm rebuilds a missing counter; older checkpoints do not have it.
    return key.endswith("num_batches_tracked")


def _prefix_hint(unexpected: list[str], missing: list[str], expected: set[str]) -> str:
    """Suggest a key prefix to strip or add when that would make the names line up."""
    votes: Counter[str] = Counter()
    for key in unexpected:
        parts = key.split(".")
        for i in range(1, min(len(parts), 4)):
            if ".".join(parts[i:]) in expected:
                votes[".".join(parts[:i]) + "."] += 1
                break
    if votes:
        prefix, n = votes.most_common(1)[0]
        if n >= max(1, len(unexpected) // 2):
            return f"the file's keys carry an extra prefix {prefix!r}; remove it (strip_prefix)"
    return ""


def describe_mismatch(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple, tuple]],
    n_expected: int,
) -> str:
    lines = [
        f"{len(missing)} of {n_expected} expected keys missing, {len(unexpected)} unexpected, "
        f"{len(mismatched)} with a different shape"
    ]
    if missing:
        lines.append(f"  first missing: {', '.join(missing[:5])}")
    if unexpected:
        lines.append(f"  first unexpected: {', '.join(unexpected[:5])}")
    for key, got, want in mismatched[:5]:
        lines.append(f"  shape of {key}: file {list(got)}, model {list(want)}")
    return "\n".join(lines)


def compare_state_dict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """Missing keys, unexpected keys and ``(key, file shape, model shape)`` shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not _skippable(k)]
    # Counters are the least telling keys to show first.
    unexpected = sorted((k for k in state_dict if k not in own), key=_skippable)
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, mismatched


def _head_output_mismatch(detector: nn.Module, mismatched: list[tuple[str, tuple, tuple]]) -> str:
    head_keys = getattr(detector, "head_parameter_names", lambda: set())()
    outs = {
        (got[0], want[0])
        for key, got, want in mismatched
        if (key in head_keys or key.startswith("head."))
        and got[:1] != want[:1]
        and got[1:] == want[1:]
    }
    if len(outs) != 1 or len(mismatched) > 2:
        return ""
    got, want = outs.pop()
    if {got, want} != {1, 2}:
        return ""
    return (
        f"the file's head has {got} output(s), this detector {want}: num_classes 1 is one sigmoid "
        "logit for P(fake), num_classes 2 a softmax over [real, fake]. Set the config key "
        f"model.num_classes: {got} to match the file."
    )


def load_state_dict_checked(
    detector: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | Path,
    assign: bool = False,
) -> None:
    """Strict load that explains a mismatch instead of raising torch's RuntimeError.

    With ``assign`` the module takes the given tensors instead of copying them into its own
    (for a freshly built detector: a memory-mapped file is then used in place, which makes
    building from a large checkpoint as cheap as HF's ``from_pretrained``). Tensors whose dtype
    differs from the module's are cast first.
    """
    missing, unexpected, mismatched = compare_state_dict(detector, state_dict)
    if missing or unexpected or mismatched:
        name = getattr(getattr(detector, "config", None), "name", type(detector).__name__)
        n_expected = sum(1 for k in detector.state_dict() if not _skippable(k))
        matched = n_expected - len(missing) - len(mismatched)
        own = set(detector.state_dict())
        cause = _head_output_mismatch(detector, mismatched)
        if not cause:
            cause = _prefix_hint(unexpected, missing, own)
        if not cause and missing and all(k.startswith("head.") for k in missing) and not unexpected:
            cause = ("the file has no head weights: it looks like backbone-only weights; load it "
                     "with model.pretrained instead")
        if not cause and matched < n_expected / 2:
            arch = getattr(detector, "timm_name", None)
            cause = (f"the file was saved from a different architecture than detector {name!r}"
                     f"{f' (timm {arch})' if arch else ''}; build the detector it was trained with "
                     "(model.name and its keys must match the training config)")
        if not cause:
            cause = "the detector's config differs from the one the file was saved with"
        raise CheckpointError(
            f"{source}: weights do not fit detector {name!r}: "
            f"{describe_mismatch(missing, unexpected, mismatched, n_expected)}\n"
            f"  likely cause: {cause}"
        )
    state = dict(state_dict)
    current = detector.state_dict()
    # Copying into tensors on the meta device (a structure built to receive weights) would be
    # a silent no-op.
    assign = assign or any(t.is_meta for t in current.values())
    if assign:
        for key, value in state.items():
            if value.dtype != current[key].dtype:
                state[key] = value.to(current[key].dtype)
    result = detector.load_state_dict(state, strict=False, assign=assign)
    left = [k for k in result.missing_keys if not _skippable(k)]
    if left or result.unexpected_keys:  # pragma: no cover - checked above
        raise CheckpointError(f"{source}: weights do not fit: missing {left[:5]}")


def select_lightning_model(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The detector's entries of a training-module state dict (held there as ``model``).

    Other entries (e.g. a loss's ``pos_weight`` buffer) belong to the training wrapper.
    """
    ours = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    return ours if len(ours) > len(state_dict) / 2 else dict(state_dict)


def load_detector_weights(
    detector: nn.Module,
    weights: str | Path | Mapping[str, torch.Tensor],
    source: str | Path | None = None,
    assign: bool = False,
) -> nn.Module:
    """Load detector weights strictly: a file (this tool's checkpoints or foreign ones) or a
    state dict already read (``source`` names it in messages). ``assign``: see
    :func:`load_state_dict_checked` (for detectors just built to receive these weights).

    Lightning checkpoints written by training hold the detector under ``model.``; those entries
    are taken, then :meth:`Detector.adapt_state_dict` maps foreign key names.
    """
    if isinstance(weights, Mapping):
        sd = dict(weights)
        source = source or "state dict"
    else:
        source = source or weights
        sd = read_state_dict(weights)
    if not any(k.startswith("model.") for k in detector.state_dict()):
        sd = select_lightning_model(sd)
    adapt = getattr(detector, "adapt_state_dict", None)
    if adapt is not None:
        sd = adapt(sd)
    load_state_dict_checked(detector, sd, source, assign=assign)
    return detector


def load_backbone_weights(
    backbone: nn.Module,
    path: str | Path,
    strip_prefix: Iterable[str] = (),
    drop_prefixes: Iterable[str] = (),
    min_fraction: float = 0.5,
) -> dict[str, Any]:
    """Load pretrained backbone weights non-strictly, without resizing anything.

    Keys under ``drop_prefixes`` (the original classifier) are ignored. Shape mismatches, or
    fewer than ``min_fraction`` of the backbone's keys found, raise :class:`CheckpointError`.
    Returns a report with the loaded, missing and unexpected keys.
    """
    sd = read_state_dict(path, strip_prefix)
    drops = tuple(p for p in drop_prefixes if p)
    sd = {k: v for k, v in sd.items() if not any(k == p or k.startswith(p + ".") for p in drops)}
    missing, unexpected, mismatched = compare_state_dict(backbone, sd)
    n_expected = sum(1 for k in backbone.state_dict() if not _skippable(k))
    loaded = n_expected - len(missing) - len(mismatched)
    if mismatched or loaded < min_fraction * n_expected:
        own = set(backbone.state_dict())
        cause = _prefix_hint(unexpected, missing, own)
        if not cause and mismatched and loaded >= min_fraction * n_expected:
            cause = ("same architecture with a different configuration (e.g. input size, width "
                     "or depth): weights are never resized, so match model.backbone_kwargs / "
                     "model.input_size to the file")
        if not cause:
            cause = ("the file is for a different architecture, or its keys carry a prefix "
                     "(set model.strip_prefix, e.g. ['backbone.'] or ['encoder.'])")
        raise CheckpointError(
            f"{path}: pretrained weights do not fit the backbone "
            f"({loaded} of {n_expected} keys usable): "
            f"{describe_mismatch(missing, unexpected, mismatched, n_expected)}\n"
            f"  likely cause: {cause}"
        )
    backbone.load_state_dict(sd, strict=False)
    if missing or unexpected:
        log.warning(
            "%s: loaded %d of %d backbone keys; missing: %s; unexpected: %s",
            path, loaded, n_expected, missing[:5], unexpected[:5],
        )
    return {"path": str(path), "loaded": loaded, "missing": missing, "unexpected": unexpected}
