"""How inputs are scored, given once: :class:`ScoringOptions` (batch size, loader workers,
device, precision, test-time augmentation, Monte-Carlo dropout, seed, progress).

Every option is checked when the object is made, before any model is loaded or file read; a
bad value raises a one-line :class:`~deepfake_detect.errors.ConfigError` naming the option.
What depends on the model too (Monte-Carlo dropout needs dropout layers; an ensemble refuses
it) is checked by the predictor (:meth:`~deepfake_detect.inference.predictor.Predictor.check`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import Any

import torch

from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.tta import TTASpec, parse_tta

DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"
MAX_BATCH_SIZE = 65536  # far beyond any accelerator's memory for images; larger is a typo
# auto: bf16 (or fp16) autocast on CUDA, full precision elsewhere; 32: full precision always;
# bf16 / 16: that autocast dtype (16 on CUDA only).
PRECISIONS = ("auto", "32", "bf16", "16")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``--device`` as a torch device ("auto": CUDA, else MPS, else the CPU); a name that is
    not a device, or a device this machine lacks, raises :class:`ConfigError`."""
    if isinstance(device, torch.device):
        return device
    if device and device != "auto":
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"--device {device!r} is not a device; {DEVICE_HELP}") from None
        if resolved.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"--device {device!r}: CUDA is not available here; use auto or cpu")
            if resolved.index is not None and resolved.index >= torch.cuda.device_count():
                raise ConfigError(f"--device {device!r}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
        elif resolved.type == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ConfigError(
                    f"--device {device!r}: MPS is not available here; use auto or cpu")
        elif resolved.type != "cpu":
            raise ConfigError(f"--device {device!r}: not supported; {DEVICE_HELP}")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def check_loader_options(
    batch_size: int, num_workers: int | None = None, device: str | torch.device | None = None
) -> torch.device:
    """Refuse a bad ``--batch-size``, ``--workers`` or ``--device`` (:class:`ConfigError`)
    before any model is moved or file read; returns the device."""
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or not 1 <= batch_size <= MAX_BATCH_SIZE):
        raise ConfigError(f"--batch-size {batch_size}: must be a whole number from 1 to "
                          f"{MAX_BATCH_SIZE}, e.g. 32")
    if num_workers is not None and (isinstance(num_workers, bool)
                                    or not isinstance(num_workers, numbers.Integral)
                                    or num_workers < 0):
        raise ConfigError(f"--workers {num_workers}: must be 0 (load in this process) or more")
    return pick_device(device)


def autocast_for(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` on ``device`` (see :data:`PRECISIONS`)."""
    if precision == "32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16":
        return torch.autocast(device.type, dtype=torch.float16)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class ScoringOptions:
    """How inputs are scored, checked once when made (see the module docstring).

    ``device``: a name (``auto``, ``cpu``, ``cuda:1``...) or a torch device, stored resolved.
    ``tta``: a view spec (``--tta`` text or a :class:`TTASpec`), stored parsed (None: none).
    ``mc_dropout``: 0 (off) or the number of passes with dropout on, 2 or more. ``seed`` seeds
    those passes (each batch with ``seed`` + the index of its first input). ``num_workers``
    None: as many loader workers as CPUs, at most 8.
    """

    batch_size: int = 64
    num_workers: int | None = None
    device: Any = "auto"
    precision: str = "auto"
    tta: Any = None
    mc_dropout: int = 0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        device = check_loader_options(self.batch_size, self.num_workers, self.device)
        object.__setattr__(self, "device", device)
        precision = str(self.precision)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if precision == "16" and device.type != "cuda":
            raise ConfigError(f"precision 16 needs a CUDA device (this is {device}); use bf16 or 32")
        if precision == "bf16" and device.type not in ("cuda", "cpu"):
            raise ConfigError(f"precision bf16 runs on CUDA or the CPU (this is {device}); use 32")
        object.__setattr__(self, "precision", precision)
        # whether the caller chose the views (an empty spec included): evaluate falls back to
        # the recipe's eval.tta only when not
        object.__setattr__(self, "_tta_given", self.tta is not None)
        object.__setattr__(self, "tta", parse_tta(self.tta))
        n = self.mc_dropout
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ConfigError(f"--mc-dropout {n}: must be 0 (off) or a number of passes >= 2")
        if n == 1:
            raise ConfigError(f"--mc-dropout {n}: needs at least 2 passes for a standard deviation")
        object.__setattr__(self, "mc_dropout", int(n))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ConfigError(f"seed {self.seed!r}: must be a whole number")

    @property
    def workers(self) -> int:
        """Loader worker processes (0: load in this process)."""
        return default_workers() if self.num_workers is None else int(self.num_workers)

    @property
    def tta_given(self) -> bool:
        return bool(getattr(self, "_tta_given", self.tta is not None))

    def autocast(self):
        """The autocast context the forward passes run in."""
        return autocast_for(self.device, self.precision)

    def replace(self, **changes: Any) -> ScoringOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def with_default_tta(self, spec: TTASpec | str | None) -> ScoringOptions:
        """These options, with ``spec`` as the views unless the caller chose views."""
        return self if self.tta_given or spec is None else self.replace(tta=spec)

    def describe(self) -> dict[str, Any]:
        """What metrics.json records: the view names and the number of dropout passes."""
        return {"tta": self.tta.names if self.tta else None, "mc_dropout": self.mc_dropout}


__all__ = [
    "DEVICE_HELP", "MAX_BATCH_SIZE", "PRECISIONS", "ScoringOptions", "autocast_for",
    "check_loader_options", "default_workers", "pick_device",
]
