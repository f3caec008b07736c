"""Backbone features kept from one epoch to the next, for the feature-extractor strategy.

A frozen backbone in eval mode maps a view that does not change between epochs (validation, or
training without random augmentation) to the same features every epoch, so they are computed
once. After the first pass over a split the loader serves the stored features instead of
decoding images, and only the head runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class FeatureCache:
    """Per-split feature tables indexed like the split's samples; filled batch by batch.

    Features are stored on the CPU in the dtype they were computed in (bf16 under autocast).
    A split whose table would exceed ``max_bytes`` is not cached, and ``notes`` says so.
    """

    def __init__(self, sizes: dict[str, int], max_bytes: float) -> None:
        self.sizes = dict(sizes)
        self.max_bytes = max_bytes
        self.tables: dict[str, torch.Tensor] = {}
        self.filled: dict[str, torch.Tensor] = {}
        self.refused: set[str] = set()
        self.notes: list[str] = []

    def wants(self, split: str) -> bool:
        return split in self.sizes and split not in self.refused and not self.complete(split)

    def put(self, split: str, index: torch.Tensor, features: torch.Tensor) -> None:
        if not self.wants(split):
            return
        if split not in self.tables:
            n = self.sizes[split]
            need = n * features[0].numel() * features.element_size()
            if need > self.max_bytes:
                self.refused.add(split)
                self.notes.append(
                    f"feature cache: {split} would need {need / 2**30:.1f} GiB, above "
                    f"strategy.cache_max_gb; its features are computed every epoch"
                )
                return
            self.tables[split] = torch.empty((n, *features.shape[1:]), dtype=features.dtype)
            self.filled[split] = torch.zeros(n, dtype=torch.bool)
        index = index.cpu()
        self.tables[split][index] = features.detach().to("cpu", self.tables[split].dtype)
        self.filled[split][index] = True

    def complete(self, split: str) -> bool:
        filled = self.filled.get(split)
        return filled is not None and bool(filled.all())

    def loader(
        self,
        split: str,
        labels: Sequence[int],
        batch_size: int,
        sampler: Sampler | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        """Batches ``{"features", "label", "index"}`` over a complete split, in the main process."""
        dataset = _CachedSplit(self.tables[split], torch.as_tensor(list(labels)))
        return DataLoader(
            dataset, batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
            num_workers=0, collate_fn=dataset.collate,
        )


class _CachedSplit(Dataset):
    """Yields indices; :meth:`collate` gathers a whole batch from the table in one indexing."""

    def __init__(self, table: torch.Tensor, labels: torch.Tensor) -> None:
        self.table, self.labels = table, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"features": self.table[index], "label": self.labels[index], "index": index}
