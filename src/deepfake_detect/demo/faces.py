"""The quickstart's demo dataset, made offline: procedural faces and their self-blended fakes.

Reals are cartoon-like faces drawn with PIL, each identity filmed as a short "video" of frames that
vary in pose, expression, lighting, white balance, noise and compression. Each real frame yields
one fake by self-blending (the SBI recipe, own implementation): an altered copy of the frame is
blended back into it through a soft, randomly deformed mask over the face. The fake cue is
therefore local (a blending boundary and an inconsistency of colour, sharpness and noise inside
the face), never a global statistic, which is what real face-swap detectors have to learn too.
The blend itself is :mod:`deepfake_detect.data.sbi`.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from deepfake_detect.data.sbi import BLEND_RATIOS, self_blend
from deepfake_detect.errors import DataError

SPLITS = ("train", "val", "test")
_SUPERSAMPLE = 2  # faces are drawn at twice the size and reduced, for anti-aliased edges

# Skin tones from dark to light; an identity's tone is a random point on this line plus a tint.
_SKIN_RAMP = np.array(
    [
        [78, 52, 38],
        [128, 86, 60],
        [178, 128, 95],
        [214, 168, 134],
        [236, 198, 172],
        [248, 218, 200],
    ],
    dtype=np.float32,
)
_HAIR = np.array(
    [
        [22, 18, 17],
        [45, 32, 25],
        [78, 52, 34],
        [118, 82, 50],
        [196, 160, 104],
        [150, 68, 34],
        [150, 148, 145],
        [215, 212, 205],
    ],
    dtype=np.float32,
)
_HAIR_P = np.array([0.24, 0.22, 0.16, 0.12, 0.1, 0.06, 0.06, 0.04])
_IRIS = np.array(
    [[52, 32, 20], [95, 60, 32], [125, 100, 55], [70, 110, 70], [72, 110, 165], [115, 125, 135]],
    dtype=np.float32,
)
_IRIS_P = np.array([0.35, 0.25, 0.1, 0.1, 0.12, 0.08])


@dataclass(frozen=True)
class FaceIdentity:
    """What stays fixed across the frames of one identity; all lengths are fractions of the image."""

    face_w: float  # half width of the face
    face_h: float  # half height of the face
    jaw_taper: float  # how much the lower face narrows to the chin
    chin_pow: float
    skin: tuple[float, float, float]
    eye_dx: float  # eye centre offset from the face centre, in face half widths
    eye_y: float  # eye height, in face half heights (negative: above the centre)
    eye_w: float  # eye half width, in face half widths
    iris: tuple[float, float, float]
    brow_gap: float
    brow_arch: float
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    lip: tuple[float, float, float]
    hair_style: int  # 0 shaved, 1 short, 2 medium, 3 long
    hair: tuple[float, float, float]
    hairline: float
    fringe: float
    ear: float
    beard: bool
    glasses: bool
    clothes: tuple[float, float, float]
    bg_kind: int  # 0 linear gradient, 1 radial, 2 blotches, 3 stripes
    bg_a: tuple[float, float, float]
    bg_b: tuple[float, float, float]
    bg_seed: int


def random_identity(rng: np.random.Generator) -> FaceIdentity:
    """Draw the fixed appearance of one synthetic person."""
    t = rng.uniform(0, len(_SKIN_RAMP) - 1)
    i = min(int(t), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[i] + (t - i) * (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i])
    skin = np.clip(skin + rng.normal(0, 6, 3) + np.array([1, 0, -1]) * rng.normal(0, 6), 0, 255)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 8, 3)
    if rng.random() < 0.04:  # dyed
        hair = rng.uniform(30, 230, 3)
    lip = skin * np.array([0.82, 0.6, 0.6]) + np.array([30, 5, 8]) + rng.normal(0, 6, 3)
    bg_a = rng.uniform(10, 245, 3)
    bg_b = np.clip(bg_a + rng.normal(0, 60, 3), 0, 255)
    return FaceIdentity(
        face_w=rng.uniform(0.22, 0.28),
        face_h=rng.uniform(0.29, 0.35),
        jaw_taper=rng.uniform(0.12, 0.45),
        chin_pow=rng.uniform(1.5, 3.5),
        skin=tuple(skin),
        eye_dx=rng.uniform(0.36, 0.46),
        eye_y=rng.uniform(-0.16, -0.04),
        eye_w=rng.uniform(0.15, 0.21),
        iris=tuple(_IRIS[rng.choice(len(_IRIS), p=_IRIS_P)] + rng.normal(0, 6, 3)),
        brow_gap=rng.uniform(0.12, 0.2),
        brow_arch=rng.uniform(0.0, 0.08),
        brow_thick=rng.uniform(0.03, 0.07),
        nose_len=rng.uniform(0.18, 0.3),
        nose_w=rng.uniform(0.13, 0.22),
        mouth_y=rng.uniform(0.46, 0.6),
        mouth_w=rng.uniform(0.28, 0.42),
        lip_thick=rng.uniform(0.035, 0.075),
        lip=tuple(np.clip(lip, 0, 255)),
        hair_style=int(rng.choice(4, p=[0.12, 0.38, 0.25, 0.25])),
        hair=tuple(np.clip(hair, 0, 255)),
        hairline=rng.uniform(0.45, 0.75),
        fringe=rng.uniform(-0.3, 0.3),
        ear=rng.uniform(0.13, 0.2),
        beard=bool(rng.random() < 0.18),
        glasses=bool(rng.random() < 0.12),
        clothes=tuple(rng.uniform(15, 235, 3)),
        bg_kind=int(rng.integers(4)),
        bg_a=tuple(bg_a),
        bg_b=tuple(bg_b),
        bg_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------- drawing helpers


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _rgb(c: Any, k: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(v * k)))) for v in c)  # type: ignore[return-value]


def _background(ident: FaceIdentity, n: int, rng: np.random.Generator) -> np.ndarray:
    """An ``n x n x 3`` float background; fixed per identity up to a small per-frame drift."""
    brng = np.random.default_rng(ident.bg_seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    shift = rng.normal(0, 0.02, 2)
    xx, yy = xx + shift[0], yy + shift[1]
    if ident.bg_kind == 0:
        ang = brng.uniform(0, 2 * np.pi)
        t = 0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)
    elif ident.bg_kind == 1:
        c = brng.uniform(0.1, 0.9, 2)
        t = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2) * 1.3
    elif ident.bg_kind == 2:
        g = int(brng.integers(3, 7))
        grid = Image.fromarray(brng.random((g, g)).astype(np.float32))
        t = np.asarray(grid.resize((n, n), Image.BICUBIC))
    else:
        ang = brng.uniform(0, np.pi)
        freq = brng.uniform(4, 14)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(ang) + yy * np.sin(ang)))
    t = np.clip(t, 0, 1)[..., None]
    a, b = np.asarray(ident.bg_a, np.float32), np.asarray(ident.bg_b, np.float32)
    return a + t * (b - a)


@dataclass
class _Pose:
    cx: float
    cy: float
    scale: float
    rot: float  # radians
    ox: float  # rotation centre (face centre)
    oy: float

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        """Canonical fractions -> transformed fractions (rotation + scale about the face centre)."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        d = pts - (self.ox, self.oy)
        x = self.scale * (c * d[:, 0] - s * d[:, 1])
        y = self.scale * (s * d[:, 0] + c * d[:, 1])
        return np.stack([x + self.ox + self.cx, y + self.oy + self.cy], 1)


def render_face(
    rng: np.random.Generator, identity: FaceIdentity, size: int = 96
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one frame of ``identity``: an RGB ``uint8`` image and its face info.

    The face info holds ``landmarks`` (``(N, 2)`` float pixel x, y: jaw line, brows, eyes, nose,
    mouth) and ``face_mask`` (``size x size`` float32 in {0, 1}: the face skin area).
    """
    ident = identity
    n = size * _SUPERSAMPLE
    ox, oy = 0.5, 0.47
    pose = _Pose(
        cx=rng.normal(0, 0.025),
        cy=rng.normal(0, 0.025),
        scale=rng.uniform(0.92, 1.08),
        rot=math.radians(rng.normal(0, 5)),
        ox=ox,
        oy=oy,
    )
    smile = rng.uniform(-0.3, 1.0)
    mouth_open = rng.uniform(0, 0.6) if rng.random() < 0.35 else 0.0
    eye_open = 0.15 if rng.random() < 0.06 else rng.uniform(0.65, 1.1)
    brow_up = rng.normal(0, 0.03)
    look = rng.normal(0, 0.2, 2)

    fw, fh = ident.face_w, ident.face_h
    bg = np.clip(_background(ident, size, rng), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg).resize((n, n), Image.BILINEAR)
    draw = ImageDraw.Draw(img)

    def poly(pts: np.ndarray, fill: Any, target: ImageDraw.ImageDraw = draw) -> None:
        target.polygon([tuple(p) for p in pose(pts) * n], fill=fill)

    def line(pts: np.ndarray, fill: Any, width: float) -> None:
        draw.line([tuple(p) for p in pose(pts) * n], fill=fill, width=max(1, round(width * n)))

    skin = np.asarray(ident.skin)
    hair = _rgb(ident.hair)
    # Face outline: an ellipse whose lower half narrows into a jaw and chin.
    t = np.linspace(-np.pi, np.pi, 48, endpoint=False)
    ux, uy = np.cos(t), np.sin(t)
    ux = np.where(uy > 0, ux * (1 - ident.jaw_taper * np.abs(uy) ** ident.chin_pow), ux)
    face = np.stack([ox + fw * ux, oy + fh * uy], 1)

    head_top = _ellipse(ox, oy - 0.06 * fh, fw * 1.12, fh * 1.1, 40)
    if ident.hair_style >= 2:  # hair behind the head, down to the jaw or the shoulders
        drop = 1.0 if ident.hair_style == 2 else 1.9
        back = np.concatenate(
            [
                head_top[head_top[:, 1] < oy],
                [[ox + fw * 1.2, oy + fh * drop], [ox - fw * 1.2, oy + fh * drop]],
            ]
        )
        back = back[np.argsort(np.arctan2(back[:, 1] - oy, back[:, 0] - ox))]
        poly(back, hair)
    poly(_ellipse(ox, oy + fh + 0.36, fw * 2.3, 0.3, 40), _rgb(ident.clothes))
    neck = np.array(
        [
            [ox - 0.55 * fw, oy + 0.3 * fh],
            [ox + 0.55 * fw, oy + 0.3 * fh],
            [ox + 0.6 * fw, oy + fh + 0.12],
            [ox - 0.6 * fw, oy + fh + 0.12],
        ]
    )
    poly(neck, _rgb(skin, 0.82))
    for side in (-1, 1):
        poly(
            _ellipse(
                ox + side * fw * 0.98,
                oy + ident.eye_y * fh + 0.05,
                ident.ear * fw,
                ident.ear * fh * 1.6,
                16,
            ),
            _rgb(skin, 0.92),
        )
    poly(face, _rgb(skin))

    mouth_c = np.array([ox, oy + ident.mouth_y * fh])
    if ident.beard:
        low = face[face[:, 1] > oy + 0.1 * fh]
        low = low[np.argsort(low[:, 0])]
        top = np.array([[p[0], mouth_c[1] - 0.12 * fh] for p in low[::-1]])
        beard_mask = Image.new("L", (n, n), 0)
        poly(np.concatenate([low, top]), 150, ImageDraw.Draw(beard_mask))
        img.paste(hair, mask=beard_mask)

    # Eyes: almond sclera, iris clipped to it, upper lid line; brows above.
    eye_lm, brow_lm = [], []
    for side in (-1, 1):
        ec = np.array([ox + side * ident.eye_dx * fw, oy + ident.eye_y * fh])
        rx = ident.eye_w * fw
        xs = np.linspace(-1, 1, 11)
        up = np.stack([ec[0] + rx * xs, ec[1] - rx * 0.55 * eye_open * np.sqrt(1 - xs**2)], 1)
        lo = np.stack(
            [ec[0] + rx * xs, ec[1] + rx * 0.4 * max(eye_open, 0.2) * np.sqrt(1 - xs**2)], 1
        )
        eye = np.concatenate([up, lo[::-1]])
        eye_mask = Image.new("L", (n, n), 0)
        poly(eye, 255, ImageDraw.Draw(eye_mask))
        img.paste((236, 232, 226), mask=eye_mask)
        iris_mask = Image.new("L", (n, n), 0)
        ic = ec + look * rx * 0.35
        poly(_ellipse(ic[0], ic[1], rx * 0.48, rx * 0.48, 20), 255, ImageDraw.Draw(iris_mask))
        img.paste(_rgb(ident.iris), mask=ImageChops.multiply(eye_mask, iris_mask))
        pupil = Image.new("L", (n, n), 0)
        poly(_ellipse(ic[0], ic[1], rx * 0.2, rx * 0.2, 12), 255, ImageDraw.Draw(pupil))
        img.paste((12, 10, 10), mask=ImageChops.multiply(eye_mask, pupil))
        line(up, (30, 22, 20), 0.012)
        eye_lm += [up[0], up[3], up[7], up[-1], lo[4], lo[7]]

        bw = rx * 1.35
        bx = np.linspace(-1, 1, 9)
        by = ec[1] - (ident.brow_gap + brow_up) * fh - ident.brow_arch * fh * (1 - bx**2)
        bx = ec[0] + side * 0.1 * rx + bw * bx
        thick = ident.brow_thick * fh * (1.2 - 0.4 * side * np.linspace(-1, 1, 9))
        brow = np.concatenate(
            [np.stack([bx, by - thick / 2], 1), np.stack([bx, by + thick / 2], 1)[::-1]]
        )
        brow_col = np.asarray(ident.hair) * 0.6 + skin * 0.15
        poly(brow, _rgb(brow_col))
        brow_lm += list(np.stack([bx, by - thick / 2], 1)[::2])

    # Nose: a shaded side, a tip line and two nostrils.
    ny = oy + (ident.eye_y + 0.05) * fh
    tip = np.array([ox, ny + ident.nose_len * 1.6 * fh])
    nw = ident.nose_w * fw
    shade = np.array(
        [
            [ox + 0.08 * fw, ny],
            [ox + 0.16 * fw, ny],
            [tip[0] + nw, tip[1] - 0.02],
            [tip[0] + 0.2 * nw, tip[1] - 0.01],
        ]
    )
    poly(shade, _rgb(skin, 0.86))
    line(
        np.stack(
            [
                tip[0] + nw * np.linspace(-1, 1, 7),
                tip[1] + 0.02 * fh * (1 - np.linspace(-1, 1, 7) ** 2),
            ],
            1,
        ),
        _rgb(skin, 0.7),
        0.01,
    )
    for side in (-1, 1):
        poly(
            _ellipse(tip[0] + side * 0.5 * nw, tip[1] - 0.005, 0.22 * nw, 0.1 * nw, 10),
            _rgb(skin, 0.45),
        )

    # Mouth: lips whose corners rise with the smile; an open mouth shows a dark gap and teeth.
    mw = ident.mouth_w * fw
    xs = np.linspace(-1, 1, 13)
    corner_lift = smile * 0.07 * fh
    mid = mouth_c[1] - corner_lift * xs**2
    gap = mouth_open * 0.12 * fh
    upper_top = mid - ident.lip_thick * fh * (
        np.sqrt(1 - xs**2) + 0.25 * np.exp(-((xs / 0.15) ** 2))
    )
    lower_bot = mid + gap + ident.lip_thick * fh * 1.3 * np.sqrt(1 - xs**2)
    mx = mouth_c[0] + mw * xs
    lips = np.concatenate([np.stack([mx, upper_top], 1), np.stack([mx, lower_bot], 1)[::-1]])
    poly(lips, _rgb(ident.lip))
    if gap > 0:
        inner = np.concatenate(
            [
                np.stack([mx[1:-1], mid[1:-1]], 1),
                np.stack([mx[1:-1], mid[1:-1] + gap * np.sqrt(1 - xs[1:-1] ** 2)], 1)[::-1],
            ]
        )
        poly(inner, (45, 18, 20))
        teeth = np.concatenate(
            [
                np.stack([mx[2:-2], mid[2:-2]], 1),
                np.stack([mx[2:-2], mid[2:-2] + gap * 0.35], 1)[::-1],
            ]
        )
        poly(teeth, (225, 220, 205))
    else:
        line(np.stack([mx, mid], 1), _rgb(ident.lip, 0.55), 0.008)

    # Hair on top: the part of an enlarged head ellipse above a hairline, plus a few strands.
    if ident.hair_style > 0:
        hx = np.linspace(-1.15, 1.15, 25)
        hl = oy - ident.hairline * fh + 0.25 * fh * hx**2 + ident.fringe * 0.1 * fh * hx
        top = head_top[head_top[:, 1] < oy - 0.15 * fh]
        top = top[np.argsort(top[:, 0])]
        cap = np.concatenate([top, np.stack([ox + fw * hx, hl], 1)[::-1]])
        poly(cap, hair)
        for _ in range(12):  # strands: short lighter/darker strokes combed outwards
            u = rng.uniform(-0.9, 0.9)
            p0 = np.array([ox + fw * u, oy - fh * rng.uniform(0.75, 1.0)])
            p1 = p0 + (0.04 * u, rng.uniform(0.02, 0.05))
            line(np.stack([p0, p1]), _rgb(ident.hair, rng.uniform(0.75, 1.25)), 0.006)

    if ident.glasses:
        for side in (-1, 1):
            ec = (ox + side * ident.eye_dx * fw, oy + ident.eye_y * fh)
            ring = _ellipse(ec[0], ec[1], ident.eye_w * fw * 1.6, ident.eye_w * fw * 1.2, 24)
            line(np.concatenate([ring, ring[:1]]), (25, 25, 30), 0.012)
        line(
            np.array(
                [[ox - 0.2 * fw, oy + ident.eye_y * fh], [ox + 0.2 * fw, oy + ident.eye_y * fh]]
            ),
            (25, 25, 30),
            0.01,
        )

    img = img.resize((size, size), Image.BOX)
    jaw = face[uy >= -0.15]
    nose_lm = np.stack([tip + (0, 0), tip + (-nw, 0), tip + (nw, 0), (ox, ny)])
    mouth_lm = np.stack(
        [[mx[0], mid[0]], [mx[-1], mid[-1]], [mouth_c[0], upper_top[6]], [mouth_c[0], lower_bot[6]]]
    )
    landmarks = pose(np.concatenate([jaw, np.array(brow_lm), np.array(eye_lm), nose_lm, mouth_lm]))
    face_mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(face_mask).polygon([tuple(p) for p in pose(face) * size], fill=1)

    arr = _capture(np.asarray(img, np.float32), pose, fw, fh, rng)
    return arr, {
        "landmarks": (landmarks * size).astype(np.float32),
        "face_mask": np.asarray(face_mask, np.float32),
    }


def _capture(
    img: np.ndarray, pose: _Pose, fw: float, fh: float, rng: np.random.Generator
) -> np.ndarray:
    """Camera effects on a float image: shading, light direction, white balance, blur, noise."""
    size = img.shape[0]
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    # Round-face shading: darker towards the rim of the head ellipse.
    c, s = math.cos(-pose.rot), math.sin(-pose.rot)
    dx, dy = xx - pose.ox - pose.cx, yy - pose.oy - pose.cy
    ex = (c * dx - s * dy) / (pose.scale * fw)
    ey = (s * dx + c * dy) / (pose.scale * fh)
    r2 = np.minimum(ex**2 + ey**2, 1.3)
    shade = 1 - rng.uniform(0.08, 0.22) * (r2 / 1.3) ** 2
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.45) * ((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang))
    gain = rng.uniform(0.8, 1.15) * (1 + rng.normal(0, 0.05, 3))
    img = img * (shade * light)[..., None] * gain
    contrast = rng.uniform(0.85, 1.15)
    img = (img - 128) * contrast + 128
    img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(0.85, 1.15)
    # Fine skin/scene texture: a little low-amplitude multiplicative grain.
    img = img * (1 + rng.normal(0, 0.025, (size, size, 1)).astype(np.float32))
    if rng.random() < 0.25:
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8))), np.float32)
    img = img + rng.normal(0, rng.uniform(1.5, 5.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _split_identities(n: int, splits: tuple[float, ...], rng: np.random.Generator) -> list[str]:
    fr = np.asarray(splits, dtype=np.float64)
    if len(fr) != 3 or (fr < 0).any() or fr.sum() <= 0:
        raise DataError(
            "generate_dataset: splits must be three non-negative fractions (train, val, test)"
        )
    fr = fr / fr.sum()
    counts = np.floor(fr * n).astype(int)
    for i in np.argsort(-(fr * n - counts)):  # hand out the remainder by largest fraction
        if counts.sum() >= n:
            break
        counts[i] += 1
    for i in range(3):  # a wanted split gets at least one identity when there are enough
        if fr[i] > 0 and counts[i] == 0 and n >= int((fr > 0).sum()):
            counts[i] += 1
            counts[int(np.argmax(counts))] -= 1
    order = rng.permutation(n)
    names = np.repeat(np.array(SPLITS), counts)
    out = [""] * n
    for pos, idx in enumerate(order):
        out[idx] = str(names[pos])
    return out


def _make_identity(job: tuple[Any, ...]) -> dict[str, int]:
    out_dir, name, split, seq, frames, size, fmt, jpeg_p = job
    rng = np.random.default_rng(seq)
    ident = random_identity(rng)
    ext = "jpg" if fmt == "jpg" else "png"
    for k in range(frames):
        real, info = render_face(rng, ident, size)
        fake = self_blend(real, info, rng)
        for label, arr in (("real", real), ("fake", fake)):
            if rng.random() < jpeg_p:  # both classes, so compression alone says nothing
                arr = _jpeg(arr, int(rng.integers(70, 96)))
            path = Path(out_dir) / split / label / f"{name}_frame_{k:03d}.{ext}"
            if ext == "png":
                Image.fromarray(arr).save(path, format="PNG", compress_level=1)
            else:
                Image.fromarray(arr).save(path, format="JPEG", quality=95)
    return {"frames": frames}


_README = """Synthetic face-forgery dataset made by deepfake-detect (no real people).

Layout: {{train,val,test}}/{{real,fake}}/<identity>_frame_<k>.{ext}
- real: procedurally drawn faces; each identity is one "video" whose frames vary in pose,
  expression, lighting, white balance, blur, sensor noise and (p={jpeg_p}) JPEG compression.
- fake: each real frame self-blended (SBI-style): an altered copy (colour/HSV/brightness shift,
  then down-up resampling, blur or sharpening) blended back through a randomly deformed, blurred
  face mask scaled by a ratio in {ratios}. The fake of frame k has the same file name as its real.
- Identities are disjoint across splits: {counts}.
Generated with seed={seed}, size={size}px, {n_ids} identities x {frames} frames.
"""


def generate_dataset(
    out_dir: str | Path,
    n_identities: int = 200,
    images_per_identity: int = 10,
    size: int = 96,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    fmt: str = "png",
    progress: bool = True,
    workers: int | None = None,
    jpeg_p: float = 0.3,
) -> dict[str, Any]:
    """Write a synthetic real/fake face dataset to ``out_dir`` and return a summary.

    Files go to ``out_dir/{train,val,test}/{real,fake}/<identity>_frame_<k>.<ext>``; identities are
    disjoint across splits, and the same seed gives the same bytes whatever ``workers`` is.
    ``workers`` (None: up to 2 processes) parallelises over identities.
    """
    fmt = fmt.lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in ("png", "jpg"):
        raise DataError(f"generate_dataset: fmt must be 'png' or 'jpg', got {fmt!r}")
    if n_identities < 1 or images_per_identity < 1:
        raise DataError("generate_dataset: n_identities and images_per_identity must be >= 1")
    if size < 32:
        raise DataError(f"generate_dataset: size must be at least 32 px, got {size}")
    out = Path(out_dir)
    start = time.perf_counter()
    root = np.random.SeedSequence(seed)
    split_seq, *id_seqs = root.spawn(n_identities + 1)
    assign = _split_identities(n_identities, tuple(splits), np.random.default_rng(split_seq))
    width = max(4, len(str(n_identities - 1)))
    names = [f"id{i:0{width}d}" for i in range(n_identities)]
    for sp in SPLITS:
        for label in ("real", "fake"):
            (out / sp / label).mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(out), names[i], assign[i], id_seqs[i], images_per_identity, size, fmt, jpeg_p)
        for i in range(n_identities)
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, n_identities))
    done = 0
    step = max(1, n_identities // 10)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress and (done % step == 0 or done == n_identities):
            print(f"synthetic data: {done}/{n_identities} identities", file=sys.stderr, flush=True)

    if workers == 1 or n_identities < 8:
        for job in jobs:
            _make_identity(job)
            tick()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(
                _make_identity, jobs, chunksize=max(1, n_identities // (workers * 8))
            ):
                tick()
    counts = {
        sp: {
            "identities": assign.count(sp),
            "real": assign.count(sp) * images_per_identity,
            "fake": assign.count(sp) * images_per_identity,
        }
        for sp in SPLITS
    }
    ext = "jpg" if fmt == "jpg" else "png"
    (out / "README.txt").write_text(
        _README.format(
            ext=ext,
            jpeg_p=jpeg_p,
            ratios=list(BLEND_RATIOS),
            seed=seed,
            size=size,
            n_ids=n_identities,
            frames=images_per_identity,
            counts=", ".join(f"{sp} {c['identities']}" for sp, c in counts.items()),
        )
    )
    return {
        "out_dir": str(out),
        "size": size,
        "format": ext,
        "seed": seed,
        "identities": n_identities,
        "images_per_identity": images_per_identity,
        "splits": counts,
        "images": 2 * n_identities * images_per_identity,
        "seconds": round(time.perf_counter() - start, 2),
    }
