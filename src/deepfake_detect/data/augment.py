"""Custom train-time augmentations that torchvision lacks, as torchvision v2 transforms.

Both work on image tensors (uint8 ``(C, H, W)`` as in ``build_transform``, float in [0, 1]
also works) and draw their parameters from the global torch RNG, so Lightning's seeding of
the main process and of DataLoader workers makes them reproducible. They are plain
module-level classes holding only numbers, so they pickle for spawned workers. They are always
applied when called; ``build_transform`` wraps them in ``v2.RandomApply`` for a probability.
"""

from __future__ import annotations

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
