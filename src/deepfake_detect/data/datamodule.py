"""Lightning DataModule tying discovery, splitting, verification and loading together.

It works from plain PyTorch too: call :meth:`FaceDataModule.setup` and use the loaders.
Videos in dataset folders become face crops (see :mod:`deepfake_detect.data.dataset_videos`).

``data.holdout_groups`` keeps whole groups (e.g. a manipulation method) and every video they are
in out of train, val and test before any split is made; ``samples("heldout")`` is them plus the
reals of the test split (else of val), to measure how the detector does on unseen methods.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from deepfake_detect.config.schema import DataConfig, PrepareConfig
from deepfake_detect.data.dataset_videos import VideoCrops, gather_samples
from deepfake_detect.data.datasets import FaceImageDataset, collate_skipping
from deepfake_detect.data.images import verify_images
from deepfake_detect.data.samplers import EpochBalancedSampler, EpochRandomSampler
from deepfake_detect.data.samples import CLASS_NAMES, REAL, Sample
from deepfake_detect.data.sources import log_discovery
from deepfake_detect.data.splits import (
    assign_splits,
    check_holdout_groups,
    check_splits,
    class_counts,
    hold_out,
    label_counts,
)
from deepfake_detect.data.transforms import build_transform
from deepfake_detect.errors import DataError

if TYPE_CHECKING:
    from deepfake_detect.data.faces.base import FaceDetector
    from deepfake_detect.data.feature_cache import FeatureCache

log = logging.getLogger(__name__)


def build_eval_samples(paths: Sequence[str | Path], **options: Any) -> list[Sample]:
    """Every sample in ``paths`` with the split it was given (None if none); the caller chooses.

    ``options`` are those of :func:`gather_samples` (videos in dataset folders become face
    crops); the videos that gave none are logged as left out.
    """
    gathered = gather_samples(paths, **options)
    log_discovery(gathered.found)
    for path, reason in gathered.skipped:
        log.warning("left out %s: %s", path, reason)
    return gathered.samples


def default_num_workers() -> int:
    return min(os.cpu_count() or 1, 8)


class FaceDataModule(L.LightningDataModule):
    """Train/val/test loaders over the datasets in ``data.path``.

    ``preprocessing`` is the detector's ``{"input_size", "mean", "std"}``. Splits are made with
    ``data.split_seed``; ``seed`` seeds the training shuffle / balanced sampler.

    Videos in dataset folders are cut into face crops with ``prepare`` (the experiment's face
    pipeline) and kept in ``data.faces_cache`` or else ``<cache_root>/faces-cache`` (cache_root:
    the experiment's output_dir). ``face_detector`` replaces the one ``prepare`` builds (tests).
    """

    def __init__(
        self,
        data: DataConfig,
        preprocessing: Mapping[str, Any],
        seed: int = 0,
        *,
        prepare: PrepareConfig | None = None,
        cache_root: str | Path | None = None,
        progress: bool = True,
        face_detector: FaceDetector | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.preprocessing = dict(preprocessing)
        self.seed = seed
        self.prepare = prepare
        self.cache_root = Path(cache_root) if cache_root is not None else None
        self.progress = progress
        self.face_detector = face_detector
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of files left out
        self.ignored_files = 0  # non-image files in label folders
        self.no_crop_rows = 0  # prepare-manifest rows of frames without a face
        self.video_crops = VideoCrops()  # videos in dataset folders cut into face crops
        self._samples: list[Sample] | None = None
        # data.holdout_groups: their samples plus the reals of the split named here
        self._heldout: list[Sample] = []
        self.heldout_reals_from: str | None = None  # "test" | "val"; None: nothing held out
        # Set by training for the feature_extractor strategy (deepfake_detect.data.feature_cache).
        self.feature_cache: FeatureCache | None = None
        # data.path names a shard folder (deepfake-detect shard): its loaders stream from it
        self.shards: Path | str | None = None  # a local folder or an object-store URI
        self.shard_streams = False  # its loaders stream the splits (else read items by number)
        self._shard_cache: str | None = None  # litdata's copy of a remote one's chunks
        self._bad_chunks: dict[str, set[str]] = {}  # split -> unreadable chunk files, left out
        self._train_loader: Any = None  # the streaming training loader Lightning iterates
        self._loader_state: dict[str, Any] | None = None  # its position, to resume from

    # -- setup ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._samples is not None:
            return
        if not self.data.path:
            raise DataError(
                "data.path is empty: give a dataset folder or CSV, e.g. data.path=/data/ff++"
            )
        if self._setup_shards():
            return
        gathered = gather_samples(
            self.data.path, videos=self.data.videos, prepare=self.prepare,
            faces_cache=self.data.faces_cache, cache_root=self.cache_root,
            progress=self.progress, face_detector=self.face_detector,
            group_depth=self.data.group_depth, shard_cache=self._shard_cache,
        )
        self.ignored_files = len(gathered.found.ignored)
        self.no_crop_rows = len(gathered.found.no_crop)
        self.video_crops = gathered.videos
        skipped = list(gathered.skipped)
        samples, held = gathered.samples, []
        if self.data.holdout_groups:
            check_holdout_groups(samples, self.data.holdout_groups)
            # before any split is made, so that no held-out video reaches train, val or test,
            # whether its split was given (split folders, a split column) or is to be made
            samples, held = hold_out(samples, self.data.holdout_groups)
        samples = assign_splits(
            samples, self.data.val_fraction, self.data.test_fraction, self.data.split_seed
        )
        # verify after splitting, so that fixing or breaking a file never reshuffles the splits;
        # a shard sample's source file need not be here (its bytes are checked as they are read)
        files = [s.path for s in (*samples, *held) if not hasattr(s, "read_image")]
        bad = verify_images(files, self.data.verify)
        if bad:
            bad_paths = {p for p, _ in bad}
            samples = [s for s in samples if s.path not in bad_paths]
            held = [s for s in held if s.path not in bad_paths]
            skipped += [(str(p), reason) for p, reason in bad]
        self.skipped = skipped
        check_splits(samples)
        self._samples = samples
        if self.data.holdout_groups:
            self._set_heldout(held)
        log.info("data:\n%s", self.summary())

    def _setup_shards(self) -> bool:
        """Read a shard dataset named by ``data.path``, a local folder or an object-store URI
        (its splits are those it was written with); False when ``data.path`` is not one. A URI
        must name one (only shard datasets are read from object storage)."""
        from deepfake_detect.data.locations import as_location, is_remote, names_shards

        locations = [as_location(p) for p in self.data.path]
        shards = [p for p in locations if names_shards(p)]
        if not shards:  # plain dataset folders: litdata is not even imported
            return False
        if len(locations) > 1:
            # beside other data: one list of samples, those of the shards read item by item
            # (their splits as written, unless a split is to be carved out, as for a dataset
            # folder with split folders) through the folder loaders
            remote = [p for p in shards if is_remote(p)]
            self._shard_cache = self._shard_cache_dir(remote[0]) if remote else None
            return False
        from deepfake_detect.data.shard_reader import shard_samples

        folder = shards[0]
        self.shards = folder
        self._shard_cache = self._shard_cache_dir(folder)
        samples, left = shard_samples(folder, cache_dir=self._shard_cache)
        self.skipped = [(path, reason) for path, reason, _ in left]
        samples = self._leave_out_unreadable_chunks(folder, samples)
        held: list[Sample] = []
        if self.data.holdout_groups:  # whole videos out of every split, as with a folder
            check_holdout_groups(samples, self.data.holdout_groups)
            samples, held = hold_out(samples, self.data.holdout_groups)
        # Held-out groups leave holes in the splits as written, and the class-balanced sampler
        # draws with replacement: neither is a pass over a stored split, so then the items are
        # read one by one (random access into the chunks) through the folder loaders.
        self.shard_streams = not (self.data.holdout_groups or self.data.balance == "sampler")
        if not self.shard_streams:
            from deepfake_detect.data.shard_reader import resolve_items

            samples, held = resolve_items(samples), resolve_items(held)
        check_splits(samples)
        self._samples = samples
        if self.data.holdout_groups:
            self._set_heldout(held)
        how = "streamed" if self.shard_streams else "read item by item"
        log.info("data (shards %s, splits as written, %s):\n%s", folder, how, self.summary())
        return True

    def _leave_out_unreadable_chunks(self, folder: Path | str, samples: list) -> list:
        """``samples`` without those stored in chunks that cannot be read (missing, truncated,
        overwritten; see :func:`~deepfake_detect.data.shard_reader.check_chunks`): each chunk is
        named in a warning, its samples are counted as skipped files, and the rest trains.
        Which samples a chunk held is learnt by reading the other items' numbers once, only for
        a split with such a chunk."""
        from deepfake_detect.data.locations import child
        from deepfake_detect.data.shard_reader import NO_ITEM, SPLITS, check_chunks, resolve_items

        kept = []
        for split in SPLITS:
            part = [s for s in samples if s.split == split]
            bad = check_chunks(child(folder, split)) if part else []
            if not bad:
                kept += part
                continue
            self._bad_chunks[split] = {name for name, _, _ in bad}
            for name, items, reason in bad:
                log.warning("shard chunk %s/%s is unreadable (%s): its %d samples are left out",
                            split, name, reason, items)
            names = ", ".join(f"{split}/{name}" for name, _, _ in bad)
            for s in resolve_items(part):
                if s.item == NO_ITEM:
                    self.skipped.append((str(s.path), f"in an unreadable shard chunk ({names})"))
                else:
                    kept.append(s)
        return kept

    def _shard_cache_dir(self, location: Path | str) -> str | None:
        """Where litdata keeps its copy of a remote shard dataset's chunks: data.shard_cache,
        else ``<cache_root>/shard-cache`` (the experiment's output_dir, as for the faces cache),
        kept between runs; never litdata's default (``~/.lightning/chunks``). A local shard
        folder is read in place: None."""
        from deepfake_detect.data.locations import is_remote

        if not is_remote(location):
            return None
        if self.data.shard_cache is not None:
            return str(Path(self.data.shard_cache).expanduser())
        if self.cache_root is not None:
            return str(self.cache_root / "shard-cache")
        raise DataError(
            f"data.path {location}: a shard dataset in object storage needs a folder for "
            "litdata's copy of its chunks: set data.shard_cache (or give the experiment's "
            "output_dir as cache_root)"
        )

    def _shard_stream_options(self) -> dict[str, Any]:
        """``StreamingDataset`` options of the shard dataset: for a remote one its cache folder
        and the storage options (:func:`~deepfake_detect.data.shard_reader.storage_options`)."""
        if self._shard_cache is None:
            return {}
        from deepfake_detect.data.shard_reader import storage_options

        return {"cache_dir": self._shard_cache, "storage_options": storage_options() or None}

    def _set_heldout(self, held: list[Sample]) -> None:
        """The held-out set: ``held`` (the held-out groups' videos) plus the reals of the test
        split, or of val when test has none, so that it has both classes to score."""
        test_reals = [s for s in self._require() if s.split == "test" and s.label == REAL]
        self.heldout_reals_from = "test" if test_reals else "val"
        reals = test_reals or [s for s in self._require() if s.split == "val" and s.label == REAL]
        self._heldout = [*held, *reals]
        per = label_counts(held)
        log.info(
            "held-out groups %s: %d fake and %d real images kept out of train/val/test; "
            "evaluated with the %d real images of the %s split",
            ", ".join(self.data.holdout_groups), per["fake"], per["real"], len(reals),
            self.heldout_reals_from,
        )

    def _require(self) -> list[Sample]:
        if self._samples is None:
            raise RuntimeError("FaceDataModule.setup() must be called before using the data")
        return self._samples

    # -- facts ---------------------------------------------------------------------------
    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split``: "train", "val", "test", or "heldout" (the held-out
        groups' samples plus the reals of ``heldout_reals_from``; empty when none is set)."""
        if split == "heldout":
            self._require()
            return list(self._heldout)
        return [s for s in self._require() if s.split == split]

    def has_split(self, split: str) -> bool:
        return bool(self.samples(split))

    def heldout_counts(self) -> dict[str, int]:
        """Images of the held-out set per class, e.g. ``{"real": 4, "fake": 9}``."""
        return label_counts(self.samples("heldout"))

    def class_counts(self) -> dict[str, dict[str, int]]:
        return class_counts(self._require())

    def class_weights(self) -> torch.Tensor:
        """Inverse train-class frequencies ``[real, fake]``, normalised to mean 1."""
        counts = self.class_counts()["train"]
        inv = torch.tensor([1.0 / counts[name] for name in CLASS_NAMES], dtype=torch.float32)
        return inv / inv.mean()

    def summary(self) -> str:
        counts = self.class_counts()
        rows = [("split", *CLASS_NAMES, "total")]
        for split, per in counts.items():
            rows.append((split, *(str(per[n]) for n in CLASS_NAMES), str(sum(per.values()))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows
        ]
        if self.heldout_reals_from is not None:
            per = self.heldout_counts()
            lines.append(
                f"held-out groups ({', '.join(self.data.holdout_groups)}): {per['fake']} fake, "
                f"{per['real']} real images (reals of the {self.heldout_reals_from} split)"
            )
        images_skipped = len(self.skipped) - self.video_crops.failed
        lines.append(f"skipped unreadable or missing images: {images_skipped}")
        if self.video_crops.videos:
            lines.append(self.video_crops.line())
        if self.ignored_files:
            lines.append(f"ignored non-image files: {self.ignored_files}")
        if self.no_crop_rows:
            lines.append(f"manifest rows without a face crop: {self.no_crop_rows}")
        return "\n".join(lines)

    # -- loaders -------------------------------------------------------------------------
    def _loader_options(self) -> dict[str, Any]:
        workers = self.data.num_workers
        workers = default_num_workers() if workers is None else workers
        pin = self.data.pin_memory
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available() if pin is None else pin,
            "collate_fn": collate_skipping,
        }

    def train_sampler(self, items: Sequence[Any]) -> EpochRandomSampler | EpochBalancedSampler:
        """The training order over ``items`` (anything with a ``label``): shuffled, or
        class-balanced with ``data.balance: sampler``; it depends only on (seed, epoch)."""
        if self.data.balance == "sampler":
            return EpochBalancedSampler([item.label for item in items], seed=self.seed)
        return EpochRandomSampler(items, seed=self.seed)

    def shard_loader(self, split: str, *, train: bool = False) -> DataLoader:
        """A litdata ``StreamingDataLoader`` over ``split`` of the shard folder: the training
        split shuffled with ``seed`` and augmented, the others in order and without."""
        from litdata import StreamingDataLoader

        from deepfake_detect.data.shard_loading import ResumableStreamingLoader
        from deepfake_detect.data.locations import child
        from deepfake_detect.data.shard_reader import ShardDataset

        augment = self.data.augment if train else None
        size = self.data.batch_size if train else (self.data.eval_batch_size or self.data.batch_size)
        options = self._loader_options()
        options.pop("persistent_workers")  # litdata restarts its workers per epoch itself
        # Under DDP litdata gives each rank a disjoint part of the split. Training: every rank
        # the same number of whole batches (a rank with one more step would wait forever for
        # the others' gradients), so with N items, R ranks and batch B an epoch leaves out
        # N mod (R*B) items, a different few each epoch as the shuffle changes; none when R*B
        # divides N. Evaluation has no per-step collective: every item once, ranks may differ
        # by a batch, and validation gathers and de-duplicates the predictions by index.
        dataset = ShardDataset(child(self.shards, split),
                               build_transform(self.preprocessing, augment),
                               shuffle=train, seed=self.seed,
                               exclude=self._bad_chunks.get(split, ()),
                               **self._shard_stream_options())
        # the loader's drop_last is also the dataset's (litdata passes it on); one process: the
        # folder loader's rule (training drops a last partial batch)
        drop = train and (dataset.distributed_env.world_size > 1 or len(dataset) > size)
        loader_cls = ResumableStreamingLoader if train else StreamingDataLoader
        loader = loader_cls(dataset, batch_size=size, drop_last=drop, **options)
        if train:
            if self._loader_state is not None:  # resuming: continue where the checkpoint was
                loader.load_state_dict(self._loader_state)
                self._loader_state = None
            self._train_loader = loader
        return loader

    # -- checkpoints: the streaming training loader's position -------------------------------
    # Lightning stores a stateful loader's state in the fit loop too, but restores it only when
    # the loader is made after the checkpoint is loaded; the learning-rate schedule's step count
    # (Trainer.estimated_stepping_batches) makes it earlier. The datamodule's own state is
    # restored before that, so the position travels here and is applied as the loader is made.
    def state_dict(self) -> dict[str, Any]:
        if self._train_loader is None:
            return {}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get("train_loader")

    def train_dataloader(self) -> DataLoader:
        train = self.samples("train")
        batch = self.data.batch_size
        if self.feature_cache is not None and self.feature_cache.complete("train"):
            sampler = self.train_sampler(train)
            return self.feature_cache.loader(
                "train", [s.label for s in train], batch, sampler, drop_last=len(train) > batch
            )
        if self.shards is not None and self.shard_streams:
            return self.shard_loader("train", train=True)
        sampler = self.train_sampler(train)
        dataset = FaceImageDataset(train, build_transform(self.preprocessing, self.data.augment))
        return DataLoader(
            dataset, batch, sampler=sampler, drop_last=len(train) > batch, **self._loader_options()
        )

    def eval_dataloader(
        self, samples: Sequence[Sample], batch_size: int | None = None
    ) -> DataLoader:
        """A loader in order, without augmentation, over any samples (e.g. from
        :func:`build_eval_samples`); ``batch["index"]`` indexes ``samples``."""
        dataset = FaceImageDataset(samples, build_transform(self.preprocessing, None))
        size = batch_size or self.data.eval_batch_size or self.data.batch_size
        return DataLoader(dataset, size, shuffle=False, drop_last=False, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        val = self.samples("val")
        if self.feature_cache is not None and self.feature_cache.complete("val"):
            size = self.data.eval_batch_size or self.data.batch_size
            return self.feature_cache.loader("val", [s.label for s in val], size)
        if self.shards is not None and self.shard_streams:
            return self.shard_loader("val")
        return self.eval_dataloader(val)

    def test_dataloader(self) -> DataLoader | list:
        """The test loader, or an empty list when there is no test split."""
        if self.shards is not None and self.shard_streams:
            return self.shard_loader("test") if self.has_split("test") else []
        test = self.samples("test")
        return self.eval_dataloader(test) if test else []

