"""Perturbations for robustness sweeps: the degradations an uploaded face crop goes through
(re-compression, blur, down-scaling, sensor noise, contrast and brightness changes), each at
several severities, applied to the decoded crop before the checkpoint's preprocessing.

A perturbation is given as text, ``kind:severity,severity,...`` (``--perturb`` on ``evaluate``
and ``benchmark``, ``eval.perturb`` in a config):

* ``jpeg:Q`` - re-encode as JPEG at quality ``Q`` (a whole number 1-100; lower is stronger);
* ``blur:S`` - Gaussian blur of standard deviation ``S`` pixels (> 0);
* ``resize:F`` - scale by ``F`` in (0, 1], then back up to the original size (lost detail);
* ``noise:S`` - additive Gaussian noise of standard deviation ``S`` x 255 (``S`` in [0, 1]),
  drawn from a fixed seed and the sample's index, so that a rerun sees the same noise;
* ``contrast:C`` - contrast scaled by ``C`` (> 0) around the image's mean grey (PIL);
* ``brightness:B`` - brightness scaled by ``B`` (> 0) (PIL).

The clean image is severity 0 of every perturbation, and it never goes through this module: a
sweep scores it as view 0, exactly as a plain evaluation does. A value that changes nothing
(``blur:0``, ``noise:0``, ``resize:1``, ``contrast:1``, ``brightness:1``) therefore names the
clean image and is dropped from the severities; a spec with nothing else is refused.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from deepfake_detect.errors import ConfigError

# Noise is drawn from (NOISE_SEED, sample index): the same image gets the same noise in every
# run and at every severity (only its amplitude changes), so the curve shows the amplitude.
NOISE_SEED = 20240917


@dataclass(frozen=True)
class _Kind:
    what: str  # the severity's meaning, for messages and plot axes
    low: float
    high: float
    low_open: bool  # whether ``low`` itself is out of range
    identity: float | None  # the value that changes nothing (None: every value perturbs)
    integer: bool = False
    weaker_is_higher: bool = False  # jpeg quality, resize factor: a lower value is stronger


KINDS: dict[str, _Kind] = {
    "jpeg": _Kind("JPEG quality", 1, 100, False, None, integer=True, weaker_is_higher=True),
    "blur": _Kind("Gaussian blur sigma (pixels)", 0, 100, True, 0.0),
    "resize": _Kind("down-up resize factor", 0, 1, True, 1.0, weaker_is_higher=True),
    "noise": _Kind("Gaussian noise std (fraction of 255)", 0, 1, False, 0.0),
    "contrast": _Kind("contrast factor", 0, 100, True, 1.0),
    "brightness": _Kind("brightness factor", 0, 100, True, 1.0),
}
EXAMPLE = "jpeg:90,70,50,30"
HELP = ("give kind:severity,... e.g. jpeg:90,70,50,30, blur:1,2,3, resize:0.75,0.5,0.25, "
        "noise:0.02,0.05, contrast:0.5, brightness:1.5")


def _range_text(kind: _Kind) -> str:
    if kind.integer:
        return f"a whole number from {kind.low:g} to {kind.high:g}"
    left = "(" if kind.low_open else "["
    return f"a number in {left}{kind.low:g}, {kind.high:g}]"


@dataclass(frozen=True)
class Perturbation:
    """One kind of perturbation and its severities, in the order given (the clean image,
    severity 0, is not among them). Parse text with :meth:`parse`."""

    kind: str
    severities: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> Perturbation:
        """``"jpeg:90,70,50,30"`` -> ``Perturbation("jpeg", (90, 70, 50, 30))``; a bad kind, a
        missing or bad severity, or a value out of range raises a one-line ConfigError."""
        if not isinstance(text, str):
            raise ConfigError(f"perturbation {text!r}: {HELP}")
        name, colon, values = text.strip().partition(":")
        name = name.strip().lower()
        if name not in KINDS:
            close = difflib.get_close_matches(name, KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"perturbation {text!r}: unknown kind {name!r}; {hint}kinds: "
                              f"{', '.join(KINDS)} ({HELP})")
        kind = KINDS[name]
        tokens = [t.strip() for t in values.split(",")]
        if not colon or not any(tokens):
            raise ConfigError(f"perturbation {text!r}: no severity; give {name}:<{kind.what}>,... "
                              f"each {_range_text(kind)}")
        severities: list[float] = []
        for token in tokens:
            if not token:
                raise ConfigError(f"perturbation {text!r}: an empty severity between commas")
            value = _severity(text, token, kind)
            if kind.identity is not None and value == kind.identity:
                continue  # the clean image: always scored as severity 0
            if value in severities:
                raise ConfigError(f"perturbation {text!r}: severity {token} is given twice")
            severities.append(value)
        if not severities:
            raise ConfigError(
                f"perturbation {text!r}: {kind.identity:g} leaves the image as it is (the clean "
                f"image is always scored, as severity 0); give a severity that perturbs it")
        return cls(name, tuple(severities))

    @property
    def text(self) -> str:
        """The spec as text (what :meth:`parse` reads back)."""
        return f"{self.kind}:{','.join(format_severity(s) for s in self.severities)}"

    @property
    def what(self) -> str:
        """What a severity of this kind means (an axis label)."""
        return KINDS[self.kind].what

    def views(self, seed: int = NOISE_SEED) -> list[PerturbView]:
        """One view per severity, in order."""
        return [PerturbView(self.kind, s, seed) for s in self.severities]


def _severity(text: str, token: str, kind: _Kind) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    bad = (not math.isfinite(value) or value > kind.high
           or (value <= kind.low if kind.low_open else value < kind.low)
           or (kind.integer and not value.is_integer()))
    if bad and not (kind.identity is not None and value == kind.identity):
        raise ConfigError(f"perturbation {text!r}: severity {token!r}: the {kind.what} must be "
                          f"{_range_text(kind)}")
    return int(value) if kind.integer else value


def format_severity(value: float) -> str:
    return f"{value:g}"


def parse_perturbations(specs: Iterable[str | Perturbation] | str | None) -> list[Perturbation]:
    """``--perturb`` values (texts or parsed) as perturbations; each kind at most once."""
    if specs is None:
        return []
    if isinstance(specs, (str, Perturbation)):
        specs = [specs]
    out: list[Perturbation] = []
    for spec in specs:
        p = spec if isinstance(spec, Perturbation) else Perturbation.parse(spec)
        earlier = next((q for q in out if q.kind == p.kind), None)
        if earlier is not None:
            merged = Perturbation(p.kind, earlier.severities + p.severities).text
            raise ConfigError(f"perturbation {p.text!r}: {p.kind} is given twice; list all its "
                              f"severities in one, e.g. {merged}")
        out.append(p)
    return out


def strength(kind: str, severity: float) -> float:
    """How strong ``severity`` is for ``kind`` (0: the clean image; larger: stronger), so that
    curves run from clean to strongest whatever the kind's scale."""
    if severity == 0:
        return 0.0
    if kind == "jpeg":
        return 101.0 - severity
    if kind == "resize":
        return 1.0 / severity
    if kind in ("contrast", "brightness"):
        return abs(math.log(severity))
    return float(severity)


# -- applying one (kind, severity) ------------------------------------------------------------


def _jpeg(image: Image.Image, quality: float) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as im:
        return im.convert("RGB")


def _blur(image: Image.Image, sigma: float) -> Image.Image:
    import cv2

    # kernel size from sigma (ksize 0): cv2 covers +-3-4 sigma, an exact Gaussian, unlike
    # PIL's box-blur approximation
    out = cv2.GaussianBlur(np.asarray(image), (0, 0), sigmaX=sigma, sigmaY=sigma,
                           borderType=cv2.BORDER_REFLECT_101)
    return Image.fromarray(out, "RGB")


def _resize(image: Image.Image, factor: float) -> Image.Image:
    import cv2

    w, h = image.size
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    # area averaging down (what image pipelines do when shrinking), bilinear back up
    down = cv2.resize(np.asarray(image), small, interpolation=cv2.INTER_AREA)
    up = cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(up, "RGB")


@functools.lru_cache(maxsize=2)
def _noise_pattern(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of ``shape`` for sample ``index``, read-only. Kept for the next
    call: a sweep's severities of one image share the pattern (drawing it is most of the cost
    of a noise view; torch's generator draws normals several times faster than numpy's)."""
    import torch

    # one 63-bit seed from (seed, index), so that neighbouring indices get unrelated streams
    state = int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint64)[0]) >> 1
    pattern = torch.randn(shape, generator=torch.Generator().manual_seed(state)).numpy()
    pattern.flags.writeable = False
    return pattern


def _noise(image: Image.Image, std: float, index: int, seed: int) -> Image.Image:
    arr = np.asarray(image, dtype=np.float32)
    noisy = arr + _noise_pattern(seed, index, arr.shape) * np.float32(std * 255.0)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def perturb_image(image: Image.Image, kind: str, severity: float, index: int = 0,
                  seed: int = NOISE_SEED) -> Image.Image:
    """``image`` (PIL RGB) under ``kind`` at ``severity``, as a new RGB image, deterministically
    (the noise from ``seed`` and the sample ``index``). A value that changes nothing returns
    ``image`` itself."""
    spec = KINDS.get(kind)
    if spec is None:
        raise ConfigError(f"perturbation kind {kind!r}: choose one of {', '.join(KINDS)}")
    if spec.identity is not None and severity == spec.identity:
        return image
    if image.mode != "RGB":
        image = image.convert("RGB")
    if kind == "jpeg":
        return _jpeg(image, severity)
    if kind == "blur":
        return _blur(image, severity)
    if kind == "resize":
        return _resize(image, severity)
    if kind == "noise":
        return _noise(image, severity, index, seed)
    if kind == "contrast":
        return ImageEnhance.Contrast(image).enhance(severity)
    return ImageEnhance.Brightness(image).enhance(severity)


@dataclass(frozen=True)
class PerturbView:
    """One (kind, severity) as a view of a decoded image for
    :class:`~deepfake_detect.data.datasets.FaceImageDataset`: ``view(image, index)``. A plain
    frozen dataclass, so it pickles for DataLoader worker processes."""

    kind: str
    severity: float
    seed: int = NOISE_SEED

    # FaceImageDataset passes the sample's index to views that declare this (seeded noise)
    takes_index = True

    @property
    def name(self) -> str:
        return f"{self.kind}:{format_severity(self.severity)}"

    def __call__(self, image: Image.Image, index: int = 0) -> Image.Image:
        return perturb_image(image, self.kind, self.severity, index, self.seed)


def sweep_views(perturbations: Sequence[Perturbation], seed: int = NOISE_SEED) -> list[PerturbView]:
    """Every (kind, severity) of ``perturbations`` as one view each, in order."""
    return [v for p in perturbations for v in p.views(seed)]


__all__ = [
    "EXAMPLE", "KINDS", "NOISE_SEED", "PerturbView", "Perturbation", "format_severity",
    "parse_perturbations", "perturb_image", "strength", "sweep_views",
]
