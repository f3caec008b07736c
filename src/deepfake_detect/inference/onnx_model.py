"""An exported ``.onnx`` model as a :class:`~deepfake_detect.inference.predictor.Predictor`:
the network runs in ONNX Runtime, everything around it is the PyTorch path's.

:class:`OnnxModel` is a :class:`~deepfake_detect.inference.predictor.LoadedModel` whose module
is an :class:`OnnxNetwork`: a parameter-free ``nn.Module`` that hands each batch to an ONNX
Runtime session and returns its logits. So the inputs go through the same datasets, the same
transform (``build_transform`` of the preprocessing stored in the file, as
``LoadedModel.transform`` builds it), the same face pipeline (the face settings stored in the
file), the same test-time views (``inference/tta.py``, applied to the batch before ONNX
Runtime), the same variance-head reading and the same logits-to-P(fake) rule (the detector's,
then the temperature stored in the file) as the checkpoint it was exported from.

What the exported graph cannot do is refused with a :class:`ConfigError`: Monte-Carlo dropout
(the graph was traced in eval mode and holds no dropout).

Execution providers: the CPU, or CUDA when the device asks for it and the installed ONNX
Runtime has ``CUDAExecutionProvider`` (else the CPU, with a warning).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfake_detect.errors import CheckpointError, ConfigError, DataError
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import LoadedModel
from deepfake_detect.models.detector import Detector
from deepfake_detect.models.onnx_export import (
    OnnxInfo,
    ort_session,
    read_onnx_metadata,
)
from deepfake_detect.models.weights import short_reason

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class StoredModelConfig:
    """The model config recorded in the file, as plain data (the detector's own config class
    need not be installed to run its ONNX export): ``name`` and ``model_dump``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = dict(data)
        self.name = str(data.get("name", "unknown"))

    def model_dump(self, mode: str = "python", **_: Any) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def __getattr__(self, key: str) -> Any:
        data = self.__dict__.get("_data", {})
        if key in data:
            return data[key]
        raise AttributeError(key)


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class OnnxNetwork(nn.Module):
    """An exported graph standing in for a detector module: ``forward`` runs ONNX Runtime on
    the batch and returns the logits (a float32 tensor on the batch's device);
    :meth:`fake_logit` and :meth:`probabilities` are the detector's own rules."""

    temperature = 1.0  # the stored temperature is the LoadedModel's, applied there
    fake_logit = Detector.fake_logit
    probabilities = Detector.probabilities

    def __init__(self, path: str | Path, session: Any, info: OnnxInfo) -> None:
        super().__init__()
        self.path = Path(path)
        self.info = info
        self.config = StoredModelConfig(info.meta.model or {"name": info.detector})
        self.num_classes = info.num_classes
        self.fake_index = info.fake_index if info.num_classes > 1 else 0
        self.input_size = int(info.preprocessing["input_size"])
        self._sessions: dict[str, Any] = {"cpu": session}
        self._device = "cpu"
        graph_input = session.get_inputs()[0]
        self.input_name = graph_input.name
        self.graph_shape = list(graph_input.shape)
        self.output_names = [o.name for o in session.get_outputs()]
        self._check_graph()

    @classmethod
    def open(cls, path: str | Path) -> OnnxNetwork:
        """Read ``path`` into a CPU session and check its metadata and input shape."""
        path = Path(path)
        if path.is_dir():
            raise CheckpointError(f"{path}: a folder, not an ONNX model file")
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            session = ort_session(path)
        except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime says, in one line
            raise CheckpointError(f"{path}: not a readable ONNX model "
                                  f"({short_reason(exc) or type(exc).__name__})") from None
        props = session.get_modelmeta().custom_metadata_map
        return cls(path, session, read_onnx_metadata(props, path))

    def _check_graph(self) -> None:
        expected = self.info.input_shape
        got = self.graph_shape[1:]
        if "logits" not in self.output_names:
            raise CheckpointError(f"{self.path}: the graph has no 'logits' output "
                                  f"(outputs: {', '.join(self.output_names)}); export it again")
        if len(got) != len(expected) or any(isinstance(g, int) and g != e
                                            for g, e in zip(got, expected)):
            raise CheckpointError(
                f"{self.path}: the graph takes input {_shape_text(self.graph_shape)} but its "
                f"deepfake_detect.preprocessing gives {_shape_text(['batch', *expected])}; the "
                "metadata does not belong to this graph: export the model again"
            )

    # -- what a detector module offers ------------------------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        return copy.deepcopy(self.info.preprocessing)

    @property
    def predicts_variance(self) -> bool:
        return "log_var" in self.output_names

    @property
    def expected_shape(self) -> tuple[Any, ...]:
        batch = self.graph_shape[0] if isinstance(self.graph_shape[0], int) else "batch"
        return (batch, *self.info.input_shape)

    # -- running ----------------------------------------------------------------------------
    def use_device(self, device: torch.device | str) -> str:
        """Run on ``device``: CUDA where ONNX Runtime has it, else the CPU; returns the
        provider used."""
        device = torch.device(device)
        if device.type == "cuda":
            import onnxruntime

            if CUDA in onnxruntime.get_available_providers():
                if "cuda" not in self._sessions:
                    index = device.index if device.index is not None else 0
                    self._sessions["cuda"] = ort_session(
                        self.path, providers=[(CUDA, {"device_id": index}), CPU])
                self._device = "cuda"
                return CUDA
            log.warning("%s: this onnxruntime has no CUDAExecutionProvider (install "
                        "onnxruntime-gpu); running on the CPU", self.path)
        self._device = "cpu"
        self._sessions.pop("cuda", None)  # release the GPU memory the session holds
        return CPU

    @property
    def session(self):
        return self._sessions.get(self._device) or self._sessions["cpu"]

    def check_input(self, x: torch.Tensor) -> None:
        """A batch that does not fit the graph: one line naming expected and actual shape."""
        expected = self.expected_shape
        shape = tuple(x.shape)
        fits = len(shape) == len(expected) and all(
            not isinstance(e, int) or e == s for e, s in zip(expected, shape))
        if not fits:
            raise DataError(f"{self.path.name}: the ONNX model takes input "
                            f"{_shape_text(expected)}, got {_shape_text(shape)}")

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of the graph for the batch ``x``, as float32 tensors on x's device."""
        self.check_input(x)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        values = self.session.run(self.output_names, {self.input_name: array})
        return {name: torch.from_numpy(np.asarray(v, dtype=np.float32)).to(x.device)
                for name, v in zip(self.output_names, values)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)["logits"]

    def forward_with_variance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.run(x)
        return out["logits"], out.get("log_var")

    def extra_repr(self) -> str:
        return f"{self.path.name}, input {_shape_text(self.expected_shape)}, {self.info.precision}"


class OnnxModel(LoadedModel):
    """An exported ``.onnx`` model ready to score (see the module docstring); threshold,
    temperature, preprocessing and face settings come from the file's metadata."""

    runtime = "onnxruntime"
    module: OnnxNetwork

    @classmethod
    def load(cls, path: str | Path, config: str | Path | None = None,
             map_location: str | torch.device = "cpu") -> OnnxModel:
        """Read an exported model; ``config`` does not apply (the file carries its settings)."""
        if config is not None:
            raise ConfigError(
                f"--config with the ONNX model {path}: leave it out; the file carries its "
                "preprocessing, face settings and threshold (a config is for weights from "
                "elsewhere)"
            )
        network = OnnxNetwork.open(path)
        model = cls(network, network.info.meta, source=str(path))
        if torch.device(map_location).type != "cpu":
            model.place(map_location)
        return model

    def __repr__(self) -> str:
        return (f"OnnxModel({self.name!r}, threshold={self.threshold:.4g}, "
                f"temperature={self.temperature:.4g}, source={self.source!r})")

    @property
    def name(self) -> str:
        return self.module.info.detector

    @property
    def precision(self) -> str:
        """``fp32`` or ``fp16``: how the graph was exported."""
        return self.module.info.precision

    def check(self, options: ScoringOptions) -> None:
        if options.mc_dropout:
            raise ConfigError(
                f"--mc-dropout with the ONNX model {self.source}: the exported graph has no "
                "dropout (it is traced in eval mode), so every pass would give the same score; "
                "leave out --mc-dropout, or score the checkpoint it was exported from"
            )

    def place(self, device: torch.device | str) -> OnnxNetwork:
        """Run the graph on ``device`` (CUDA where ONNX Runtime has it, else the CPU)."""
        device = torch.device(device)
        if self._device != device:
            self.module.use_device(device)
            self._device = device
        return self.module.eval()

    def release(self) -> None:
        """Back to the CPU session (a CUDA session and its memory are dropped)."""
        self.module.use_device("cpu")
        self._device = None


def load_onnx_model(path: str | Path, config: str | Path | None = None) -> OnnxModel:
    """:meth:`OnnxModel.load`."""
    return OnnxModel.load(path, config)


__all__ = ["OnnxModel", "OnnxNetwork", "StoredModelConfig", "load_onnx_model"]
