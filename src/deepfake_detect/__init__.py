"""deepfake-detect: fine-tune, evaluate and run real/fake face-forgery classifiers."""

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "LoadedModel", "ScoringOptions", "__version__", "build_detector", "load_checkpoint",
    "load_detector", "load_predictor",
]
_INFERENCE = {
    "LoadedModel": "deepfake_detect.inference.predictor",
    "ScoringOptions": "deepfake_detect.inference.options",
    "load_predictor": "deepfake_detect.inference.ensemble",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import deepfake_detect` (e.g. for the version) does not import torch.
    if name in ("build_detector", "load_checkpoint", "load_detector"):
        from deepfake_detect import models

        return getattr(models, name)
    if name in _INFERENCE:
        import importlib

        return getattr(importlib.import_module(_INFERENCE[name]), name)
    raise AttributeError(f"module 'deepfake_detect' has no attribute {name!r}")
