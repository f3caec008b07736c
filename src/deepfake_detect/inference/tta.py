"""Test-time augmentation (TTA) and Monte-Carlo dropout for image and video detectors.

TTA views are applied to the already normalised ``(B, 3, H, W)`` batch on the device, so no
image is decoded twice. A batch of clips ``(B, T, 3, H, W)`` (sequence detectors such as
``dual_stream``) has its time axis folded into the batch for the view only, so that every
frame of a clip gets the same view (a flipped clip is every frame flipped) and the detector
still receives clips. The views (``--tta`` on ``evaluate`` and ``predict``):

* ``identity`` - the batch as it is; always part of every spec.
* ``hflip`` - left-right mirror.
* ``scale:S`` - resize by ``S`` (bilinear), then back to the input size: a centre crop when
  ``S > 1`` (zoom in), zero padding around it when ``S < 1`` (zoom out). Zero in a normalised
  batch is the normalisation mean colour, so the border is a flat mean-grey frame.
* ``five_crop[:F]`` - the four corner crops and the centre crop, each ``F`` (default 0.875) of
  the height and width, resized back to the input size; five views ``crop:tl:F`` ...
  ``crop:center:F``.
* ``default`` - identity + hflip.

The TTA score is the mean of P(fake) over the views (not of the logits), as the report states.

Monte-Carlo dropout turns only the dropout-like layers on (``nn.Dropout*``, timm ``DropPath``
and timm models that apply ``F.dropout`` themselves by their ``drop_rate``); normalisation
layers keep their running statistics. Each input gets the mean and the standard deviation
(unbiased, over the ``n`` passes) of P(fake).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepfake_detect.errors import ConfigError
from deepfake_detect.models.detector import Detector

ViewFn = Callable[[torch.Tensor], torch.Tensor]
Output = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_CROP_FRACTION = 0.875
CORNERS = ("tl", "tr", "bl", "br", "center")
VIEW_HELP = (
    "hflip, scale:S (e.g. scale:0.9, scale:1.1), five_crop or five_crop:F (4 corners + centre, "
    f"fraction F, default {DEFAULT_CROP_FRACTION}); 'default' = identity + hflip. The identity "
    "view is always included."
)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    # antialias keeps downscaling from aliasing; bilinear matches the training-time resize
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                         antialias=x.device.type in ("cpu", "cuda"))


def scale_view(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom by ``factor`` about the centre, keeping the input size (crop or zero-pad)."""
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    y = _resize(x, (nh, nw))
    if nh >= h and nw >= w:
        top, left = (nh - h) // 2, (nw - w) // 2
        return y[..., top : top + h, left : left + w]
    # zoom out: pad (left, right, top, bottom) up to the input size
    pl, pt = (w - nw) // 2, (h - nh) // 2
    return F.pad(y, (pl, w - nw - pl, pt, h - nh - pt))


def crop_view(x: torch.Tensor, where: str, fraction: float) -> torch.Tensor:
    """A ``fraction``-sized crop at a corner (``tl``, ``tr``, ``bl``, ``br``) or the
    ``center``, resized back to the input size."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top = {"tl": 0, "tr": 0, "bl": h - ch, "br": h - ch, "center": (h - ch) // 2}[where]
    left = {"tl": 0, "tr": w - cw, "bl": 0, "br": w - cw, "center": (w - cw) // 2}[where]
    return _resize(x[..., top : top + ch, left : left + cw], (h, w))


@dataclass(frozen=True)
class View:
    name: str
    apply: ViewFn


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _number(token: str, text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low < value <= high:
        raise ConfigError(f"--tta: {token!r}: {what} must be a number in ({low}, {high}]")
    return value


def apply_view(view: View, x: torch.Tensor) -> torch.Tensor:
    """``view`` applied to images ``(B, 3, H, W)`` or to every frame of clips ``(B, T, 3, H, W)``.

    The views are written for 4-D batches (bilinear resizing needs one); leading axes beyond
    the batch are folded into it and restored, so every frame of a clip gets the same view.
    """
    if x.ndim <= 4:
        return view.apply(x)
    lead = x.shape[:-3]
    return view.apply(x.reshape(-1, *x.shape[-3:])).reshape(*lead, *x.shape[-3:])


@dataclass(frozen=True)
class TTASpec:
    """The views of one TTA run, identity first; parse ``--tta`` text with :meth:`parse`."""

    views: tuple[View, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.views]

    def __len__(self) -> int:
        return len(self.views)

    @classmethod
    def parse(cls, text: str) -> "TTASpec":
        """``"hflip"``, ``"hflip,scale:0.9,scale:1.1"``, ``"hflip,five_crop:0.8"``, ``"default"``."""
        views: dict[str, View] = {"identity": View("identity", _identity)}
        tokens = [t.strip() for t in str(text).split(",") if t.strip()]
        if not tokens:
            raise ConfigError(f"--tta: empty spec; views: {VIEW_HELP}")
        for token in tokens:
            name, _, arg = token.lower().partition(":")
            if name in ("identity", "none") and not arg:
                continue
            if name in ("hflip", "default") and not arg:
                views["hflip"] = View("hflip", _hflip)
            elif name == "scale" and arg:
                s = _number(token, arg, 0.0, 4.0, "the scale")
                views[f"scale:{s:g}"] = View(f"scale:{s:g}", lambda x, s=s: scale_view(x, s))
            elif name == "five_crop":
                f = _number(token, arg, 0.0, 1.0, "the crop fraction") if arg else DEFAULT_CROP_FRACTION
                for where in CORNERS:
                    key = f"crop:{where}:{f:g}"
                    views[key] = View(key, lambda x, w=where, f=f: crop_view(x, w, f))
            else:
                raise ConfigError(f"--tta: unknown view {token!r}; views: {VIEW_HELP}")
        return cls(tuple(views.values()))


def parse_tta(text: str | TTASpec | None) -> TTASpec | None:
    """None or empty text: no TTA; a spec passes through."""
    if text is None or isinstance(text, TTASpec):
        return text
    return TTASpec.parse(text) if str(text).strip() else None


def _forward(detector: Detector, x: torch.Tensor, output: Output | None,
             max_batch: int | None) -> torch.Tensor:
    """``output(detector(x))`` (default P(fake)), in chunks of at most ``max_batch`` inputs."""
    step = max_batch or len(x)
    out = [(output or detector.probabilities)(detector(x[i : i + step]).float()).float()
           for i in range(0, len(x), step)]
    return torch.cat(out) if len(out) > 1 else out[0]


def tta_probabilities(
    detector: Detector,
    x: torch.Tensor,
    spec: TTASpec | str,
    output: Output | None = None,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Mean of P(fake) (or ``output`` of the logits) over the views of ``spec``, shape ``(B,)``.

    ``x``: images ``(B, 3, H, W)`` or clips ``(B, T, 3, H, W)`` (each view applied alike to
    every frame, :func:`apply_view`). The views are stacked along the batch for one forward
    pass, split into chunks of at most ``max_batch`` inputs so that memory stays that of a
    plain batch of that size.
    """
    spec = parse_tta(spec) or TTASpec.parse("identity")
    stacked = torch.cat([apply_view(v, x) for v in spec.views])
    values = _forward(detector, stacked, output, max_batch)
    return values.view(len(spec.views), len(x)).mean(dim=0)


def _functional_dropout(module: nn.Module) -> bool:
    # timm models (ResNet, EfficientNet, ...) apply F.dropout(p=self.drop_rate,
    # training=self.training) in forward_head without a Dropout module.
    rate = getattr(module, "drop_rate", None)
    return isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0


def dropout_modules(detector: nn.Module) -> list[nn.Module]:
    """The modules whose own ``training`` flag switches a random drop on (p > 0)."""
    from timm.layers import DropPath

    found = []
    for m in detector.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            found.append(m)
        elif isinstance(m, DropPath) and m.drop_prob > 0:
            found.append(m)
        elif _functional_dropout(m):
            found.append(m)
    return found


def check_mc_dropout(detector: nn.Module, n: int) -> None:
    """Fail early (:class:`ConfigError`) for fewer than 2 passes or a detector without dropout."""
    if n < 2:
        raise ConfigError(f"--mc-dropout {n}: needs at least 2 passes for a standard deviation")
    if not dropout_modules(detector):
        name = getattr(getattr(detector, "config", None), "name", type(detector).__name__)
        raise ConfigError(
            f"--mc-dropout: detector {name!r} has no dropout or drop-path layer with p > 0, so "
            "every pass would give the same score; train it with model.drop_rate (e.g. 0.2) "
            "or model.drop_path_rate, or leave out --mc-dropout"
        )


@contextlib.contextmanager
def dropout_on(detector: nn.Module) -> Iterator[list[nn.Module]]:
    """Only the dropout layers in train mode (just their own flag: the children of a timm
    model that drops by ``drop_rate`` stay in eval), every mode restored on exit."""
    check_mc_dropout(detector, 2)
    modules = dropout_modules(detector)
    before = {m: m.training for m in detector.modules()}
    try:
        for m in modules:
            m.training = True  # not m.train(): that would switch the BatchNorm children too
        yield modules
    finally:
        for m, mode in before.items():
            m.training = mode


def _seeded(seed: int | None, device: torch.device):
    if seed is None:
        return contextlib.nullcontext()
    # fork_rng leaves the caller's generator as it was; cuda generators only where used
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)

    @contextlib.contextmanager
    def run():
        with ctx:
            torch.manual_seed(seed)
            yield

    return run()


def mc_dropout_passes(
    detector: Detector,
    x: torch.Tensor,
    n: int,
    spec: TTASpec | str | None = None,
    output: Output | None = None,
    max_batch: int | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    """P(fake) of every pass with dropout on, shape ``(n, B)``, for ``x`` images or clips.

    The per-pass values are what a caller needs to aggregate several inputs into one score per
    pass before taking a spread (a video's clips, a file's faces). With ``spec`` each pass is
    the TTA mean over its views. ``seed`` (default 0) seeds ``torch.manual_seed`` inside
    ``torch.random.fork_rng``: the same inputs in the same batches give the same scores, and
    the caller's random state is left as it was; ``None`` draws from the current generator.
    Raises :class:`ConfigError` when the detector has no dropout or ``n`` < 2.
    """
    check_mc_dropout(detector, n)
    spec = parse_tta(spec)
    with dropout_on(detector), _seeded(seed, x.device):
        passes = []
        for _ in range(n):
            if spec is None:
                passes.append(_forward(detector, x, output, max_batch))
            else:
                passes.append(tta_probabilities(detector, x, spec, output, max_batch))
    return torch.stack(passes)


def mc_dropout_probabilities(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of P(fake) over the passes of :func:`mc_dropout_passes` (same
    arguments), each ``(B,)``; the std is unbiased (over the passes)."""
    stack = mc_dropout_passes(*args, **kwargs)
    return stack.mean(dim=0), stack.std(dim=0, unbiased=True)


__all__ = [
    "VIEW_HELP", "TTASpec", "View", "apply_view", "check_mc_dropout", "crop_view",
    "dropout_modules", "dropout_on", "mc_dropout_passes", "mc_dropout_probabilities", "parse_tta",
    "scale_view", "tta_probabilities",
]
