"""A PNG grid of augmented training samples: what the model sees during training.

Each row is one training image: first as evaluation sees it (resized only), then ``views``
independent draws of the experiment's ``data.augment`` pipeline. The model-space tensors are
de-normalised with the detector's mean and std for display, so random erasing (which works
after normalisation) shows as clipped noise. Used by ``deepfake-detect augment-preview``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from deepfake_detect.config.schema import ExperimentConfig
from deepfake_detect.data.images import load_rgb
from deepfake_detect.data.samples import Sample
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.errors import ConfigError, DataError, DeepfakeDetectError

log = logging.getLogger(__name__)

PAD = 4  # pixels between cells and around the grid
HEADER = 16  # height of the column-title strip
MIN_CELL = 96  # small input sizes are enlarged (nearest) so that artefacts stay visible
BACKGROUND = (255, 255, 255)


@dataclass
class PreviewReport:
    """What :func:`augment_preview` wrote."""

    path: Path
    images: list[Path]  # the training images shown, one per row
    views: int
    cell: int  # side of one cell in pixels
    size: tuple[int, int]  # (width, height) of the PNG


def preview_preprocessing(config: ExperimentConfig) -> dict[str, Any]:
    """The detector's ``input_size``/``mean``/``std``: from ``model`` when all three are set
    there, else from the detector built without its whole-detector weights (never needed for
    the input format, and possibly large)."""
    from deepfake_detect.models.registry import build_detector, validate_model_config

    model = validate_model_config(config.model)
    if model.input_size is not None and model.mean is not None and model.std is not None:
        return {"input_size": model.input_size, "mean": list(model.mean), "std": list(model.std)}
    detector = build_detector(model.model_copy(update={"weights": None}))
    pre = detector.preprocessing()
    return {k: pre[k] for k in ("input_size", "mean", "std")}


def training_images(
    config: ExperimentConfig, paths: Sequence[str | Path] | None = None
) -> list[Sample]:
    """The training split of ``paths`` (default ``data.path``), split as training splits it.

    Falls back to every sample when there is no training split (e.g. a folder of test data),
    since a preview only needs images.
    """
    from deepfake_detect.data.dataset_videos import gather_samples
    from deepfake_detect.data.splits import assign_splits

    paths = list(paths) if paths else list(config.data.path)
    if not paths:
        raise DataError(
            "data.path is empty: give a dataset folder or CSV in the config, or --data PATH"
        )
    gathered = gather_samples(
        paths, videos=config.data.videos, prepare=config.prepare,
        faces_cache=config.data.faces_cache, cache_root=config.output_dir, progress=False,
    )
    if not gathered.samples:
        raise DataError(f"no images found in {', '.join(str(p) for p in paths)}")
    d = config.data
    samples = assign_splits(gathered.samples, d.val_fraction, d.test_fraction, d.split_seed)
    train = [s for s in samples if s.split == "train"]
    return train or samples


MAX_SAMPLES = 256  # rows of the grid
MAX_VIEWS = 64  # augmented columns beside the original


def augment_preview(
    config: ExperimentConfig,
    out: str | Path,
    *,
    samples: int = 8,
    views: int = 4,
    seed: int = 0,
    data: Sequence[str | Path] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> PreviewReport:
    """Write a PNG grid of ``samples`` training images (rows, chosen with ``seed``), each shown
    un-augmented and in ``views`` augmented versions (columns). Same seed, same PNG.

    ``data`` replaces ``data.path``; ``preprocessing`` (``input_size``, ``mean``, ``std``)
    skips building the detector to learn them.
    """
    if samples < 1 or views < 1:
        raise ConfigError(f"--samples {samples} and --views {views} must be at least 1")
    if samples > MAX_SAMPLES or views > MAX_VIEWS:  # the grid would be an unbounded image
        raise ConfigError(f"--samples {samples} / --views {views}: at most {MAX_SAMPLES} samples "
                          f"and {MAX_VIEWS} views fit in one preview")
    pre = dict(preprocessing) if preprocessing is not None else preview_preprocessing(config)
    plain = build_transform(pre, None)
    augmented = build_transform(pre, config.data.augment)
    pool = training_images(config, data)
    rng = random.Random(seed)
    order = rng.sample(pool, len(pool))  # a seeded shuffle; unreadable files are passed over

    size = int(pre["input_size"])
    cell = size * math.ceil(MIN_CELL / size) if size < MIN_CELL else size
    mean = torch.tensor(pre["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre["std"], dtype=torch.float32).view(3, 1, 1)

    def show(x: torch.Tensor) -> Image.Image:
        rgb = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        img = Image.fromarray(rgb.permute(1, 2, 0).numpy())
        return img if cell == size else img.resize((cell, cell), Image.Resampling.NEAREST)

    torch.manual_seed(seed)
    rows: list[tuple[Path, list[Image.Image]]] = []
    for sample in order:
        if len(rows) == samples:
            break
        try:
            im = load_rgb(sample.path)
        except DeepfakeDetectError as exc:
            log.warning("augment-preview: skipped %s: %s", sample.path, exc)
            continue
        rows.append((sample.path, [show(plain(im))] + [show(augmented(im)) for _ in range(views)]))
    if not rows:
        raise DataError("augment-preview: none of the training images could be read")

    cols = views + 1
    width = cols * cell + (cols + 1) * PAD
    height = HEADER + len(rows) * cell + (len(rows) + 1) * PAD
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for c in range(cols):
        title = "original" if c == 0 else f"view {c}"
        draw.text((PAD + c * (cell + PAD), 2), title, fill=(0, 0, 0))
    for r, (_, cells) in enumerate(rows):
        for c, img in enumerate(cells):
            grid.paste(img, (PAD + c * (cell + PAD), HEADER + PAD + r * (cell + PAD)))
    from PIL.PngImagePlugin import PngInfo

    from deepfake_detect.outputs import PNG_SOFTWARE, atomic_target

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)  # marks the file as ours: a rerun may replace it
    out = Path(out)
    with atomic_target(out) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)
    return PreviewReport(
        path=out, images=[p for p, _ in rows], views=views, cell=cell, size=(width, height)
    )
