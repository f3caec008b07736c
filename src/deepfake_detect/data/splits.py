"""Train/val/test splits that keep each video's frames together, stratified by label."""

from __future__ import annotations

import difflib
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from deepfake_detect.data.labels import SPLIT_ORDER
from deepfake_detect.data.samples import CLASS_NAMES, Sample
from deepfake_detect.errors import ConfigError, DataError


def assign_splits(
    samples: Sequence[Sample],
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> list[Sample]:
    """Give every sample a split, keeping the order of ``samples``.

    Samples that have a split keep it. Per dataset, samples without one are split into
    train/val(/test) by video (a video's frames never straddle splits), stratified by label;
    a dataset with a train split but no val split (or no test split when ``test_fraction`` > 0)
    has it carved out of its train samples the same way. Fractions count images, not videos.
    Each dataset and class is shuffled with its own seed derived from ``seed``, so adding a
    dataset does not change the splits of the others.
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
            "with val_fraction > 0 and their sum below 1"
        )
    out = list(samples)
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(out):
        by_dataset[s.dataset].append(i)

    for dataset, indices in by_dataset.items():
        pending = [i for i in indices if out[i].split is None]
        if pending:
            fractions = {"val": val_fraction, "test": test_fraction}
            _split_into(out, pending, fractions, f"{seed}/{dataset}/new")
        present = {out[i].split for i in indices}
        if "train" in present:
            carve = {}
            if "val" not in present:
                carve["val"] = val_fraction
            if test_fraction > 0 and "test" not in present:
                carve["test"] = test_fraction
            if carve:
                train = [i for i in indices if out[i].split == "train"]
                _split_into(out, train, carve, f"{seed}/{dataset}/carve")
    return out


def _split_into(
    out: list[Sample], indices: list[int], fractions: dict[str, float], seed_key: str
) -> None:
    """Move the samples at ``indices`` to train or the held-out splits in ``fractions``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        groups[out[i].video].append(i)
    by_label: dict[int, list[str]] = defaultdict(list)
    for video, members in groups.items():
        # video ids never span labels in discovered data; a majority vote copes with any that do
        label = Counter(out[i].label for i in members).most_common(1)[0][0]
        by_label[label].append(video)

    for label, videos in sorted(by_label.items()):
        rng = random.Random(f"{seed_key}/{label}")
        videos = sorted(videos)
        rng.shuffle(videos)
        assigned = _allocate([len(groups[v]) for v in videos], fractions)
        for video, split in zip(videos, assigned):
            for i in groups[video]:
                out[i] = replace(out[i], split=split)


def _allocate(sizes: list[int], fractions: dict[str, float]) -> list[str]:
    """A split per group (in the shuffled order given) so image counts match ``fractions``."""
    total = sum(sizes)
    held = [name for name in ("test", "val") if fractions.get(name, 0) > 0]
    # cumulative bounds: test first, then val, the rest train
    bounds, acc = [], 0.0
    for name in held:
        acc += fractions[name] * total
        bounds.append((acc, name))
    result, start = [], 0
    for size in sizes:
        middle = start + size / 2
        result.append(next((name for bound, name in bounds if middle < bound), "train"))
        start += size

    # small classes: train keeps a group, then each held-out split gets one while groups remain
    priority = ["train", *reversed(held)]  # train, val, test
    for rank, name in enumerate(priority):
        if name in result:
            continue
        # take from a split that can spare a group, else from a less important split
        donors = [n for n in priority if n != name and result.count(n) > 1]
        donors = donors or [n for n in priority[rank + 1 :] if n in result]
        if not donors:
            continue
        donor = max(donors, key=result.count)
        # move the donor's smallest group, to disturb the fractions least
        j = min((k for k, s in enumerate(result) if s == donor), key=lambda k: sizes[k])
        result[j] = name
    return result


def hold_out(
    samples: Sequence[Sample], groups: Iterable[str]
) -> tuple[list[Sample], list[Sample]]:
    """``samples`` parted into (kept, held out), order kept: held out are the samples of
    ``groups`` and every sample of a video one of them belongs to (per dataset), so that no
    frame of a held-out video can reach training."""
    wanted = set(groups)
    videos = {(s.dataset, s.video) for s in samples if s.group in wanted}
    kept: list[Sample] = []
    held: list[Sample] = []
    for s in samples:
        (held if (s.dataset, s.video) in videos else kept).append(s)
    return kept, held


def check_holdout_groups(samples: Iterable[Sample], groups: Sequence[str]) -> None:
    """Raise ConfigError unless every name in ``groups`` (``data.holdout_groups``) is the
    group of some sample, naming the groups there are and the closest one."""
    present = sorted({s.group for s in samples if s.group is not None})
    unknown = [g for g in groups if g not in present]
    if not unknown:
        return
    shown = ", ".join(repr(g) for g in unknown)
    if not present:
        raise ConfigError(
            f"data.holdout_groups: no sample has a group, so {shown} cannot be held out; groups "
            "come from folders under a label folder (fake/<method>/<video>/...; see "
            "data.group_depth) or a CSV manifest's group column"
        )
    # case-blind, as "neuraltextures" surely means "NeuralTextures"
    lowered = {g.lower(): g for g in present}
    hints = [
        repr(lowered[close[0]]) + (f" for {g!r}" if len(unknown) > 1 else "")
        for g in unknown
        if (close := difflib.get_close_matches(g.lower(), list(lowered), n=1, cutoff=0.6))
    ]
    hint = f" (did you mean {'; '.join(hints)}?)" if hints else ""
    raise ConfigError(
        f"data.holdout_groups: no sample is in group {shown}{hint}; the groups found are "
        f"{', '.join(present)}"
    )


def check_splits(samples: Iterable[Sample], need_test: bool = False) -> None:
    """Raise DataError unless train and val (and test if ``need_test``) hold both classes."""
    counts = class_counts(samples)
    if "unassigned" in counts:
        n = sum(counts["unassigned"].values())
        raise DataError(f"{n} samples have no split: call assign_splits first")
    needed = ["train", "val"] + (["test"] if need_test else [])
    for split in needed:
        per_class = counts.get(split, {name: 0 for name in CLASS_NAMES})
        shown = ", ".join(f"{n} {name}" for name, n in per_class.items())
        empty = [name for name, n in per_class.items() if n == 0]
        if not empty:
            continue
        if len(empty) == len(per_class):
            problem = f"the {split} split is empty"
        else:
            problem = f"the {split} split has only one class ({shown})"
        raise DataError(f"{problem}. Images per class: {_describe(counts)}. {_fix(split, empty)}")


def _describe(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{split}: " + ", ".join(f"{n} {name}" for name, n in per.items())
        for split, per in counts.items()
    )


def _fix(split: str, empty: list[str]) -> str:
    classes = " and ".join(empty)
    if split == "train":
        return (
            f"Fix: add {classes} images (a {empty[0]}/ folder beside the others, or CSV rows "
            f"labelled {empty[0]})."
        )
    fraction = "data.val_fraction" if split == "val" else "data.test_fraction"
    return (
        f"Fix: add {classes} images (at least two videos per class are needed to hold one out), "
        f"add a {split}/ folder with both classes, or raise {fraction}."
    )


def label_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """Images per class name, whatever their split, e.g. ``{"real": 4, "fake": 9}``."""
    counts = Counter(s.label for s in samples)
    return {name: counts[i] for i, name in enumerate(CLASS_NAMES)}


def class_counts(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """Images per split and class name, e.g. ``{"train": {"real": 10, "fake": 12}}``.

    Splits appear in train/val/test order; samples without a split are under "unassigned".
    """
    counts: dict[str, dict[str, int]] = {}
    for s in samples:
        split = s.split or "unassigned"
        per = counts.setdefault(split, {name: 0 for name in CLASS_NAMES})
        per[CLASS_NAMES[s.label]] += 1
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
