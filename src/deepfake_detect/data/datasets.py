"""A torch Dataset over samples that reports unreadable images instead of raising."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from deepfake_detect.data.images import ImageLoadError, load_rgb
from deepfake_detect.data.samples import Sample


class FaceImageDataset(Dataset):
    """``dataset[i]`` is ``{"image", "label", "index"}``, or ``{"error", "path", "index"}``
    when the image cannot be read (no other sample is substituted, so that evaluation never
    scores an image twice); :func:`collate_skipping` drops the failures from the batch.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            image = load_rgb(sample.path)
        except ImageLoadError as e:
            return {"error": e.reason, "path": str(sample.path), "index": index}
        return {"image": self.transform(image), "label": sample.label, "index": index}


def collate_skipping(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items; ``skipped`` lists ``(path, reason)`` of the others.

    Images stack along a new first axis: ``(B, 3, S, S)`` for images, ``(B, T, 3, S, S)`` for
    clips (:class:`~deepfake_detect.data.video_clips.ClipDataset`), whose items also carry ``video``
    (the index of their video), collated to a long tensor like ``index``.
    When no item is readable, ``image`` is None and ``label``/``index`` are empty: a training
    or evaluation step must skip such a batch.
    """
    good = [b for b in batch if "error" not in b]
    skipped = [(b["path"], b["error"]) for b in batch if "error" in b]
    out = {
        "image": torch.stack([b["image"] for b in good]) if good else None,
        "label": torch.tensor([b["label"] for b in good], dtype=torch.long),
        "index": torch.tensor([b["index"] for b in good], dtype=torch.long),
        "skipped": skipped,
    }
    if any("video" in b for b in batch):
        out["video"] = torch.tensor([b["video"] for b in good], dtype=torch.long)
    return out
