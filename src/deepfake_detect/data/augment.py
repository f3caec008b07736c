"""Custom train-time augmentations that torchvision lacks, as torchvision v2 transforms.

Blur, brightness/contrast, and the deepfake-specific corruptions (Gaussian noise, down-up
resampling, per-channel colour shift) plus cutout. All work on image tensors (uint8
``(C, H, W)`` as in ``build_transform``, float in [0, 1] also works) and on stacked frames
``(..., C, H, W)`` such as a ``tv_tensors.Video``: one draw per call, shared by every frame,
so a clip is augmented identically in each frame. They draw their parameters from the global
torch RNG, so Lightning's seeding of the main process and of DataLoader workers makes them
reproducible. They are plain module-level classes holding only numbers, so they pickle for
spawned workers. They are always applied when called; ``build_transform`` wraps them in
``v2.RandomApply`` for a probability.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def opencv_sigma(kernel_size: int) -> float:
    """Gaussian sigma that OpenCV derives from a kernel size when sigma is left at 0."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def _passes_through(inpt: Any) -> bool:
    """Boxes, masks and other non-image tv_tensors are left as they are (they carry no pixels)."""
    return isinstance(inpt, tv_tensors.TVTensor) and not isinstance(
        inpt, (tv_tensors.Image, tv_tensors.Video)
    )


def _check_tensor(inpt: Any, name: str) -> torch.Tensor:
    if not isinstance(inpt, torch.Tensor):
        raise TypeError(
            f"{name} expects a tensor image (put it after v2.ToImage), got {type(inpt).__name__}"
        )
    return inpt


def _image_shape(flat_inputs: list[Any]) -> tuple[int, int, int]:
    """``(C, H, W)`` of the first image-like input (every frame of a video shares it)."""
    for inpt in flat_inputs:
        if isinstance(inpt, torch.Tensor) and not _passes_through(inpt) and inpt.ndim >= 3:
            c, h, w = inpt.shape[-3:]
            return int(c), int(h), int(w)
    raise TypeError("expected a tensor image (C, H, W) or frames (..., C, H, W); put it after "
                    "v2.ToImage")


def _full_range(img: torch.Tensor) -> float:
    """255 for uint8 images, 1 for float images in [0, 1]."""
    return 255.0 if img.dtype == torch.uint8 else 1.0


def _back(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Float result -> the dtype (rounded and clamped for uint8) and tv_tensor type of ``like``."""
    top = _full_range(like)
    out = out.clamp(0, top)
    out = out.round_().to(torch.uint8) if like.dtype == torch.uint8 else out.to(like.dtype)
    return tv_tensors.wrap(out, like=like) if isinstance(like, tv_tensors.TVTensor) else out


def _check_range(value: tuple[float, float], name: str, upper: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi <= upper:
        raise ValueError(f"{name} {value} must satisfy 0 < min <= max <= {upper:g}")
    return lo, hi


class RandomKernelGaussianBlur(v2.Transform):
    """Gaussian blur with an odd kernel size drawn uniformly from ``[lo, hi]`` per call.

    Sigma follows the kernel size (OpenCV's rule), so a bigger kernel is a stronger blur, as
    in the blur augmentation of DeepfakeBench-style recipes.
    """

    def __init__(self, kernel_range: tuple[int, int] = (3, 7)) -> None:
        super().__init__()
        lo, hi = (int(k) for k in kernel_range)
        if lo < 3 or hi < 3 or lo % 2 == 0 or hi % 2 == 0 or lo > hi:
            raise ValueError(f"kernel_range {kernel_range} must be two odd sizes >= 3, min <= max")
        self.kernel_range = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.kernel_range
        # Draw an index over the odd sizes only: lo, lo + 2, ..., hi.
        k = lo + 2 * int(torch.randint((hi - lo) // 2 + 1, ()).item())
        return {"kernel_size": k, "sigma": opencv_sigma(k)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _passes_through(inpt):
            return inpt
        k, s = params["kernel_size"], params["sigma"]
        return F.gaussian_blur(_check_tensor(inpt, type(self).__name__), [k, k], [s, s])

    def extra_repr(self) -> str:
        return f"kernel_range={self.kernel_range}"


class RandomBrightnessContrast(v2.Transform):
    """``pixel * c + b`` clamped to the valid range, with additive brightness.

    ``b`` is drawn uniformly in ``[-brightness_limit, brightness_limit]`` times the full range
    (255 for uint8, 1 for float) and ``c`` in ``[1 - contrast_limit, 1 + contrast_limit]``.
    Unlike ``v2.ColorJitter`` (multiplicative brightness, contrast around the grey mean), this
    shifts every pixel by the same amount, which matches the brightness/contrast augmentation of
    DeepfakeBench-style recipes.
    """

    def __init__(self, brightness_limit: float = 0.1, contrast_limit: float = 0.0) -> None:
        super().__init__()
        if not (0 <= brightness_limit < 1 and 0 <= contrast_limit < 1):
            raise ValueError(
                f"brightness_limit {brightness_limit} and contrast_limit {contrast_limit} "
                "must be in [0, 1)"
            )
        self.brightness_limit = float(brightness_limit)
        self.contrast_limit = float(contrast_limit)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        b, c = self.brightness_limit, self.contrast_limit
        shift = torch.empty(()).uniform_(-b, b).item() if b > 0 else 0.0
        factor = torch.empty(()).uniform_(1 - c, 1 + c).item() if c > 0 else 1.0
        return {"shift": shift, "factor": factor}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _passes_through(inpt):
            return inpt
        img = _check_tensor(inpt, type(self).__name__)
        top = 255.0 if img.dtype == torch.uint8 else 1.0
        out = img.float() * params["factor"] + params["shift"] * top
        out = out.clamp_(0, top)
        if img.dtype == torch.uint8:
            out = out.round_().to(torch.uint8)
        else:
            out = out.to(img.dtype)
        return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.TVTensor) else out

    def extra_repr(self) -> str:
        return f"brightness_limit={self.brightness_limit}, contrast_limit={self.contrast_limit}"


class RandomGaussianNoise(v2.Transform):
    """Additive zero-mean Gaussian noise, as sensor noise or a re-recorded screen would add.

    The standard deviation is drawn uniformly in ``std_range`` (a fraction of the full range:
    0.02 is about 5 grey levels of 255) per call; the noise field is drawn once per call with
    the image's ``(C, H, W)`` shape, so all frames of a clip get the same noise. The result is
    clamped and, for uint8 input, rounded back to uint8.
    """

    def __init__(self, std_range: tuple[float, float] = (0.01, 0.05)) -> None:
        super().__init__()
        self.std_range = _check_range(std_range, "std_range", 1.0)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.std_range
        std = torch.empty(()).uniform_(lo, hi).item()
        return {"noise": torch.randn(_image_shape(flat_inputs)) * std}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _passes_through(inpt):
            return inpt
        img = _check_tensor(inpt, type(self).__name__)
        out = img.float() + params["noise"] * _full_range(img)
        return _back(out, img)

    def extra_repr(self) -> str:
        return f"std_range={self.std_range}"


# Interpolations a down-up resampling may use (drawn per call); antialias is on when shrinking
# with bilinear/bicubic, which averages over the source pixels much like OpenCV's INTER_AREA.
DOWNUP_INTERPOLATIONS = (
    v2.InterpolationMode.NEAREST,
    v2.InterpolationMode.BILINEAR,
    v2.InterpolationMode.BICUBIC,
)


class RandomDownUp(v2.Transform):
    """Resize down by a factor drawn in ``scale_range`` and back up to the original size.

    Mimics a low-resolution source upscaled for distribution (a common fake pipeline step):
    fine detail and blending traces are smoothed or blocked out. One interpolation mode,
    drawn from :data:`DOWNUP_INTERPOLATIONS`, is used both ways. The output keeps the input's
    shape and dtype.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.25, 0.75)) -> None:
        super().__init__()
        self.scale_range = _check_range(scale_range, "scale_range", 1.0)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.scale_range
        _, h, w = _image_shape(flat_inputs)
        scale = torch.empty(()).uniform_(lo, hi).item()
        mode = DOWNUP_INTERPOLATIONS[int(torch.randint(len(DOWNUP_INTERPOLATIONS), ()).item())]
        small = [max(1, round(h * scale)), max(1, round(w * scale))]
        return {"small": small, "size": [h, w], "interpolation": mode}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _passes_through(inpt):
            return inpt
        img = _check_tensor(inpt, type(self).__name__)
        mode = params["interpolation"]
        down = F.resize(img, params["small"], interpolation=mode, antialias=True)
        up = F.resize(down, params["size"], interpolation=mode, antialias=True)
        if img.is_floating_point():  # bicubic overshoots; uint8 is already clamped by torch
            up = up.clamp(0, 1)
        return up

    def extra_repr(self) -> str:
        return f"scale_range={self.scale_range}"


class RandomColorShift(v2.Transform):
    """Add a per-channel offset drawn uniformly in ``[-limit, limit]`` (in 0..255 units).

    Unlike a brightness change, the channels move independently, shifting the colour balance
    as a different camera, white balance or colour-grading step would. Clamped to the range.
    """

    def __init__(self, limit: int = 20) -> None:
        super().__init__()
        if not 0 <= int(limit) <= 255:
            raise ValueError(f"limit {limit} must be in [0, 255]")
        self.limit = int(limit)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        c, _, _ = _image_shape(flat_inputs)
        shift = torch.randint(-self.limit, self.limit + 1, (c, 1, 1)).float()
        return {"shift": shift}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _passes_through(inpt):
            return inpt
        img = _check_tensor(inpt, type(self).__name__)
        out = img.float() + params["shift"] * (_full_range(img) / 255.0)
        return _back(out, img)

    def extra_repr(self) -> str:
        return f"limit={self.limit}"


class RandomCutout(v2.Transform):
    """Fill one square hole with 0 (black), its side ``size`` times the shorter image side.

    The hole lies wholly inside the image at a uniformly drawn place, the same in every frame
    of a clip. Applied on uint8 before normalisation (``v2.RandomErasing`` works after it, on
    model-space values, and with random shapes).
    """

    def __init__(self, size: float = 0.25) -> None:
        super().__init__()
        if not 0 < float(size) <= 1:
            raise ValueError(f"size {size} must be in (0, 1]")
        self.size = float(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        _, h, w = _image_shape(flat_inputs)
        side = max(1, min(h, w, math.ceil(self.size * min(h, w))))
        top = int(torch.randint(h - side + 1, ()).item())
        left = int(torch.randint(w - side + 1, ()).item())
        return {"top": top, "left": left, "side": side}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if _passes_through(inpt):
            return inpt
        img = _check_tensor(inpt, type(self).__name__)
        t, l, s = params["top"], params["left"], params["side"]
        out = img.clone()  # never write into the caller's tensor
        out[..., t : t + s, l : l + s] = 0
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}"
