"""Data layer: find labelled face images, split them by video, load and batch them.

Names are imported lazily so that e.g. ``discover`` can be used without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Sample": "samples",
    "REAL": "samples",
    "FAKE": "samples",
    "CLASS_NAMES": "samples",
    "parse_label": "labels",
    "parse_split": "labels",
    "SPLIT_NAMES": "labels",
    "IMAGE_EXTENSIONS": "sources",
    "Discovery": "sources",
    "discover": "sources",
    "scan": "sources",
    "describe_layout": "sources",
    "assign_splits": "splits",
    "check_splits": "splits",
    "class_counts": "splits",
    "ImageLoadError": "images",
    "load_rgb": "images",
    "verify_images": "images",
    "build_transform": "transforms",
    "FaceImageDataset": "datasets",
    "collate_skipping": "datasets",
    "FaceDataModule": "datamodule",
    "build_eval_samples": "datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
