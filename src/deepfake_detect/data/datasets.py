"""A torch Dataset over samples that reports unreadable images instead of raising."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfake_detect.data.images import ImageLoadError, load_rgb
from deepfake_detect.data.samples import Sample


View = Callable[..., Any]  # PIL image (, sample index) -> PIL image


class FaceImageDataset(Dataset):
    """``dataset[i]`` is ``{"image", "label", "index"}``, or ``{"error", "path", "index"}``
    when the image cannot be read (no other sample is substituted, so that evaluation never
    scores an image twice); :func:`collate_skipping` drops the failures from the batch.

    ``views`` (robustness sweeps): callables PIL RGB image -> PIL RGB image, e.g.
    :class:`~deepfake_detect.data.perturb.PerturbView`; a view with a true ``takes_index``
    attribute is called ``view(image, index)`` (seeded noise). With views, ``image`` is
    ``(1 + len(views), 3, S, S)``: view 0 the clean image, transformed exactly as without
    views, then each view of the same decoded image through the same ``transform``. The file
    is decoded once for all of them.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor],
                 views: Sequence[View] | None = None):
        self.samples = list(samples)
        if any(getattr(s, "item", 0) == -1 for s in self.samples):
            # shard samples whose items are not looked up yet: done once here, before any
            # loader worker starts, rather than by every worker (one pass over each split)
            from deepfake_detect.data.shard_reader import resolve_items

            self.samples = resolve_items(self.samples)
        self.transform = transform
        self.views = list(views) if views is not None else None

    @property
    def n_views(self) -> int:
        """Images per item: 1 without views, else the clean one plus each view."""
        return 1 + len(self.views) if self.views is not None else 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            # a shard sample (deepfake_detect.data.shard_reader.ShardSample) reads its image
            # from its litdata item; duck-typed so that this module needs no litdata import
            read = getattr(sample, "read_image", None)
            image = read() if read is not None else load_rgb(sample.path)
        except ImageLoadError as e:
            return {"error": e.reason, "path": str(sample.path), "index": index}
        if self.views is None:
            return {"image": self.transform(image), "label": sample.label, "index": index}
        # the clean view first, untouched by any view code: it is the plain evaluation's input
        clean = self.transform(image)
        seen = [view(image, index) if getattr(view, "takes_index", False) else view(image)
                for view in self.views]
        if not seen:
            return {"image": clean[None], "label": sample.label, "index": index}
        return {"image": torch.cat([clean[None], self._transform_views(seen)]),
                "label": sample.label, "index": index}

    def _transform_views(self, images: list[Any]) -> torch.Tensor:
        """``transform`` of each view, stacked ``(len(images), 3, S, S)``.

        A torchvision v2 pipeline (the evaluation transform of
        :func:`~deepfake_detect.data.transforms.build_transform`) runs once on the views
        stacked as one uint8 batch, laid out channels-last as PIL holds pixels: the same values
        as one call per view, in less time (fewer calls, and the resize needs no layout
        change). Any other callable is called per view.
        """
        from torchvision.transforms import v2

        sizes = {getattr(im, "size", None) for im in images}
        if isinstance(self.transform, v2.Compose) and len(sizes) == 1 and None not in sizes:
            pixels = np.stack([np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
                               for im in images])  # (V, H, W, 3)
            out = self.transform(torch.from_numpy(pixels).permute(0, 3, 1, 2))
            return out.as_subclass(torch.Tensor)
        return torch.stack([self.transform(im) for im in images])


def collate_skipping(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items; ``skipped`` lists ``(path, reason)`` of the others.

    Images stack along a new first axis: ``(B, 3, S, S)`` for images, ``(B, V, 3, S, S)`` for
    images with views, ``(B, T, 3, S, S)`` for clips
    (:class:`~deepfake_detect.data.video_clips.ClipDataset`), whose items also carry ``video``
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
