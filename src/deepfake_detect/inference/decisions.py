"""From scores to decisions: the one rule that turns P(fake) into a label.

Inference decides (predict, the ensembles' hard vote); evaluation counts the decisions with
the same rule, so the convention cannot drift between the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepfake_detect.errors import DataError

# DeepfakeBench counts a sample as fake when its score is strictly above 0.5.
DEFAULT_THRESHOLD = 0.5


def to_numpy(values: Any, name: str) -> np.ndarray:
    """A 1-D numpy view of a list, numpy array or torch tensor (torch is not imported here)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise DataError(f"{name} must be a sequence of values, got a scalar")
    if arr.ndim > 1:
        if arr.size != arr.shape[0]:
            raise DataError(f"{name} must be one-dimensional, got shape {arr.shape}")
        arr = arr.reshape(-1)
    return arr


def predict_labels(scores: Any, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Hard labels: 1 (fake) where score > threshold, else 0 (real).

    The strict '>' matches DeepfakeBench's ACC. Every place in the package that turns scores into
    classes goes through this function so the convention cannot drift.
    """
    return (to_numpy(scores, "scores").astype(np.float64) > threshold).astype(np.int64)
