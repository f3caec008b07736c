"""Training samplers whose order depends only on (seed, epoch).

A run resumed at epoch k therefore sees the same batches as an uninterrupted one. Lightning calls
``set_epoch`` before each epoch; without it, each new iteration counts as the next epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import RandomSampler, Sampler


class EpochRandomSampler(RandomSampler):
    """A shuffling sampler (a RandomSampler, so distributed runs swap in DistributedSampler)."""

    def __init__(self, data_source: Sequence, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch: int | None = None
        self._next = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        epoch = self._next if self.epoch is None else self.epoch
        self._next, self.epoch = epoch + 1, None
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class EpochBalancedSampler(Sampler[int]):
    """Draws samples with replacement so that each class is equally likely."""

    def __init__(self, labels: Sequence[int], seed: int = 0) -> None:
        labels_t = torch.as_tensor(list(labels))
        counts = torch.bincount(labels_t, minlength=2).double().clamp(min=1)
        self.weights = (1.0 / counts)[labels_t]
        self.seed = seed
        self.epoch: int | None = None
        self._next = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        epoch = self._next if self.epoch is None else self.epoch
        self._next, self.epoch = epoch + 1, None
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        yield from torch.multinomial(self.weights, len(self.weights), True, generator=generator).tolist()
