"""ONNX export of a detector, verified against PyTorch before the file is written.

The graph maps the preprocessed input batch to the detector's logits. Images: ``input``
``(batch, 3, S, S)``; a sequence detector (``dual_stream``): clips ``(batch, T, 3, S, S)``,
``T`` the clip length it was trained with. The batch axis is dynamic. Outputs:

* ``logits`` ``(batch, C)``: the detector's logits, as its PyTorch ``forward`` gives them;
* ``fake_logit`` ``(batch,)``: one value whose sigmoid is the uncalibrated P(fake)
  (``logits[:, fake_index] - logits[:, 1 - fake_index]`` for two classes, ``logits[:, 0]``
  for one);
* ``log_var`` ``(batch,)``: only for a detector with a variance head (``model.uncertainty``),
  the predicted log-variance of the fake logit.

P(fake) = ``sigmoid(fake_logit / temperature)`` (``softmax(logits / T)[:, fake_index]`` for two
classes: the same number), the temperature read from the metadata, exactly as
``LoadedModel.probabilities`` does for the checkpoint.

Everything needed to use the file without this package's checkpoint travels in the model's
``metadata_props`` under ``deepfake_detect.*`` keys (values are strings, JSON where
structured): ``format`` (the layout version, :data:`ONNX_FORMAT`), ``version`` (of the package
that wrote it), ``detector``, ``preprocessing`` (input size, mean, std, clip layout: what
``detector.preprocessing()`` returns), ``prepare`` (the face pipeline of the training crops, or
null), ``threshold``, ``temperature``, ``input`` (name, shape, dtype), ``output`` (the output
names and the rule to P(fake)), ``precision`` (fp32 / fp16), ``exporter`` (dynamo /
torchscript), ``parity`` (the check below) and ``meta`` (the whole checkpoint meta as JSON).

:func:`export_onnx` exports with ``torch.onnx.export(..., dynamo=True)`` (the TorchScript
exporter only when that fails), then runs PyTorch and ONNX Runtime (CPU) on the same random
batch of :data:`VERIFY_BATCH` inputs (not the traced batch size, so the dynamic axis is
exercised) and writes the file only when P(fake) agrees within the tolerance (fp32
:data:`FP32_TOLERANCE`, fp16 :data:`FP16_TOLERANCE`, both against the fp32 PyTorch model). The
serialised model is what ONNX Runtime checks; only after the check are those bytes (plus the
``parity`` record) written, to a temporary file beside ``out`` renamed over it in one step, so
a refused or interrupted export leaves nothing behind. Models over 2 GiB (protobuf's limit for
one file) are refused: every detector of the zoo is smaller in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfake_detect import __version__
from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.models.checkpoint_meta import CheckpointMeta
from deepfake_detect.models.detector import Detector
from deepfake_detect.outputs import atomic_target

ONNX_FORMAT = 1  # layout version of the deepfake_detect.* metadata
PREFIX = "deepfake_detect."
FORMAT_KEY = PREFIX + "format"
REQUIRED_KEYS = ("format", "detector", "preprocessing", "threshold", "output")
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "fake_logit", "log_var")
PRECISIONS = ("fp32", "fp16")
FP32_TOLERANCE = 1e-4  # max |P(fake) ONNX Runtime - P(fake) PyTorch| for an fp32 export
FP16_TOLERANCE = 1e-2  # the same for an fp16 graph, against the fp32 PyTorch model
VERIFY_BATCH = 3  # inputs in the parity batch (>= 2; not TRACE_BATCH: the batch axis is checked)
TRACE_BATCH = 2
ONNX_SUFFIX = ".onnx"


def is_onnx_path(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix, as loading decides)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


# -- the exported function ----------------------------------------------------------------------


class ExportGraph(nn.Module):
    """What is traced: input batch -> ``(logits, fake_logit[, log_var])``, in eval mode.

    With ``half`` the detector runs in float16 between a cast of the input and a cast of its
    outputs back to float32, so the graph's interface stays float32.
    """

    def __init__(self, detector: Detector, half: bool = False) -> None:
        super().__init__()
        self.detector = detector.half() if half else detector
        self.half = half
        self.variance = bool(getattr(detector, "predicts_variance", False))
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.half:
            x = x.half()
        if self.variance:
            logits, log_var = self.detector.forward_with_variance(x)
        else:
            logits, log_var = self.detector(x), None
        logits = logits.float()
        fake = self.detector.fake_logit(logits)
        if log_var is None:
            return logits, fake
        return logits, fake, log_var.float()

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES if self.variance else OUTPUT_NAMES[:2])


def input_shape(preprocessing: Mapping[str, Any]) -> tuple[int, ...]:
    """One input without the batch axis: ``(3, S, S)``, or ``(T, 3, S, S)`` for clips."""
    size = int(preprocessing["input_size"])
    sequence = preprocessing.get("sequence")
    if sequence:
        return (int(sequence["frames"]), 3, size, size)
    return (3, size, size)


def p_fake(detector: Detector, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(fake) from logits as ``LoadedModel.probabilities`` computes it (temperature first,
    skipped at 1.0, then the detector's own rule)."""
    if temperature != 1.0:
        logits = logits.float() / temperature
    return detector.probabilities(logits)


# -- metadata ----------------------------------------------------------------------------------


def output_rule(detector: Detector, variance: bool) -> dict[str, Any]:
    """The ``deepfake_detect.output`` entry: the outputs and how P(fake) follows from them."""
    num_classes, fake = int(detector.num_classes), int(detector.fake_index)
    if num_classes == 1:
        fake_logit = "logits[:, 0]"
        rule = "sigmoid(logits[:, 0] / temperature)"
    else:
        fake_logit = f"logits[:, {fake}] - logits[:, {1 - fake}]"
        rule = f"softmax(logits / temperature, axis=1)[:, {fake}]"
    return {
        "outputs": list(OUTPUT_NAMES if variance else OUTPUT_NAMES[:2]),
        "num_classes": num_classes,
        "fake_index": fake,
        "fake_logit": fake_logit,
        "p_fake": f"sigmoid(fake_logit / temperature) = {rule}",
        "log_var": ("predicted log-variance of the fake logit (its variance after temperature "
                    "scaling: exp(log_var) / temperature**2)") if variance else None,
    }


def onnx_metadata(detector: Detector, meta: CheckpointMeta, *, precision: str,
                  exporter: str, parity: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``deepfake_detect.*`` metadata_props of the exported model (see the module
    docstring)."""
    pre = detector.preprocessing()
    variance = bool(getattr(detector, "predicts_variance", False))
    shape = ["batch", *input_shape(pre)]
    props: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "version": __version__,
        "detector": detector.config.name,
        "preprocessing": pre,
        "prepare": meta.prepare,
        "threshold": float(meta.threshold),
        "temperature": float(meta.temperature),
        "input": {
            "name": INPUT_NAME, "shape": shape, "dtype": "float32",
            "layout": "RGB, resized to input_size (bilinear, antialiased), scaled to [0, 1], "
                      "then (x - mean) / std per channel" + (
                          "; clips: T frames of one face track" if "sequence" in pre else ""),
        },
        "output": output_rule(detector, variance),
        "precision": precision,
        "exporter": exporter,
        "meta": meta.to_json(),
    }
    if parity:
        props["parity"] = dict(parity)
    return {PREFIX + k: v if isinstance(v, str) else json.dumps(v, default=str)
            for k, v in props.items()}


@dataclass
class OnnxInfo:
    """The ``deepfake_detect.*`` metadata of an exported model, read and checked."""

    format: int
    detector: str
    preprocessing: dict[str, Any]
    prepare: dict[str, Any] | None
    threshold: float
    temperature: float
    num_classes: int
    fake_index: int
    outputs: list[str]
    precision: str
    meta: CheckpointMeta
    raw: dict[str, str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return input_shape(self.preprocessing)


def not_exported_error(path: str | Path) -> CheckpointError:
    return CheckpointError(
        f"{path} was not exported by deepfake-detect: it lacks the deepfake_detect.* metadata "
        "(preprocessing, threshold); export it with `deepfake-detect export --format onnx`"
    )


def read_onnx_metadata(props: Mapping[str, str], source: str | Path) -> OnnxInfo:
    """The checked ``deepfake_detect.*`` metadata of a model (``props``: its metadata_props as
    a mapping); a file without it, or with a bad value, raises a one-line CheckpointError."""
    ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    if not ours:
        raise not_exported_error(source)
    missing = [k for k in REQUIRED_KEYS if k not in ours]
    if missing:
        raise CheckpointError(
            f"{source}: its deepfake_detect.* metadata lacks {', '.join(PREFIX + k for k in missing)}"
            "; the file was edited or damaged: export it again with `deepfake-detect export "
            "--format onnx`"
        )

    def value(key: str, default: Any = None) -> Any:
        if key not in ours:
            return default
        try:
            return json.loads(ours[key])
        except ValueError:
            raise CheckpointError(
                f"{source}: metadata {PREFIX}{key} is not JSON ({ours[key][:60]!r}); the file "
                "was edited or damaged: export it again"
            ) from None

    fmt = value("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise CheckpointError(f"{source}: metadata {FORMAT_KEY} {ours['format']!r} is not a "
                              "layout version (1, 2, ...); export it again")
    if fmt > ONNX_FORMAT:
        raise CheckpointError(
            f"{source}: ONNX layout {fmt} was written by a newer deepfake-detect "
            f"({ours.get('version', '?')}); this is {__version__}, please upgrade"
        )
    pre = value("preprocessing")
    if not isinstance(pre, dict) or any(k not in pre for k in ("input_size", "mean", "std")):
        raise CheckpointError(f"{source}: metadata {PREFIX}preprocessing needs input_size, mean "
                              "and std; export it again")
    output = value("output")
    if not isinstance(output, dict) or output.get("num_classes") not in (1, 2) \
            or output.get("fake_index") not in (0, 1) or "logits" not in output.get("outputs", []):
        raise CheckpointError(f"{source}: metadata {PREFIX}output does not say how to get "
                              "P(fake) (num_classes, fake_index, outputs); export it again")
    prepare = value("prepare")
    if prepare is not None and not isinstance(prepare, dict):
        raise CheckpointError(f"{source}: metadata {PREFIX}prepare is not a mapping; export it again")
    stored = value("meta") or {}
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: metadata {PREFIX}meta is not a mapping; export it again")
    detector = ours["detector"]  # plain text, like version, precision and exporter
    experiment = dict(stored.get("experiment") or {})
    if prepare is not None or "prepare" in ours:
        experiment["prepare"] = prepare
    # The explicit keys are the documented ones: they win over the copy in the whole meta.
    merged = {**stored, "model": stored.get("model") or {"name": detector},
              "preprocessing": pre, "threshold": value("threshold"),
              "temperature": value("temperature", stored.get("temperature", 1.0)),
              "experiment": experiment}
    meta = CheckpointMeta.read(merged, str(source))
    precision = ours.get("precision", "fp32")
    return OnnxInfo(
        format=fmt, detector=detector, preprocessing=pre, prepare=prepare,
        threshold=meta.threshold, temperature=meta.temperature,
        num_classes=int(output["num_classes"]), fake_index=int(output["fake_index"]),
        outputs=[str(o) for o in output["outputs"]], precision=precision, meta=meta,
        raw=dict(props),
    )


def ort_session(model: str | Path | bytes, providers: list[str] | None = None,
                threads: int | None = None):
    """An ONNX Runtime session of ``model`` (a path or the serialised model; CPU unless
    ``providers`` say otherwise), on ``threads`` intra-op threads (default: as many as torch
    uses)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options,
                                        providers=providers or ["CPUExecutionProvider"])


def run_onnxruntime(model: str | Path | bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of ``model`` (a path or the serialised model) for the input batch ``x``, by
    name, on the CPU."""
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


# -- export ------------------------------------------------------------------------------------


class OnnxParityError(CheckpointError):
    """The exported graph does not give the PyTorch model's P(fake): nothing was written."""

    def __init__(self, message: str, max_diff: float, tolerance: float) -> None:
        super().__init__(message)
        self.max_diff = max_diff
        self.tolerance = tolerance


@dataclass
class OnnxExportResult:
    path: Path
    size_mib: float
    detector: str
    threshold: float
    precision: str
    exporter: str
    max_diff: float  # max |ΔP(fake)| between ONNX Runtime and PyTorch on the parity batch
    tolerance: float
    batch: int


@contextlib.contextmanager
def _quiet():
    """The exporters' warnings (deprecations, training-mode notes) kept off the console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_dynamo(graph: ExportGraph, example: torch.Tensor, props: dict[str, str]):
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        program = torch.onnx.export(
            graph, (example,), dynamo=True, input_names=[INPUT_NAME],
            output_names=graph.output_names, dynamic_shapes=({0: batch},),
            verbose=False, report=False, optimize=True,
        )
    program.model.metadata_props.update(props)
    return program.model_proto


def _export_torchscript(graph: ExportGraph, example: torch.Tensor, props: dict[str, str]):
    import io

    import onnx

    names = graph.output_names
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
            output_names=names, dynamic_axes={INPUT_NAME: {0: "batch"},
                                              **{n: {0: "batch"} for n in names}},
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, props)
    return model


def _short(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a.double() - b.double()).abs()
    if torch.isnan(diff).any():
        return math.inf
    return float(diff.max()) if diff.numel() else 0.0


def export_onnx(
    detector: Detector,
    meta: CheckpointMeta | Mapping[str, Any],
    out: str | Path,
    *,
    fp16: bool = False,
    tolerance: float | None = None,
    batch: int = VERIFY_BATCH,
    seed: int = 0,
    exporter: str = "auto",
) -> OnnxExportResult:
    """Write ``detector`` (in eval mode; adapters already merged, see
    :func:`~deepfake_detect.models.checkpoint.load_model_parts`) as the ONNX model ``out``
    with ``meta``'s threshold, temperature and face settings, after checking it against
    PyTorch (see the module docstring).

    ``exporter``: ``auto`` (dynamo, the TorchScript exporter if dynamo fails), ``dynamo`` or
    ``torchscript``. A failed check raises :class:`OnnxParityError` (one line with the largest
    difference) and leaves no file; ``out`` itself is not claimed here (the caller does that).
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ConfigError(f"exporter {exporter!r}: choose auto, dynamo or torchscript")
    if batch < 2:
        raise ConfigError(f"the parity batch must hold 2 or more inputs (got {batch})")
    meta = meta if isinstance(meta, CheckpointMeta) else CheckpointMeta.read(dict(meta), str(out))
    out = Path(out)
    precision = "fp16" if fp16 else "fp32"
    tolerance = float(tolerance if tolerance is not None else
                      (FP16_TOLERANCE if fp16 else FP32_TOLERANCE))
    detector = detector.eval()
    shape = input_shape(detector.preprocessing())
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(TRACE_BATCH, *shape, generator=generator)
    x = torch.randn(batch, *shape, generator=generator)
    with torch.no_grad():
        if detector.predicts_variance:
            ref_logits, ref_log_var = detector.forward_with_variance(x)
        else:
            ref_logits, ref_log_var = detector(x), None
        reference = p_fake(detector, ref_logits.float(), meta.temperature)
    graph = ExportGraph(copy.deepcopy(detector) if fp16 else detector, half=fp16)
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",),
             "torchscript": ("torchscript",)}[exporter]
    model, used, failures = None, None, []
    for kind in order:
        props = onnx_metadata(detector, meta, precision=precision, exporter=kind)
        try:
            model = (_export_dynamo if kind == "dynamo" else _export_torchscript)(
                graph, example, props)
            blob = model.SerializeToString()
            used = kind
            break
        except Exception as exc:  # noqa: BLE001 - an exporter's failure, reported in one line
            failures.append(f"{kind}: {type(exc).__name__}: {_short(exc)}")
    if used is None:
        raise CheckpointError(f"{out}: detector {detector.config.name!r} could not be exported "
                              f"to ONNX ({'; '.join(failures)}); nothing written")
    # The serialised graph itself is checked: exactly these bytes (plus the parity record)
    # are written below.
    try:
        outputs = run_onnxruntime(blob, x.numpy())
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing the graph
        raise CheckpointError(f"{out}: ONNX Runtime cannot run the exported graph "
                              f"({type(exc).__name__}: {_short(exc)}); nothing written") from None
    del blob
    logits = torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float32))
    got = p_fake(detector, logits, meta.temperature)
    diff = _max_diff(got, reference)
    lv_diff = 0.0
    if ref_log_var is not None:
        # the variance head: the same tolerance, relative to the size of the value
        scale = ref_log_var.float().abs().clamp(min=1.0)
        log_var = torch.from_numpy(np.asarray(outputs["log_var"], dtype=np.float32))
        lv_diff = _max_diff(log_var / scale, ref_log_var.float() / scale)
    if not (diff <= tolerance and lv_diff <= tolerance):
        what = (f"max |ΔP(fake)| {diff:.3g}" if not diff <= tolerance
                else f"max relative |Δlog_var| {lv_diff:.3g}")
        raise OnnxParityError(
            f"{out}: not written: ONNX Runtime and PyTorch disagree, {what} > {tolerance:g} "
            f"({precision}) on a random batch of {batch}", diff, tolerance)
    parity = {"max_abs_diff_p_fake": diff, "tolerance": tolerance, "batch": batch,
              "reference": "PyTorch fp32", "runtime": _runtime_name(),
              **({"max_rel_diff_log_var": lv_diff} if ref_log_var is not None else {})}
    entry = model.metadata_props.add()
    entry.key, entry.value = PREFIX + "parity", json.dumps(parity)
    model.producer_name, model.producer_version = "deepfake-detect", __version__
    with atomic_target(out) as tmp:
        tmp.write_bytes(model.SerializeToString())
    size = out.stat().st_size / 2**20
    return OnnxExportResult(out, size, detector.config.name, float(meta.threshold), precision,
                            used, diff, tolerance, batch)


def _runtime_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"


__all__ = [
    "FORMAT_KEY", "FP16_TOLERANCE", "FP32_TOLERANCE", "INPUT_NAME", "ONNX_FORMAT",
    "OUTPUT_NAMES", "ExportGraph", "OnnxExportResult", "OnnxInfo", "OnnxParityError",
    "export_onnx", "input_shape", "is_onnx_path", "not_exported_error",
    "onnx_metadata", "ort_session", "p_fake", "read_onnx_metadata", "run_onnxruntime",
]
