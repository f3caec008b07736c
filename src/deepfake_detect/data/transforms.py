"""Image transforms from PIL images to normalised float tensors, for training and evaluation.

:func:`build_clip_transform` applies the same pipeline to the frames of a clip at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from deepfake_detect.config.schema import AugmentConfig
from deepfake_detect.data.augment import (
    RandomBrightnessContrast,
    RandomColorShift,
    RandomCutout,
    RandomDownUp,
    RandomGaussianNoise,
    RandomKernelGaussianBlur,
)
from deepfake_detect.errors import ConfigError


def build_transform(
    preprocessing: Mapping[str, Any], augment: AugmentConfig | None = None
) -> v2.Compose:
    """PIL image -> float32 ``(3, S, S)`` tensor normalised with the detector's mean and std.

    ``preprocessing`` holds ``input_size``, ``mean`` and ``std`` (the detector's). With
    ``augment`` None the transform is deterministic (evaluation); otherwise it adds the
    train-time augmentations. Geometry and colour work on uint8 tensors, which is faster than
    on floats; random erasing comes after normalisation so erased areas are noise in model space.
    See :func:`_pixel_augmentations` for the order of the uint8 augmentations.
    """
    size, mean, std = _preprocessing(preprocessing)
    steps: list[Any] = [v2.ToImage()]  # PIL -> uint8 (C, H, W)
    if augment is not None and augment.scale is not None:
        lo, hi = augment.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(
                f"data.augment.scale {augment.scale} must satisfy 0 < min <= max <= 1"
            )
        steps.append(v2.RandomResizedCrop((size, size), scale=(lo, hi), antialias=True))
    else:
        steps.append(v2.Resize((size, size), antialias=True))
    if augment is not None:
        steps += _pixel_augmentations(augment)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if augment is not None and augment.random_erasing > 0:
        steps.append(v2.RandomErasing(augment.random_erasing))
    steps.append(v2.ToPureTensor())  # plain tensors collate and pickle without tv_tensors
    return v2.Compose(steps)


def augment_is_random(augment: AugmentConfig | None) -> bool:
    """Whether :func:`build_transform` with ``augment`` can give a different view each epoch."""
    if augment is None:
        return False
    return bool(
        augment.scale is not None or _pixel_augmentations(augment) or augment.random_erasing > 0
        or mixes_batches(augment)
    )


def mixes_batches(augment: AugmentConfig | None) -> bool:
    """Whether training batches are mixed (mixup / cutmix)."""
    return augment is not None and augment.mixup_prob > 0 and (
        augment.mixup_alpha > 0 or augment.cutmix_alpha > 0
    )


def build_mixup(augment: AugmentConfig | None):
    """timm's ``Mixup`` for ``data.augment`` (None when off). Targets come back as ``(B, 2)``
    class masses in label order (real, fake), unsmoothed: the loss smooths them itself."""
    if not mixes_batches(augment):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=augment.mixup_alpha, cutmix_alpha=augment.cutmix_alpha,
        prob=augment.mixup_prob, switch_prob=augment.mixup_switch_prob,
        mode=augment.mixup_mode, label_smoothing=0.0, num_classes=2,
    )


def _pixel_augmentations(augment: AugmentConfig) -> list[Any]:
    """The uint8 augmentations after crop/resize, in order:

    1. geometry: hflip, rotation;
    2. blur (before the colour steps, where it has always been, so that seeded runs of
       existing recipes keep their exact views);
    3. colour: brightness/contrast, colour jitter, per-channel colour shift, RandAugment
       (torchvision's ``v2.RandAugment``, applied on uint8);
    4. degradations a shared or re-encoded fake goes through: Gaussian noise, down-up
       resampling, then JPEG (compression last, as a saved fake would be);
    5. cutout, a black hole drawn on the final uint8 pixels.
    """
    steps: list[Any] = []
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    if augment.rotation > 0 and augment.rotation_p > 0:
        steps.append(_with_probability(v2.RandomRotation(augment.rotation), augment.rotation_p))
    if augment.blur > 0:
        steps.append(_with_probability(RandomKernelGaussianBlur(augment.blur_kernel), augment.blur))
    if augment.brightness > 0:
        bc = RandomBrightnessContrast(augment.brightness_limit, augment.contrast_limit)
        steps.append(_with_probability(bc, augment.brightness))
    if augment.color_jitter is not None:
        b, c, s, h = augment.color_jitter
        try:
            steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"data.augment.color_jitter {augment.color_jitter} is invalid ({e}): "
                "brightness, contrast, saturation >= 0 and hue in [0, 0.5]"
            ) from None
    if augment.color_shift > 0 and augment.color_shift_limit > 0:
        shift = RandomColorShift(augment.color_shift_limit)
        steps.append(_with_probability(shift, augment.color_shift))
    if augment.randaugment > 0:
        steps.append(
            v2.RandAugment(num_ops=augment.randaugment, magnitude=augment.randaugment_magnitude)
        )
    if augment.noise > 0:
        steps.append(_with_probability(RandomGaussianNoise(augment.noise_std), augment.noise))
    if augment.downup > 0:
        steps.append(_with_probability(RandomDownUp(augment.downup_scale), augment.downup))
    if augment.jpeg > 0:
        steps.append(_with_probability(v2.JPEG(list(augment.jpeg_quality)), augment.jpeg))
    if augment.cutout > 0:
        steps.append(_with_probability(RandomCutout(augment.cutout_size), augment.cutout))
    return steps


def _with_probability(transform: Any, p: float) -> Any:
    """``transform`` applied with probability ``p``; unwrapped at p == 1 so it always runs."""
    return transform if p >= 1 else v2.RandomApply([transform], p=p)


def _preprocessing(pre: Mapping[str, Any]) -> tuple[int, list[float], list[float]]:
    missing = [k for k in ("input_size", "mean", "std") if k not in pre]
    if missing:
        raise ConfigError(f"preprocessing is missing {', '.join(missing)}: the detector sets them")
    size = int(pre["input_size"])
    mean = [float(m) for m in pre["mean"]]
    std = [float(s) for s in pre["std"]]
    if size < 1 or len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(
            f"preprocessing input_size={pre['input_size']}, mean={pre['mean']}, std={pre['std']} "
            "is invalid: need a positive size and three means and three positive stds"
        )
    return size, mean, std


class ClipTransform:
    """PIL frames of one clip -> float32 ``(T, 3, S, S)``, with ONE random draw per clip.

    The frames are stacked into a ``tv_tensors.Video`` before the :func:`build_transform`
    pipeline runs, and torchvision v2 transforms draw their parameters once per call, so a
    flip, rotation, crop, blur, colour change, JPEG quality or erased patch is the same in every
    frame: augmentation never invents flicker that a temporal model could learn as a cue.
    Frames of another size than the first are resized to it first (prepare's crops all share
    one size, so this only happens with hand-made folders). Picklable for DataLoader workers.
    """

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, frames: Sequence[Image.Image]) -> torch.Tensor:
        if not frames:
            raise ValueError("a clip needs at least one frame")
        tensors = [F.pil_to_tensor(f) for f in frames]  # uint8 (C, H, W)
        size = list(tensors[0].shape[-2:])
        tensors = [
            t if list(t.shape[-2:]) == size else F.resize(t, size, antialias=True) for t in tensors
        ]
        # v2.ToImage at the head of the pipeline leaves a Video as it is
        return self.transform(tv_tensors.Video(torch.stack(tensors)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def build_clip_transform(
    preprocessing: Mapping[str, Any], augment: AugmentConfig | None = None
) -> ClipTransform:
    """Like :func:`build_transform` for a clip: a list of PIL frames -> float32
    ``(T, 3, S, S)``, augmented (when ``augment`` is given) identically in every frame."""
    return ClipTransform(build_transform(preprocessing, augment))
