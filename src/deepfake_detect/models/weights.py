"""Reading weight files without running pickled code, and loading them into modules.

PyTorch files are read with ``torch.load(weights_only=True)``: only tensors, plain containers and
the harmless classes in :data:`SAFE_GLOBALS` can be rebuilt. A file that needs anything else is
refused with instructions for converting it to safetensors once, in a session the user trusts.
"""

from __future__ import annotations

import argparse
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


def _refused_names(path: Path, exc: Exception) -> list[str]:
    # torch names builtins without their module ("GLOBAL getattr").
    names = [n if "." in n else f"builtins.{n}" for n in re.findall(r"GLOBAL ([\w.]+)", str(exc))]
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
    what = ", ".join(names[:5]) if names else "a Python object torch does not allow"
    target = path.with_suffix(".safetensors")
    return (
        f"{path}: refused to load: the file contains pickled Python objects ({what}) that would "
        "have to run code to be rebuilt, and deepfake-detect never runs pickled code from weight "
        "files. If you trust the file, convert it once in a Python session:\n"
        "    import torch, safetensors.torch\n"
        f"    obj = torch.load(r'{path}', map_location='cpu', weights_only=False)\n"
        "    sd = obj.state_dict() if hasattr(obj, 'state_dict') else obj['state_dict']\n"
        "    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()},\n"
        f"                                r'{target}')\n"
        "and use the .safetensors file instead."
    )


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` and :data:`SAFE_GLOBALS` allowed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    # Memory-mapping avoids holding a second copy of large checkpoints (zip format only).
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal_message(path, _refused_names(path, exc))) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: could not be read as a PyTorch weights file ({exc}). Expected a file written "
            "by torch.save or a .safetensors file; check that it is complete (not truncated)."
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


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
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if is_safetensors(path):
        sd = _read_safetensors(path)
    else:
        sd = unwrap_state_dict(torch_load_safe(path), path)
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
