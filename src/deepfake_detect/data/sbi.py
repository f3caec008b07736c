"""Self-blended images (SBI, own implementation): a fake made from one real face.

An altered copy of the image (colour shift, resampling, blur or sharpening) is blended back into
it through a soft, randomly deformed mask over the face, so the fake cue is local (a blending
boundary, an inconsistency of colour, sharpness and noise inside the face), which is what real
face-swap detectors have to learn too. ``self_blend`` works on any RGB image with landmarks or
a face mask: ``synthesize`` turns real face crops into training fakes with it, and the
quickstart's demo dataset makes its fakes with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from deepfake_detect.errors import DataError

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
_SHIFT = (12.0, 32.0)  # size of the fake's RGB colour shift, in 0-255 levels
_DEGRADE_P = (0.6, 0.25, 0.15)  # the fake's down-up resampling, blur or sharpening
_SHARPEN = (150, 300)  # unsharp-mask strength, percent
# RGB <-> YIQ (luma and two chroma axes): the hue and saturation shifts of the altered copy are
# a rotation and a scaling of the chroma plane
_RGB2YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of ``(N, 2)`` points, counter-clockwise."""
    pts = np.unique(np.asarray(pts, np.float64), axis=0)
    if len(pts) < 3:
        return pts

    def half(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for px, py in points:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (py - ay) - (by - ay) * (px - ax) > 0:
                    break
                out.pop()
            out.append((px, py))
        return out

    plist = [tuple(p) for p in pts.tolist()]
    lower, upper = half(plist), half(plist[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _as_mask(face_info: Any, shape: tuple[int, int]) -> np.ndarray:
    """A float ``H x W`` face mask from landmarks (convex hull) or from a given mask."""
    if isinstance(face_info, dict):
        if "landmarks" in face_info:
            face_info = face_info["landmarks"]
        elif "face_mask" in face_info:
            face_info = face_info["face_mask"]
        elif "mask" in face_info:
            face_info = face_info["mask"]
        else:
            raise DataError("self_blend: face_info needs a 'landmarks' or 'face_mask' entry")
    arr = np.asarray(face_info, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape != shape:
        hull = _convex_hull(arr)
        if len(hull) < 3:
            raise DataError("self_blend: need at least 3 distinct landmarks to build a face mask")
        m = Image.new("L", (shape[1], shape[0]), 0)
        ImageDraw.Draw(m).polygon([tuple(p) for p in hull], fill=255)
        return np.asarray(m, np.float32) / 255
    if arr.shape[:2] != shape:
        raise DataError(
            f"self_blend: face mask shape {arr.shape} does not match the image {shape}; "
            "pass an H x W mask or (N, 2) landmarks"
        )
    arr = arr[..., 0] if arr.ndim == 3 else arr
    return (arr > (0.5 * arr.max() if arr.max() > 1 else 0.5)).astype(np.float32)


def _deform_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random affine jitter and a smooth elastic displacement of a mask."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return mask
    cx, cy = xs.mean(), ys.mean()
    ext = max(np.ptp(xs), np.ptp(ys), 4) + 1
    sx, sy = rng.uniform(0.9, 1.08, 2)
    rot = math.radians(rng.normal(0, 4))
    tx, ty = rng.normal(0, 0.03, 2) * ext
    c, s = math.cos(rot), math.sin(rot)
    # PIL's affine maps output -> input pixel; build the inverse of scale-rotate-shift about the centre.
    a, b, d, e = c / sx, s / sx, -s / sy, c / sy
    ox, oy = cx + tx, cy + ty
    coeffs = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
    pil = Image.fromarray(mask.astype(np.float32))
    warped = np.asarray(pil.transform((w, h), Image.AFFINE, coeffs, resample=Image.BILINEAR))
    # Elastic-ish: a coarse random displacement field, smoothly upsampled.
    g = 4
    amp = 0.06 * ext
    fields = [
        np.asarray(
            Image.fromarray(rng.normal(0, amp, (g, g)).astype(np.float32)).resize(
                (w, h), Image.BICUBIC
            )
        )
        for _ in range(2)
    ]
    yy, xx = np.mgrid[0:h, 0:w]
    sx_i = np.clip(np.rint(xx + fields[0]), 0, w - 1).astype(np.intp)
    sy_i = np.clip(np.rint(yy + fields[1]), 0, h - 1).astype(np.intp)
    return warped[sy_i, sx_i]


def _blur_f(mask: np.ndarray, radius: float) -> np.ndarray:
    pil = Image.fromarray(np.clip(mask * 255, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255


def _alter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The altered copy: colour, HSV, brightness/contrast, then resampling, blur or sharpening."""
    h, w = img.shape[:2]
    # A colour shift of random direction but bounded size, so no fake is an unaltered copy.
    shift = rng.normal(0, 1, 3)
    out = img.astype(np.float32) + shift / (np.linalg.norm(shift) + 1e-6) * rng.uniform(*_SHIFT)
    # Hue, saturation and value shifts, done as a chroma rotation in YIQ (linear, vectorised).
    yiq = out @ _RGB2YIQ.T
    a = rng.uniform(-0.25, 0.25)
    ca, sa = math.cos(a), math.sin(a)
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    sat = rng.uniform(0.75, 1.25)
    yiq[..., 1] = sat * (ca * i - sa * q)
    yiq[..., 2] = sat * (sa * i + ca * q)
    yiq[..., 0] *= rng.uniform(0.88, 1.12)
    out = yiq @ _YIQ2RGB.T
    m = out.mean()
    out = (out - m) * rng.uniform(0.85, 1.15) + m * rng.uniform(0.9, 1.1)
    pil = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    kind = rng.choice(3, p=_DEGRADE_P)
    if kind == 0:
        f = int(rng.choice([2, 4]))
        pil = pil.resize((max(1, w // f), max(1, h // f)), Image.BILINEAR).resize(
            (w, h), Image.BILINEAR
        )
    elif kind == 1:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.5)))
    else:
        pil = pil.filter(
            ImageFilter.UnsharpMask(
                radius=rng.uniform(1, 2), percent=int(rng.uniform(*_SHARPEN)), threshold=0
            )
        )
    return np.asarray(pil, np.float32)


def self_blend(
    image: np.ndarray,
    face_info: Any,
    rng: np.random.Generator,
    *,
    ratios: tuple[float, ...] = BLEND_RATIOS,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Make a fake from a real face image by blending an altered copy of it into its face.

    ``face_info`` is ``(N, 2)`` landmarks in pixel x, y (the mask is their convex hull), an
    ``H x W`` face mask, or a dict with ``landmarks`` or ``face_mask``. Returns an image of the
    same shape and dtype (and the blend mask used, with ``return_mask``).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"self_blend: expected an H x W x 3 RGB image, got shape {img.shape}")
    h, w = img.shape[:2]
    mask = _deform_mask(_as_mask(face_info, (h, w)), rng)
    side = max(4.0, math.sqrt(float(mask.sum())))  # the face's rough width in pixels
    mask = _blur_f(mask, rng.uniform(0.04, 0.12) * side)
    mask = np.clip((mask - rng.uniform(0.0, 0.3)) / 0.7, 0, 1)  # re-harden then soften again
    mask = _blur_f(mask, rng.uniform(0.02, 0.08) * side)
    mask = mask * float(rng.choice(ratios))
    # Float images may be in [0, 1]; the alteration works on 0-255 values.
    scale = 255.0 if np.issubdtype(img.dtype, np.floating) and float(img.max()) <= 1.0 else 1.0
    src = img.astype(np.float32) * scale
    altered = _alter(np.clip(np.rint(src), 0, 255).astype(np.uint8), rng)
    out = (mask[..., None] * altered + (1 - mask[..., None]) * src) / scale
    if np.issubdtype(img.dtype, np.integer):
        out = np.clip(np.rint(out), 0, 255)
    out = out.astype(img.dtype)
    return (out, mask) if return_mask else out


# --------------------------------------------------------------------------- dataset
