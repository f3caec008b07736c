"""This tool's checkpoint formats, and loading them into a detector ready for prediction.

Format A, ``.ckpt`` written by training (Lightning): a torch file whose dict holds
``state_dict`` (detector keys prefixed ``model.``) and ``deepfake_detect`` (the meta below).
Format B, exported ``.safetensors``: the detector's state dict, with the meta as JSON under the
metadata key ``deepfake_detect``.

The meta is plain Python data: ``format``, ``model`` (the model config), ``preprocessing``
(``input_size``, ``mean``, ``std``), ``threshold``, ``temperature`` (temperature scaling of the
logits, 1.0 = none; missing in old checkpoints), ``version``, ``git_commit``, ``experiment``
(the full experiment config) and ``class_names``; ``calibrate`` adds ``calibration``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepfake_detect import __version__
from deepfake_detect.errors import CheckpointError, ConfigError, DeepfakeDetectError
from deepfake_detect.models.checkpoint_meta import CLASS_NAMES, FORMAT_VERSION, CheckpointMeta
from deepfake_detect.outputs import atomic_target
from deepfake_detect.models.detector import Detector
from deepfake_detect.models.weights import (
    ACCEPTED_CHECKPOINTS,
    damaged_file_error,
    select_lightning_model,
    short_reason,
    sniff_weights_file,
    torch_load_file,
    unwrap_state_dict,
)

META_KEY = "deepfake_detect"


def checkpoint_meta(
    detector: Detector,
    threshold: float = 0.5,
    experiment: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The meta to store with a checkpoint, as plain data (``extra`` adds keys, e.g. metrics);
    it is typed (:class:`CheckpointMeta`) and validated whenever a checkpoint is read."""
    from deepfake_detect.runinfo import git_commit

    meta = {
        "format": FORMAT_VERSION,
        "model": detector.config.model_dump(mode="json"),
        "preprocessing": detector.preprocessing(),
        "threshold": float(threshold),
        "temperature": float(getattr(detector, "temperature", 1.0)),
        "version": __version__,
        "git_commit": git_commit(),
        "experiment": dict(experiment) if experiment is not None else {},
        "class_names": list(CLASS_NAMES),
    }
    from deepfake_detect.models.strategies import lora_meta

    if (lora := lora_meta(detector)) is not None:
        meta["lora"] = lora  # the state dict holds adapter keys; loading adds the adapters first
    meta.update(extra)
    return meta


def export_safetensors(detector: Detector, path: str | Path,
                       meta: CheckpointMeta | Mapping[str, Any]) -> Path:
    """Write the detector's weights and ``meta`` as a standalone ``.safetensors`` file."""
    stored = meta.to_json() if isinstance(meta, CheckpointMeta) else dict(meta)
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in detector.state_dict().items():
        t = value.detach().cpu().contiguous()
        # safetensors refuses tensors sharing memory (tied weights); give each its own copy.
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    # Through a temporary file: a kill never leaves half a checkpoint, and the file gets the
    # umask's mode (safetensors itself would create it 0600).
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(stored, default=str)})
    return path


def _not_ours(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a deepfake-detect checkpoint (no '{META_KEY}' metadata), so the detector to "
        "build is unknown. For weights from elsewhere, build the detector from a config and pass "
        "the file: build_detector(config, weights=path) (CLI: set the model section and weights)."
    )


def check_checkpoint_file(path: str | Path) -> str:
    """The format of a checkpoint file (see :func:`~deepfake_detect.models.weights.sniff_weights_file`),
    judged before anything is read; anything that is not a checkpoint (a folder, an image, a
    text or YAML file, an empty or cut-off file) raises a one-line :class:`CheckpointError`."""
    return sniff_weights_file(path, ACCEPTED_CHECKPOINTS, missing="checkpoint not found")


def read_checkpoint(path: str | Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """The meta and the detector state dict of a checkpoint in either format."""
    path = Path(path)
    kind = check_checkpoint_file(path)
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as fh:
                raw_meta = (fh.metadata() or {}).get(META_KEY)
            if raw_meta is None:
                raise _not_ours(path)
            state_dict = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            detail = short_reason(exc)
            raise damaged_file_error(path, "not a valid safetensors file"
                           + (f": {detail}" if detail else "")) from None
        try:
            meta = json.loads(raw_meta)
        except json.JSONDecodeError as exc:
            raise CheckpointError(
                f"{path}: the '{META_KEY}' metadata is not JSON ({short_reason(exc)})"
            ) from None
    else:
        obj = torch_load_file(path, kind)
        if not isinstance(obj, Mapping) or META_KEY not in obj:
            raise _not_ours(path)
        meta = obj[META_KEY]
        state_dict = select_lightning_model(unwrap_state_dict(obj, path))
    return CheckpointMeta.read(meta, str(path)), state_dict


def load_model_parts(
    path: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    inference: bool = True,
) -> tuple[Detector, CheckpointMeta]:
    """The detector module stored in ``path`` (weights loaded, in eval mode, nothing attached
    to it) and its typed meta: what the inference layer's ``LoadedModel`` is made of.

    Without ``config`` the file must be this tool's checkpoint (either format) or a folder of
    LoRA adapters it saved (the base weights it records are read); with ``config`` (an
    experiment or model YAML, or a model mapping) any weights file that detector reads, e.g.
    an official release. With ``inference`` the detector is put in its fastest equivalent form
    (:meth:`Detector.for_inference`, e.g. adapters merged into plain layers) and the meta
    describes it as it is now, so that an export of it rebuilds the same structure.
    """
    if config is not None:
        module, meta = _foreign_parts(path, config)
    else:
        from deepfake_detect.models.strategies import is_adapter_folder, read_adapter

        if is_adapter_folder(path):
            module, meta = read_adapter(path)
        else:
            module, meta = _checkpoint_parts(path, inference)
    module.to(map_location)
    return module.eval(), meta


def _checkpoint_parts(path: str | Path, inference: bool) -> tuple[Detector, CheckpointMeta]:
    from deepfake_detect.models.registry import build_detector, validate_model_config

    path = Path(path)
    meta, state_dict = read_checkpoint(path)
    # Weights come from the checkpoint: the backbone initialisation must not read or download.
    model_cfg = {**meta.model, "pretrained": None, "weights": None, "allow_download": False}
    before_load = None
    if meta.lora:
        from deepfake_detect.config.schema import LoraSettings
        from deepfake_detect.models.strategies import apply_lora

        lora = LoraSettings.model_validate(meta.lora)
        before_load = lambda detector: apply_lora(detector, lora)  # noqa: E731
    try:
        cfg = validate_model_config(model_cfg, source=str(path))
        detector = build_detector(cfg, weights=state_dict, source=path, before_load=before_load)
    except CheckpointError:
        raise
    except DeepfakeDetectError as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild the detector stored in this checkpoint "
            f"(saved by deepfake-detect {meta.version}): {exc}"
        ) from None
    if inference:
        from deepfake_detect.models.strategies import merge_lora

        merge_lora(detector)
        detector = detector.for_inference()
        meta = meta.model_copy(update={"lora": None,
                                       "model": detector.config.model_dump(mode="json")})
    return detector, meta


def _foreign_parts(path: str | Path,
                   config: str | Path | Mapping[str, Any]) -> tuple[Detector, CheckpointMeta]:
    from deepfake_detect.models.registry import build_detector

    check_checkpoint_file(path)  # before the detector is built: a bad file fails fast

    experiment: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        from deepfake_detect.config.loading import read_yaml

        raw = read_yaml(config)
        experiment = raw if isinstance(raw.get("model"), Mapping) else {"model": raw}
        model_cfg = dict(experiment["model"])
    else:
        model_cfg = dict(config)
    model_cfg.update({"pretrained": None, "weights": None, "allow_download": False})
    detector = build_detector(model_cfg, weights=Path(path)).for_inference()
    meta = checkpoint_meta(detector, experiment=experiment, source=str(path))
    return detector, CheckpointMeta.read(meta, str(path))


def attach_meta(detector: Detector, meta: CheckpointMeta) -> Detector:
    """The older API's form of a loaded model: ``threshold``, ``temperature`` and
    ``checkpoint_meta`` set on the module itself (see :func:`load_checkpoint`). The inference
    layer keeps them beside the module instead (``LoadedModel``)."""
    detector.threshold = meta.threshold
    detector.temperature = meta.temperature
    detector.checkpoint_meta = meta
    return detector


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", inference: bool = True
) -> Detector:
    """Rebuild the detector a checkpoint was saved from, load its weights, in eval mode.

    With ``inference`` the detector is also put in its fastest equivalent form
    (:meth:`Detector.for_inference`, e.g. adapters merged into plain layers). Kept for the
    older API: the returned module carries ``threshold`` (the decision threshold on P(fake)
    chosen in training), ``temperature`` and ``checkpoint_meta`` (the stored meta) as
    attributes. ``deepfake_detect.inference.predictor.LoadedModel.load`` gives the same
    model with those beside the module.
    """
    module, meta = _checkpoint_parts(path, inference)
    module.to(map_location)
    return attach_meta(module.eval(), meta)


def load_detector(
    path: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> Detector:
    """A detector ready for prediction from this tool's checkpoint, or, with ``config`` (an
    experiment or model YAML, or a model mapping), from any weights file that detector reads
    (e.g. an official release). Without ``config`` the file must be this tool's checkpoint, or
    a folder of LoRA adapters it saved (the base weights it records are read).

    Kept for the older API, like :func:`load_checkpoint` (attributes on the module); the
    inference layer reads the same through :func:`load_model_parts`.
    """
    return attach_meta(*load_model_parts(path, config, map_location))


@dataclass
class ExportResult:
    path: Path
    size_mib: float
    detector: str
    threshold: float
    format: str = "safetensors"
    # ONNX: the graph's precision and its check against PyTorch (max |ΔP(fake)|, tolerance)
    precision: str | None = None
    max_diff: float | None = None
    tolerance: float | None = None
    exporter: str | None = None


EXPORT_FORMATS = ("safetensors", "onnx")


def export_format(out: str | Path, format: str | None = None, fp16: bool = False) -> str:
    """The export format for ``out`` (``format`` None: from its suffix, ``.onnx`` or not), with
    a one-line ConfigError where the options do not fit together."""
    from deepfake_detect.models.onnx_export import is_onnx_path

    out = Path(out)
    onnx_name = is_onnx_path(out)
    chosen = format or ("onnx" if onnx_name else "safetensors")
    if chosen not in EXPORT_FORMATS:
        raise ConfigError(f"--format {format!r}: choose {' or '.join(EXPORT_FORMATS)}")
    if chosen == "onnx" and not onnx_name:
        raise ConfigError(f"--out {out}: an ONNX model is written to a .onnx file (predict and "
                          "evaluate recognise it by that suffix); e.g. --out "
                          f"{out.with_suffix('.onnx').name}")
    if chosen == "safetensors" and onnx_name:
        raise ConfigError(f"--out {out}: a .onnx name for --format safetensors; use --format "
                          "onnx, or a .safetensors name")
    if fp16 and chosen != "onnx":
        raise ConfigError("--fp16 applies to --format onnx (a float16 graph for GPUs); the "
                          ".safetensors checkpoint keeps the weights as trained")
    return chosen


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    threshold: float | None = None,
    force: bool = False,
    format: str | None = None,
    fp16: bool = False,
) -> ExportResult:
    """``deepfake-detect export``: read ``checkpoint`` (with ``config``: any weights file that
    model reads) and write its weights in their fastest form (Effort residuals and LoRA
    adapters merged into plain layers) plus the meta, ``threshold`` replacing the stored one
    when given: a standalone ``.safetensors``, or with ``format`` ``onnx`` (the default for a
    ``.onnx`` name) an ONNX model verified against PyTorch before it is written
    (:func:`~deepfake_detect.models.onnx_export.export_onnx`; ``fp16``: a float16 graph).
    ``out`` is claimed first: never an input, never a file this tool did not write (without
    ``force``)."""
    from deepfake_detect.outputs import claim_file

    out = Path(out)
    chosen = export_format(out, format, fp16)
    # an earlier export of this tool (safetensors or ONNX, recognised by its metadata) may be
    # replaced; any other file needs force
    claim_file(out, inputs=[checkpoint, *([config] if config else [])], force=force)
    module, meta = load_model_parts(checkpoint, config)
    if threshold is not None:
        meta = meta.model_copy(update={"threshold": float(threshold)})
    if chosen == "onnx":
        from deepfake_detect.models.onnx_export import export_onnx

        result = export_onnx(module, meta, out, fp16=fp16)
        return ExportResult(result.path, result.size_mib, result.detector, result.threshold,
                            "onnx", result.precision, result.max_diff, result.tolerance,
                            result.exporter)
    path = export_safetensors(module, out, meta)
    return ExportResult(path, path.stat().st_size / 2**20, module.config.name, meta.threshold)
