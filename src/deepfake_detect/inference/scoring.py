"""Batch scoring of image files with a detector: the loop behind evaluate and predict."""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepfake_detect.data.datasets import FaceImageDataset, collate_skipping
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.tta import (
    TTASpec,
    check_mc_dropout,
    mc_dropout_probabilities,
    parse_tta,
    tta_probabilities,
)
from deepfake_detect.models.detector import Detector


@dataclass
class Scores:
    """P(fake) per input (NaN where the file could not be read) and the reason for each failure.

    ``std``: with Monte-Carlo dropout, the standard deviation of P(fake) over the passes per
    input (NaN where not computed); None without it.

    ``var``: for a detector with a variance head (``model.uncertainty``), the predicted variance
    of the fake logit per input (aleatoric uncertainty; NaN where the file could not be read);
    None for other detectors and with TTA or Monte-Carlo dropout (see :func:`score_files`).
    """

    scores: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    std: np.ndarray | None = None
    var: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.scores)


DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"


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


MAX_BATCH_SIZE = 65536  # far beyond any accelerator's memory for images; larger is a typo


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


def autocast_for(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.inference_mode()
def score_files(
    detector: Detector,
    paths: Sequence[str | Path] | Sequence[Sample],
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "scoring",
    output: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tta: TTASpec | str | None = None,
    mc_dropout: int = 0,
    seed: int = 0,
) -> Scores:
    """Score image files in order; unreadable files get NaN and an error, the rest go on.

    ``output`` maps a batch of logits to the per-sample value kept (default P(fake)).
    ``tta``: the mean over test-time views (:mod:`deepfake_detect.inference.tta`);
    ``mc_dropout`` >= 2: the mean over that many passes with dropout on, and ``Scores.std``;
    ``seed`` seeds those passes (each batch with ``seed`` + the index of its first input, so
    scores are reproducible for the same inputs and batch size).

    A detector with a variance head also gives ``Scores.var``, the predicted variance of the
    logit the scores come from: with the default ``output`` that is the calibrated logit
    ``z / T``, so ``exp(log_var) / T**2`` (``T``: the detector's temperature); with a custom
    ``output``, which receives raw logits, the raw ``exp(log_var)``. With ``tta`` or
    ``mc_dropout`` it stays None: the variance belongs to one deterministic pass over the
    un-augmented input, and averaging it over views or dropout masks would mix it with the
    spread those already measure (``Scores.std``).
    """
    from rich.console import Console
    from rich.progress import Progress

    samples = [
        p if isinstance(p, Sample) else Sample(path=Path(p), label=-1, video=str(p)) for p in paths
    ]
    device = check_loader_options(batch_size, num_workers, device)
    detector = detector.to(device).eval()
    if device.type == "cuda":
        detector = detector.to(memory_format=torch.channels_last)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        FaceImageDataset(samples, build_transform(detector.preprocessing())),
        batch_size=batch_size,
        shuffle=False,
        num_workers=min(workers, max(1, len(samples) // batch_size)) if workers else 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skipping,
    )
    scores = np.full(len(samples), np.nan, dtype=np.float64)
    errors: dict[int, str] = {}
    std = np.full(len(samples), np.nan, dtype=np.float64) if mc_dropout else None
    spec = parse_tta(tta)
    with_variance = detector.predicts_variance and spec is None and not mc_dropout
    var = np.full(len(samples), np.nan, dtype=np.float64) if with_variance else None
    # The temperature divides the logit behind the default scores, so its variance by T².
    var_scale = 1.0 if output is not None else 1.0 / float(detector.temperature) ** 2
    if mc_dropout:
        check_mc_dropout(detector, mc_dropout)  # before any file is read
    path_index = {str(s.path): i for i, s in enumerate(samples)}
    # on stderr: predict may be writing its CSV to stdout
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(samples))
        for batch in loader:
            for path, reason in batch["skipped"]:
                errors[path_index[path]] = reason
            if batch["image"] is not None:
                x = batch["image"].to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                index = batch["index"].numpy()
                with autocast_for(device):
                    if mc_dropout:
                        values, spread = mc_dropout_probabilities(
                            detector, x, mc_dropout, spec, output, max_batch=batch_size,
                            seed=seed + int(index[0]),
                        )
                        std[index] = spread.float().cpu().numpy()
                    elif spec is not None:
                        values = tta_probabilities(detector, x, spec, output, max_batch=batch_size)
                    elif with_variance:
                        logits, log_var = detector.forward_with_variance(x)
                        values = (output or detector.probabilities)(logits.float())
                        var[index] = (log_var.float().exp() * var_scale).cpu().numpy()
                    else:
                        logits = detector(x)
                        values = (output or detector.probabilities)(logits.float())
                scores[index] = values.float().cpu().numpy()
            bar.advance(task, len(batch["skipped"]) + (0 if batch["image"] is None else len(batch["label"])))
    return Scores(scores=scores, errors=errors, std=std, var=var)
