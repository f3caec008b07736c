"""The inference core: a :class:`Predictor` scores inputs, whether it is one loaded model
(:class:`LoadedModel`) or an ensemble (:class:`~deepfake_detect.inference.ensemble.Ensemble`).

Callers (``predict``, ``evaluate``, ``calibrate``) hold a Predictor and a
:class:`~deepfake_detect.inference.options.ScoringOptions` and never ask which kind of
predictor they hold. What kind of input a predictor scores is decided once, by it
(:attr:`Predictor.input_kind`): ``images`` (face crops, one score per image; raw photos and
videos reach it as the face crops the face pipeline cuts) or ``clips`` (a sequence detector:
one score per video, the mean over evenly spaced clips of its frames).

One function computes the values of a batch whatever the options, :func:`score_batch`:
Monte-Carlo dropout passes, test-time views, a variance head, or a plain forward pass. The
three input loops (image files, clips of frames, face crops in memory) all call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from deepfake_detect.data.samples import Sample
from deepfake_detect.errors import ConfigError
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.tta import check_mc_dropout, mc_dropout_passes, tta_probabilities
from deepfake_detect.models.checkpoint_meta import CheckpointMeta
from deepfake_detect.models.detector import Detector

if TYPE_CHECKING:
    from deepfake_detect.config.schema import PrepareConfig
    from deepfake_detect.data.video_clips import VideoFrames

Output = Callable[[torch.Tensor], torch.Tensor]
INPUT_KINDS = ("images", "clips")


# -- results ----------------------------------------------------------------------------------


@dataclass
class Scores:
    """P(fake) per input (NaN where the file could not be read) and the reason for each failure.

    ``std``: with Monte-Carlo dropout, the standard deviation of P(fake) over the passes per
    input; for an ensemble, the spread of its members' P(fake) (NaN where not computed); None
    otherwise.

    ``var``: for a detector with a variance head (``model.uncertainty``), the predicted variance
    of the fake logit per input (aleatoric uncertainty; NaN where the file could not be read);
    None for other detectors and with TTA or Monte-Carlo dropout.

    ``members``: for an ensemble, each member's P(fake), shape (members, inputs); else None.

    ``views``: when scored with views (robustness sweeps), P(fake) per view and input, shape
    (views, inputs), row 0 the clean view (equal to ``scores``); else None. ``std``, ``var``
    and ``members`` belong to the clean view.
    """

    scores: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    std: np.ndarray | None = None
    var: np.ndarray | None = None
    members: np.ndarray | None = None
    views: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.scores)


@dataclass
class VideoScores:
    """Per video: the score, the clips scored, and with Monte-Carlo dropout ``std``, the
    standard deviation over the passes of the video's mean-over-clips score (NaN where the
    video was not scored); None without it."""

    videos: list[VideoFrames]
    scores: np.ndarray  # mean P(fake) over the video's scored clips; NaN when none was
    clips: np.ndarray  # scored clips per video
    errors: dict[str, str] = field(default_factory=dict)  # frame path -> reason
    short: int = 0  # videos shorter than a clip: padded by repetition
    std: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.scores)


@dataclass
class CropScores:
    """The scores of face crops held in memory (the faces of one photo or video).

    ``scores``: P(fake) per crop (the mean over views and dropout passes; for an ensemble its
    combined score). ``std``: the spread per crop over the dropout passes, or over an
    ensemble's members; None without either. ``replicates``: the per-crop P(fake) of each
    dropout pass or each member, ``(k, crops)``: a file's spread is that of its aggregated
    score over them. None without either.
    """

    scores: np.ndarray
    std: np.ndarray | None = None
    replicates: np.ndarray | None = None


# -- the one forward step ---------------------------------------------------------------------


@dataclass
class BatchValues:
    """The values of one batch: ``passes`` ``(n, B)``, one row per Monte-Carlo dropout pass
    (``n`` = 1 without it), each the mean over the test-time views; ``log_var`` ``(B,)``, the
    variance head's log-variance of the fake logit (None unless asked for)."""

    passes: torch.Tensor
    log_var: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.passes.mean(dim=0) if len(self.passes) > 1 else self.passes[0]

    @property
    def std(self) -> torch.Tensor | None:
        return self.passes.std(dim=0, unbiased=True) if len(self.passes) > 1 else None


def score_batch(
    model: LoadedModel,
    x: torch.Tensor,
    options: ScoringOptions,
    output: Output | None = None,
    seed: int = 0,
    variance: bool = False,
) -> BatchValues:
    """The values of a batch ``x`` (images ``(B, 3, H, W)`` or clips ``(B, T, 3, H, W)``, on
    the device) under ``options``: with Monte-Carlo dropout one row per pass (seeded with
    ``seed``), with TTA the mean over the views, with ``variance`` (and neither) the variance
    head's log-variance too. ``output`` maps logits to the value kept (default: the model's
    P(fake), temperature applied); TTA and dropout chunk their stacked views at
    ``options.batch_size`` inputs, so memory stays that of a plain batch."""
    module = model.module
    output = output or model.probabilities
    with options.autocast():
        if options.mc_dropout:
            return BatchValues(mc_dropout_passes(
                module, x, options.mc_dropout, options.tta, output,
                max_batch=options.batch_size, seed=seed,
            ))
        if options.tta is not None:
            values = tta_probabilities(module, x, options.tta, output, max_batch=options.batch_size)
        elif variance:
            logits, log_var = module.forward_with_variance(x)
            return BatchValues(output(logits.float())[None], log_var)
        else:
            values = output(module(x).float())
    return BatchValues(values[None])


def _progress(options: ScoringOptions):
    from rich.console import Console
    from rich.progress import Progress

    # on standard error: predict may be writing its CSV to standard output
    return Progress(console=Console(stderr=True), disable=not options.progress, transient=True)


def _loader(dataset, options: ScoringOptions, batch: int | None = None):
    """Batches of ``batch`` items (default ``options.batch_size``)."""
    from torch.utils.data import DataLoader

    from deepfake_detect.data.datasets import collate_skipping

    workers, batch = options.workers, batch or options.batch_size
    return DataLoader(
        dataset, batch_size=batch, shuffle=False,
        num_workers=min(workers, max(1, len(dataset) // batch)) if workers else 0,
        pin_memory=options.device.type == "cuda", collate_fn=collate_skipping,
    )


def _as_samples(paths: Sequence[str | Path] | Sequence[Sample]) -> list[Sample]:
    return [p if isinstance(p, Sample) else Sample(path=Path(p), label=-1, video=str(p))
            for p in paths]


# -- the protocol -----------------------------------------------------------------------------


class Predictor(Protocol):
    """What ``predict``, ``evaluate`` and ``calibrate`` use, implemented by :class:`LoadedModel`
    and :class:`~deepfake_detect.inference.ensemble.Ensemble`."""

    threshold: float  # decision threshold on P(fake)

    @property
    def meta(self) -> CheckpointMeta | None:
        """The checkpoint meta (an ensemble: its first member's, whose face settings and
        evaluation defaults it uses); None for a module not read from a file."""

    @property
    def input_kind(self) -> str:
        """``images`` or ``clips`` (see the module docstring)."""

    @property
    def default_tta(self) -> str | None:
        """The views the training recipe evaluates with (``eval.tta``), if any."""

    @property
    def default_aggregation(self) -> str:
        """The recipe's per-video aggregation of frame scores (``eval.video_aggregation``)."""

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The evaluation transform of one image (an ensemble: its first member's; each
        member reads its inputs with its own)."""

    def check(self, options: ScoringOptions) -> None:
        """Refuse options this predictor cannot honour, before any input is read."""

    def place(self, device: torch.device) -> None:
        """Put the model(s) on ``device`` for :meth:`score_crops`."""

    def score_images(self, samples: Sequence[Any], options: ScoringOptions,
                     description: str = "scoring", *, views: Sequence[Any] | None = None
                     ) -> Scores:
        """Image files (paths or samples) in order, one score each; with ``views`` (callables
        on the decoded PIL image, see
        :class:`~deepfake_detect.data.datasets.FaceImageDataset`) also one per view in
        ``Scores.views``, every file decoded once."""

    def score_clips(self, samples: Sequence[Sample], options: ScoringOptions,
                    description: str = "scoring clips") -> VideoScores:
        """Videos given as face-crop frames (grouped by video id), one score per video."""

    def score_crops(self, crops: list[np.ndarray], options: ScoringOptions) -> CropScores:
        """Face crops in memory (RGB arrays), one score each."""

    def prepare_settings(self) -> PrepareConfig:
        """The face pipeline the checkpoint was trained with."""

    def describe(self) -> dict[str, Any] | None:
        """What reports record beyond the threshold (an ensemble: method, weights, members)."""

    def run_record(self) -> tuple[dict[str, Any] | None, str | list[str]]:
        """``(config, checkpoint)`` for run.json / config.yaml of a folder it writes."""


def settings_from_meta(meta: CheckpointMeta | None) -> PrepareConfig:
    """The face pipeline stored with a checkpoint (defaults for checkpoints without one)."""
    from deepfake_detect.config.schema import PrepareConfig

    stored = meta.prepare if meta is not None else None
    return PrepareConfig.model_validate(stored) if stored else PrepareConfig()


# -- one model --------------------------------------------------------------------------------


class LoadedModel:
    """One loaded detector ready to score: the module, its preprocessing, decision threshold,
    temperature and checkpoint meta, held side by side (nothing is attached to the module).

    ``threshold`` / ``temperature`` default to the meta's (0.5 / 1.0 without meta). P(fake) is
    ``sigmoid(fake logit / temperature)`` (:meth:`probabilities`).
    """

    def __init__(
        self,
        module: Detector,
        meta: CheckpointMeta | None = None,
        *,
        threshold: float | None = None,
        temperature: float | None = None,
        source: str | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"LoadedModel needs a detector module, not {type(module).__name__}")
        self.module = module
        self.meta = meta
        if threshold is None:
            threshold = meta.threshold if meta is not None else 0.5
        if temperature is None:
            temperature = meta.temperature if meta is not None else 1.0
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.source = source  # the checkpoint it was read from, as given
        self._device: torch.device | None = None
        self._transform = None

    @classmethod
    def load(cls, path: str | Path, config: str | Path | None = None,
             map_location: str | torch.device = "cpu") -> LoadedModel:
        """Read a checkpoint (with ``config``: any weights file that model reads)."""
        from deepfake_detect.models.checkpoint import load_model_parts

        module, meta = load_model_parts(path, config, map_location)
        return cls(module, meta, source=str(path))

    @classmethod
    def from_module(cls, module: Detector) -> LoadedModel:
        """Wrap a module as it is (one built in code, or loaded by the older API, which
        attaches ``threshold``, ``temperature`` and ``checkpoint_meta`` to it)."""
        meta = getattr(module, "checkpoint_meta", None)
        threshold = getattr(module, "threshold", None)
        return cls(module, meta if isinstance(meta, CheckpointMeta) else None,
                   threshold=threshold, temperature=getattr(module, "temperature", 1.0))

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name!r}, threshold={self.threshold:.4g}, "
                f"temperature={self.temperature:.4g}, source={self.source!r})")

    # -- what it is ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.module.config.name

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Input size, mean and std (and the clip layout of a sequence detector)."""
        return self.module.preprocessing()

    @property
    def input_size(self) -> int:
        return self.module.input_size

    @property
    def input_kind(self) -> str:
        return "clips" if "sequence" in self.preprocessing else "images"

    @property
    def default_tta(self) -> str | None:
        return self.meta.eval_settings.get("tta") if self.meta is not None else None

    @property
    def default_aggregation(self) -> str:
        settings = self.meta.eval_settings if self.meta is not None else {}
        return settings.get("video_aggregation", "mean")

    @property
    def transform(self):
        """The evaluation transform of one image (resize, normalise)."""
        if self._transform is None:
            from deepfake_detect.data.transforms import build_transform

            self._transform = build_transform(self.preprocessing)
        return self._transform

    def prepare_settings(self) -> PrepareConfig:
        return settings_from_meta(self.meta)

    def describe(self) -> dict[str, Any] | None:
        return None

    def run_record(self) -> tuple[dict[str, Any] | None, str | list[str]]:
        experiment = self.meta.experiment if self.meta is not None else {}
        return experiment or None, str(self.source)

    # -- logits to values ----------------------------------------------------------------------
    def fake_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """One value per input whose sigmoid is the uncalibrated P(fake)."""
        return self.module.fake_logit(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(fake) from logits, shape ``(B,)``, after temperature scaling (skipped at 1.0, so
        that uncalibrated scores stay bit-identical to the network's)."""
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature
        module = self.module
        if getattr(module, "temperature", 1.0) == 1.0:
            return module.probabilities(logits)
        # a module carrying a temperature of its own (older API): already applied above
        if module.num_classes == 1:
            return torch.sigmoid(logits[:, 0].float())
        return torch.softmax(logits.float(), dim=1)[:, module.fake_index]

    # -- scoring -------------------------------------------------------------------------------
    def check(self, options: ScoringOptions) -> None:
        if options.mc_dropout:
            check_mc_dropout(self.module, options.mc_dropout)

    def place(self, device: torch.device | str) -> Detector:
        """The module on ``device`` in eval mode (channels-last on CUDA, where the backbones'
        convolutions run faster)."""
        device = torch.device(device)
        if self._device != device:
            self.module.to(device)
            if device.type == "cuda":
                self.module.to(memory_format=torch.channels_last)
            self._device = device
        return self.module.eval()

    def release(self) -> None:
        """Move the module back to the CPU (an ensemble keeps one member on the device)."""
        self.module.to("cpu")
        self._device = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def score_images(
        self,
        samples: Sequence[str | Path] | Sequence[Sample],
        options: ScoringOptions,
        description: str = "scoring",
        output: Output | None = None,
        *,
        views: Sequence[Any] | None = None,
    ) -> Scores:
        """Score image files in order; unreadable files get NaN and an error, the rest go on.

        ``output`` maps a batch of logits to the value kept (default P(fake)). Each batch's
        dropout passes are seeded with ``options.seed`` + the index of its first input. A
        detector with a variance head also gives ``Scores.var`` (without TTA and dropout: the
        variance belongs to one deterministic pass over the un-augmented input): that of the
        logit the scores come from, with the default ``output`` the calibrated ``z / T``, so
        ``exp(log_var) / T**2``; with a custom ``output`` the raw ``exp(log_var)``.

        ``views`` (robustness sweeps): callables applied to each decoded image before the
        transform (:class:`~deepfake_detect.data.datasets.FaceImageDataset`); every file is
        decoded once, its clean image and views go through this same forward step side by side
        (TTA and dropout apply to each view), and ``Scores.views`` holds ``(1 + len(views),
        inputs)`` values, row 0 the clean view (``scores``; ``std`` and ``var`` are its own). A
        loader batch then holds ``batch_size // (1 + len(views))`` files (at least one), so
        about ``batch_size`` images go through the model at once, as without views.
        """
        from deepfake_detect.data.datasets import FaceImageDataset

        self.check(options)
        samples = _as_samples(samples)
        device = options.device
        self.place(device)
        dataset = FaceImageDataset(samples, self.transform, views)
        n_views = dataset.n_views
        loader = _loader(dataset, options, max(1, options.batch_size // n_views))
        n = len(samples)
        scores = np.full(n, np.nan, dtype=np.float64)
        view_scores = np.full((n_views, n), np.nan, dtype=np.float64) if views is not None else None
        errors: dict[int, str] = {}
        std = np.full(n, np.nan, dtype=np.float64) if options.mc_dropout else None
        variance = (self.module.predicts_variance and options.tta is None
                    and not options.mc_dropout)
        var = np.full(n, np.nan, dtype=np.float64) if variance else None
        # The temperature divides the logit behind the default scores, so its variance by T².
        var_scale = 1.0 if output is not None else 1.0 / self.temperature ** 2
        path_index = {str(s.path): i for i, s in enumerate(samples)}
        with _progress(options) as bar:
            task = bar.add_task(description, total=n)
            for batch in loader:
                for path, reason in batch["skipped"]:
                    errors[path_index[path]] = reason
                if batch["image"] is not None:
                    x = batch["image"].to(device, non_blocking=True)
                    if view_scores is not None:  # (B, V, 3, S, S): the views side by side
                        x = x.flatten(0, 1)
                    if device.type == "cuda":
                        x = x.contiguous(memory_format=torch.channels_last)
                    index = batch["index"].numpy()
                    values = score_batch(self, x, options, output, seed=options.seed + int(index[0]),
                                         variance=variance)
                    # per input of the forward, then the clean view (every n_views-th) apart
                    mean = values.mean.float().cpu().numpy()
                    if view_scores is not None:
                        view_scores[:, index] = mean.reshape(len(index), n_views).T
                    clean = slice(None, None, n_views)
                    if std is not None:
                        std[index] = values.std.float().cpu().numpy()[clean]
                    if var is not None:
                        var[index] = (values.log_var.float().exp() * var_scale).cpu().numpy()[clean]
                    scores[index] = mean[clean]
                done = len(batch["skipped"]) + (0 if batch["image"] is None else len(batch["label"]))
                bar.advance(task, done)
        return Scores(scores=scores, errors=errors, std=std, var=var, views=view_scores)

    @torch.inference_mode()
    def score_clips(
        self,
        samples: Sequence[Sample],
        options: ScoringOptions,
        description: str = "scoring clips",
        output: Output | None = None,
    ) -> VideoScores:
        """Score the videos whose frames are ``samples`` (grouped by video id, in frame order)
        with a sequence detector: each video yields ``eval_clips`` evenly spaced clips of
        ``frames`` frames ``stride`` apart; its score is the mean of its clips' values.

        A clip with an unreadable frame is left out and reported; a video none of whose clips
        could be scored gets NaN. TTA applies each view alike to every frame of a clip. With
        Monte-Carlo dropout, ``VideoScores.std`` is the std over the passes of the video's
        mean-over-clips score (the spread of the number reported); the passes of a batch are
        seeded with ``options.seed`` + the index of its first clip.
        """
        from deepfake_detect.data.transforms import build_clip_transform
        from deepfake_detect.data.video_clips import ClipDataset, group_frames, sequence_settings

        if self.input_kind != "clips":
            raise ConfigError(f"detector {self.name!r} scores single images, not clips of frames")
        self.check(options)
        pre = self.preprocessing
        seq = sequence_settings(pre)
        videos = group_frames(samples)
        dataset = ClipDataset(videos, build_clip_transform(pre), seq.frames, seq.stride,
                              train=False, eval_clips=seq.eval_clips)
        device = options.device
        self.place(device)
        loader = _loader(dataset, options)
        n_passes = options.mc_dropout
        total = np.zeros(len(videos))
        clips = np.zeros(len(videos), dtype=np.int64)
        # per pass, the sum of each video's clip values: its per-pass score is that over its clips
        pass_totals = np.zeros((n_passes, len(videos))) if n_passes else None
        errors: dict[str, str] = {}
        with _progress(options) as bar:
            task = bar.add_task(description, total=len(dataset))
            for batch in loader:
                for path, reason in batch["skipped"]:
                    errors[path] = reason
                if batch["image"] is not None:
                    x = batch["image"].to(device, non_blocking=True)
                    video = batch["video"].numpy()
                    values = score_batch(self, x, options, output,
                                         seed=options.seed + int(batch["index"][0]))
                    passes = values.passes.float().cpu().numpy()
                    if pass_totals is not None:
                        for k in range(n_passes):
                            np.add.at(pass_totals[k], video, passes[k])
                        probs = passes.mean(axis=0)
                    else:
                        probs = passes[0]
                    np.add.at(total, video, probs)
                    np.add.at(clips, video, 1)
                done = len(batch["skipped"]) + (0 if batch["image"] is None else len(batch["label"]))
                bar.advance(task, done)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(clips > 0, total / np.maximum(clips, 1), np.nan)
            std = None
            if pass_totals is not None:
                per_pass = pass_totals / np.maximum(clips, 1)
                std = np.where(clips > 0, per_pass.std(axis=0, ddof=1), np.nan)
        return VideoScores(videos, scores, clips, errors, dataset.short_videos, std)

    @torch.inference_mode()
    def crop_values(self, crops: list[np.ndarray], options: ScoringOptions,
                    output: Output | None = None) -> np.ndarray:
        """P(fake) (or ``output`` of the logits) per crop, ``(F,)``; with Monte-Carlo dropout
        one row per pass, ``(n, F)``. The crops go in chunks of ``options.batch_size``, each
        chunk's passes seeded with ``options.seed`` + the index of its first crop."""
        self.place(options.device)
        transform = self.transform
        out = []
        for start in range(0, len(crops), options.batch_size):
            x = torch.stack([transform(c) for c in crops[start : start + options.batch_size]])
            x = x.to(options.device, non_blocking=True)
            passes = score_batch(self, x, options, output, seed=options.seed + start).passes
            out.append((passes if options.mc_dropout else passes[0]).float().cpu().numpy())
        return np.concatenate(out, axis=-1).astype(np.float64)

    def score_crops(self, crops: list[np.ndarray], options: ScoringOptions) -> CropScores:
        values = self.crop_values(crops, options)
        if not options.mc_dropout:
            return CropScores(values)
        return CropScores(values.mean(axis=0), values.std(axis=0, ddof=1), values)

    def fake_logits(self, samples: Sequence[Sample], options: ScoringOptions,
                    description: str = "calibrating") -> tuple[np.ndarray, np.ndarray]:
        """(fake logits, labels) of labelled samples (NaN where an input could not be
        scored); a sequence detector gives one value per video, the mean fake logit over its
        clips (the scores evaluate reports average probabilities instead)."""
        def output(logits: torch.Tensor) -> torch.Tensor:
            return self.fake_logit(logits.float())

        if self.input_kind == "clips":
            result = self.score_clips(samples, options, description, output=output)
            labels = np.array([v.label for v in result.videos], dtype=np.int64)
        else:
            result = self.score_images(samples, options, description, output=output)
            labels = np.array([s.label for s in samples], dtype=np.int64)
        return result.scores, labels


def as_predictor(model: Any) -> Predictor:
    """``model`` as a Predictor: a detector module is wrapped (:meth:`LoadedModel.from_module`);
    a LoadedModel, an ensemble or any other Predictor is returned as it is."""
    if isinstance(model, nn.Module):
        return LoadedModel.from_module(model)
    return model


def is_sequence_detector(model: Any) -> bool:
    """Whether ``model`` (a detector module or a Predictor) scores clips of frames."""
    return as_predictor(model).input_kind == "clips"


def prepare_settings(model: Any) -> PrepareConfig:
    """The face pipeline a checkpoint was trained with (defaults for checkpoints without one);
    ``model``: a Predictor or a detector module."""
    return as_predictor(model).prepare_settings()


__all__ = [
    "INPUT_KINDS", "BatchValues", "CropScores", "LoadedModel", "Predictor", "Scores",
    "VideoScores", "as_predictor", "is_sequence_detector", "prepare_settings", "score_batch",
    "settings_from_meta",
]
