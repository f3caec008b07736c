"""Heatmaps: where on a face crop a detector finds its evidence for "fake" (Grad-CAM family).

Maps are computed through the ``grad-cam`` package (``pytorch_grad_cam``), imported here only,
and only when a map is asked for: scoring never loads it. For each face crop:

1. the crop goes through the checkpoint's own transform (resize to its input size, its mean and
   std), exactly as :meth:`~deepfake_detect.inference.predictor.LoadedModel.score_crops` sees it;
2. the CAM is taken for the detector's **fake logit**, the value whose sigmoid is P(fake): the
   single logit of a one-logit head, fake minus real logit of a two-logit head
   (:meth:`~deepfake_detect.models.detector.Detector.fake_logit`, whichever index is fake). The
   calibration temperature is left out: a positive scale of the target changes no Grad-CAM map;
3. the map (ReLU'd, scaled to [0, 1]: only evidence *for* "fake" shows) is resized back onto the
   crop, and the overlay blends the JET colormap half and half with it
   (``pytorch_grad_cam.utils.image.show_cam_on_image``).

Default method and layer per detector family (each detector names its layer,
:meth:`~deepfake_detect.models.detector.Detector.explain_target`; ``method=`` picks another of
:data:`METHODS`):

| family | method | layer: output layout |
| --- | --- | --- |
| EfficientNet, MobileNetV2 (timm) | GradCAM | `backbone.bn2` (after `conv_head`): (B, C, H, W) |
| ResNet, Xception, any timm CNN | GradCAM | the last map's module: `backbone.layer4`, `act4` |
| timm CNN, `attention: se / cbam` | GradCAM | `attention`, the attended map the head pools |
| ViT: vit_base, timm ViT, FSFM, LoRA | GradCAM | `backbone.blocks[-1].norm1`: ViT tokens |
| Effort (CLIP ViT-L/14) | GradCAM | `backbone.encoder.layers[-1].layer_norm1`: CLIP tokens |
| Swin (swin_base, timm Swin) | GradCAM | `backbone.layers[-1].blocks[-1].norm1`: (B, H, W, C) |
| dual_stream (video clips) | none | refused: a map of one frame does not explain a clip |
| plugin detectors | GradCAM | their `explain_target()`; default the last `Conv2d` |

Tokens are read as a map by dropping the class token (and any register or distillation tokens,
which timm puts first too) and laying the patch tokens out on the patch grid in row order; CLIP's
layout is the same (class token first, then 16 x 16 patches at 224 px). Swin's channels-last
maps are transposed. For a transformer the last block's first norm is the layer
whose tokens the last attention mixes into what the head reads (the output of the last block
itself would carry no gradient on the patch tokens of a class-token model).

An ensemble is explained with its first member (the one whose face settings cut the crops).

Maps are computed in full precision (whatever ``options.precision`` says) on ``options.device``,
the crops in chunks of at most :data:`EXPLAIN_BATCH`. The model's train/eval modes, its
parameters' ``requires_grad`` flags and any gradients they held are restored afterwards: the
parameters are frozen while a map is computed (no weight gradient is computed or left behind)
and the input carries the gradient instead, so frozen and trainable detectors work alike. While
a map is computed the target layer carries the package's forward hooks: do not score with the
same model in another thread meanwhile.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import LoadedModel, Predictor, as_predictor
from deepfake_detect.models.detector import Detector, ExplainTarget

# method name -> class of pytorch_grad_cam
METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
}
# Crops per forward/backward pass: a backward pass keeps every activation, so far fewer fit
# in memory than for scoring.
EXPLAIN_BATCH = 16
IMAGE_WEIGHT = 0.5  # share of the crop in an overlay, the rest is the colormap


# -- what is explained ----------------------------------------------------------------------------


def explained_model(predictor: Predictor | Detector) -> LoadedModel:
    """The single model whose maps stand for ``predictor``: itself, or an ensemble's first
    member. A sequence detector is refused (:class:`ConfigError`)."""
    # A predictor of several models names the one whose face settings it uses as its primary
    # (an ensemble: its first member); that model's maps stand for it.
    predictor = as_predictor(predictor)
    if predictor.input_kind == "clips":
        name = getattr(predictor, "name", type(predictor).__name__)
        raise ConfigError(f"heatmaps explain image detectors; {name} scores video clips")
    model = getattr(predictor, "primary", predictor)
    if not isinstance(model, LoadedModel):
        raise ConfigError(f"heatmaps need a loaded model or an ensemble, not "
                          f"{type(predictor).__name__}")
    return model


def _target(model: LoadedModel) -> ExplainTarget:
    # a module that is no Detector (e.g. an exported ONNX graph) has no layers to hook
    find = getattr(model.module, "explain_target", None)
    target = find() if callable(find) else None
    if target is None:
        raise ConfigError(
            f"{model.name!r} cannot be explained: its {type(model.module).__name__} names no "
            "layer for heatmaps (a detector's explain_target(); an exported ONNX model has "
            "none: explain with the PyTorch checkpoint)"
        )
    return target


def explain_method(predictor: Predictor | Detector) -> str:
    """The CAM method used for ``predictor`` unless another is asked for (see the table in the
    module docstring); refuses what cannot be explained, so it also serves as the early check."""
    return _target(explained_model(predictor)).method


def explain_layer(predictor: Predictor | Detector) -> str:
    """The dotted name of the layer the maps of ``predictor`` are computed on."""
    return _target(explained_model(predictor)).layer


def _cam_class(method: str) -> type:
    if method not in METHODS:
        raise ConfigError(f"heatmap method {method!r}: choose one of {', '.join(METHODS)}")
    import pytorch_grad_cam  # heavy (matplotlib, scipy): only when a map is asked for

    return getattr(pytorch_grad_cam, METHODS[method])


# -- the pieces the package takes -----------------------------------------------------------------


class FakeLogitTarget:
    """The CAM target: the detector's fake logit of one input's logits ``(classes,)``."""

    def __init__(self, module: Detector) -> None:
        self.module = module

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.module.fake_logit(logits[None].float())[0]


def channels_first(target: ExplainTarget) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The reshape transform that turns the target layer's output into ``(B, C, h, w)``; None
    for a CNN map, which is that already."""
    if target.layout == "nchw":
        return None
    if target.layout == "nhwc":
        return lambda t: t.permute(0, 3, 1, 2)

    def tokens(t: torch.Tensor) -> torch.Tensor:
        # the prefix (class, register, distillation) tokens come first; the patches follow
        patches = t.shape[1] - target.prefix_tokens
        grid = target.grid
        if grid is None or grid[0] * grid[1] != patches:  # e.g. another input size: square
            grid = (math.isqrt(max(patches, 0)),) * 2
        h, w = grid
        if h * w != patches or patches <= 0:
            raise ConfigError(f"heatmaps: the {t.shape[1]} tokens at {target.layer} do not form "
                              f"a patch grid after {target.prefix_tokens} prefix tokens")
        return t[:, target.prefix_tokens:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return tokens


@contextlib.contextmanager
def _explaining(model: LoadedModel, device: torch.device) -> Iterator[None]:
    """The model on ``device``, in eval mode, its parameters frozen, for the block; every
    module's mode, every parameter's ``requires_grad`` and the gradients they held restored
    afterwards (the package zeroes the model's gradients before each backward pass)."""
    module = model.module
    modes = [(m, m.training) for m in module.modules()]
    try:
        model.place(device)  # eval mode too; the parameters stay the same objects
        params = [(p, p.requires_grad, p.grad) for p in module.parameters()]
        try:
            for p, _, _ in params:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag, grad in params:
                p.requires_grad_(flag)
                p.grad = grad
    finally:
        for m, mode in modes:
            m.training = mode


def _check_crops(crops: Sequence[np.ndarray]) -> None:
    for i, crop in enumerate(crops):
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"crop {i}: expected an RGB uint8 array (H, W, 3), got "
                             f"{crop.dtype} {tuple(crop.shape)}")


# -- maps and overlays ----------------------------------------------------------------------------


def explain_maps(
    predictor: Predictor | Detector,
    crops: Sequence[np.ndarray],
    options: ScoringOptions | None = None,
    method: str | None = None,
) -> list[np.ndarray]:
    """One float32 map in [0, 1] per RGB uint8 face crop, of the crop's height and width: the
    ``method`` CAM (default: the detector family's, :func:`explain_method`) of the fake logit,
    on the layer the detector names, after the checkpoint's own preprocessing. A crop in which
    nothing counts as evidence for "fake" gets an all-zero map."""
    import cv2

    model = explained_model(predictor)
    target = _target(model)
    cam_class = _cam_class(method or target.method)
    _check_crops(crops)
    if not crops:
        return []
    options = options or ScoringOptions(num_workers=0, progress=False)
    module = model.module
    transform = model.transform
    maps: list[np.ndarray] = []
    with _explaining(model, options.device):
        layer = module.get_submodule(target.layer)
        cam = cam_class(model=module, target_layers=[layer],
                        reshape_transform=channels_first(target))
        try:
            # scoring runs in inference mode; a map needs gradients whatever the caller is in
            with torch.inference_mode(False), torch.enable_grad():
                for start in range(0, len(crops), EXPLAIN_BATCH):
                    chunk = crops[start : start + EXPLAIN_BATCH]
                    x = torch.stack([transform(c) for c in chunk]).to(options.device)
                    # the parameters are frozen: the input carries the gradient to the layer
                    x.requires_grad_(True)
                    grey = cam(input_tensor=x, targets=[FakeLogitTarget(module)] * len(chunk))
                    for crop, m in zip(chunk, grey, strict=True):
                        h, w = crop.shape[:2]
                        maps.append(np.clip(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR),
                                            0.0, 1.0).astype(np.float32))
        finally:
            cam.activations_and_grads.release()  # the hooks come off the model
    return maps


def overlay(crop: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``heatmap`` (a [0, 1] map of the crop's size) in the JET colormap blended on ``crop``
    (RGB uint8), as RGB uint8."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(crop.astype(np.float32) / 255.0, heatmap, use_rgb=True,
                             colormap=cv2.COLORMAP_JET, image_weight=IMAGE_WEIGHT)


def explain_crops(
    predictor: Predictor | Detector,
    crops: list[np.ndarray],
    options: ScoringOptions | None = None,
    method: str | None = None,
) -> list[np.ndarray]:
    """One overlay per RGB uint8 face crop, RGB uint8 of the crop's size: its heatmap
    (:func:`explain_maps`) blended on it."""
    maps = explain_maps(predictor, crops, options, method)
    return [overlay(c, m) for c, m in zip(crops, maps, strict=True)]


def write_png(image: np.ndarray, path: Any) -> None:
    """An RGB uint8 image as a PNG, written atomically and marked as this tool's (a rerun may
    replace it, a user's file of the same name is never taken for one)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from deepfake_detect.outputs import PNG_SOFTWARE, atomic_target

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    with atomic_target(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)


__all__ = [
    "EXPLAIN_BATCH", "METHODS", "FakeLogitTarget", "channels_first", "explain_crops",
    "explain_layer", "explain_maps", "explain_method", "explained_model", "overlay", "write_png",
]
