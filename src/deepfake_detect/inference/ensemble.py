"""Ensembles of image detectors: several checkpoints scored one after another, votes combined.

Each member keeps its own preprocessing (input size, mean/std, temperature): the inputs are
read once per member with that member's transform, so members trained at 224 and 380 pixels,
or with ImageNet and CLIP normalisation, combine correctly. Only one member sits on the device
at a time, so an ensemble needs no more accelerator memory than its largest member.

Methods (``EnsembleConfig.method``), with weights ``w`` normalised to sum 1:

* ``soft`` - ``sum_i w_i p_i``, the weighted mean of the members' P(fake);
* ``logits`` - ``sigmoid(sum_i w_i z_i / T)``, with ``z_i`` member i's (temperature-scaled) fake
  logit and ``T`` the ensemble's own temperature (1 unless calibrated);
* ``hard`` - ``sum_i w_i [p_i > t_i]``, the weighted share of members calling the input fake at
  their own thresholds ``t_i``. With the default ensemble threshold 0.5 an input is fake when
  more than half of the weighted votes say so (a tie is real, as for any score equal to the
  threshold).

``score_std`` of an ensemble is the standard deviation of the members' P(fake) (unbiased, over
members, unweighted): how much the members disagree about an input.

Weights are given (``--weights`` or the ensemble file) or fitted on validation data by
``deepfake-detect calibrate`` (:func:`deepfake_detect.calibration.ensemble.fit_weights`), which writes an ensemble file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfake_detect.config.schema import EnsembleConfig, EnsembleMember, PrepareConfig
from deepfake_detect.errors import ConfigError
from deepfake_detect.outputs import atomic_write
from deepfake_detect.inference.decisions import predict_labels
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import (
    CropScores,
    LoadedModel,
    Output,
    Predictor,
    Scores,
    VideoScores,
    as_predictor,
)
from deepfake_detect.inference.tta import TTASpec
from deepfake_detect.models.checkpoint_meta import CheckpointMeta
from deepfake_detect.models.detector import Detector

ENSEMBLE_METHODS = ("soft", "hard", "logits")
# Probabilities are kept this far from 0 and 1 where a log is taken (fitting the weights).
_EPS = 1e-7


@dataclass
class Member:
    """One checkpoint of an ensemble: its short name, path, loaded model and weight."""

    name: str
    checkpoint: str
    model: LoadedModel
    weight: float
    config: str | None = None

    def __post_init__(self) -> None:
        self.model = as_predictor(self.model)  # a bare detector module is wrapped

    @property
    def detector(self) -> Detector:
        """The member's detector module."""
        return self.model.module


@dataclass
class EnsembleScores(Scores):
    """:class:`Scores` of the ensemble: ``members`` holds each member's P(fake), shape
    (members, inputs), and ``std`` their spread."""


def is_ensemble_file(path: str | Path) -> bool:
    """A YAML file with a top-level ``ensemble`` section.

    A .yaml that cannot be read as YAML is not one: loading it as a checkpoint then says what
    the file is instead.
    """
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return False
    from deepfake_detect.config.loading import read_yaml

    try:
        raw = read_yaml(path)
    except (ConfigError, OSError, UnicodeError):
        return False
    return isinstance(raw, dict) and "ensemble" in raw


def _ensemble_cycle(start: Path, limit: int = 32) -> list[Path] | None:
    """The chain of ensemble files from ``start`` back to a file already on it, if members of
    ensemble files lead around in a circle (``a.yaml`` naming ``b.yaml`` naming ``a.yaml``)."""
    chain: list[Path] = []

    def visit(path: Path) -> list[Path] | None:
        key = path.resolve()
        seen = [p.resolve() for p in chain]
        if key in seen:
            return [*chain[seen.index(key):], path]
        if len(chain) >= limit or not is_ensemble_file(path):
            return None
        try:
            members = read_ensemble_file(path).members
        except ConfigError:
            return None
        chain.append(path)
        for m in members:
            found = visit(Path(m.checkpoint))
            if found:
                return found
        chain.pop()
        return None

    return visit(Path(start))


def check_ensemble_members(path: str | Path, cfg: EnsembleConfig) -> None:
    """Refuse members of the ensemble file ``path`` that are ensemble files themselves (the
    file itself, or another one, in a cycle or not), before any checkpoint is loaded."""
    path = Path(path)
    for m in cfg.members:
        member = Path(m.checkpoint)
        if member.resolve() == path.resolve():
            raise ConfigError(
                f"{path}: member {m.checkpoint} is this ensemble file itself; an ensemble "
                "member must be a checkpoint, not an ensemble file"
            )
        if not is_ensemble_file(member):
            continue
        cycle = _ensemble_cycle(member)
        if cycle:
            loop = " -> ".join(str(p) for p in cycle)
            raise ConfigError(
                f"{path}: member {member} is an ensemble file, and ensemble files name each "
                f"other in a cycle ({loop}); an ensemble member must be a checkpoint, not "
                "another ensemble file"
            )
        raise ConfigError(
            f"{path}: member {member} is another ensemble file; an ensemble member must be a "
            "checkpoint, not another ensemble file (list that file's members here instead)"
        )


def read_ensemble_file(path: str | Path) -> EnsembleConfig:
    """The validated ``ensemble`` section; member paths are resolved against the file's folder."""
    from deepfake_detect.config.loading import read_yaml, validate

    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("ensemble"), dict):
        raise ConfigError(
            f"{path}: an ensemble file needs an 'ensemble:' section with 'members:' (see the "
            "README, Ensembles)"
        )
    cfg = validate(EnsembleConfig, raw["ensemble"], "ensemble", str(path))
    base = path.parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    members = [
        m.model_copy(update={"checkpoint": resolve(m.checkpoint) or m.checkpoint,
                             "config": resolve(m.config) or m.config})
        for m in cfg.members
    ]
    return cfg.model_copy(update={"members": members})


def write_ensemble_file(cfg: EnsembleConfig, path: str | Path) -> Path:
    """Write ``cfg`` as an ensemble file, member paths relative to its folder where possible
    (so the file moves with the checkpoints)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump(mode="json", exclude_none=True)
    for member in data["members"]:
        for key in ("checkpoint", "config"):
            if key in member:
                member[key] = _relative(Path(member[key]), path.parent)
    atomic_write(path, yaml.safe_dump({"ensemble": data}, sort_keys=False))
    return path


def _relative(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(p.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(p.resolve())


def _member_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the file stem, or the run folder for the generic names a run writes."""
    generic = {"model", "best", "last", "adapter", "checkpoint"}
    names = []
    for p in paths:
        p = Path(p)
        stem = p.stem if p.suffix else p.name
        if stem in generic or stem.startswith("epoch="):
            parents = [q.name for q in p.resolve().parents if q.name not in ("checkpoints", "")]
            stem = parents[0] if parents else stem
        names.append(stem)
    counts: dict[str, int] = {}
    unique = []
    for n in names:
        counts[n] = counts.get(n, 0) + 1
        unique.append(n if names.count(n) == 1 else f"{n}#{counts[n]}")
    return unique


def parse_weights(text: str | Sequence[float] | None, n: int) -> list[float] | None:
    """``--weights 2,1,1`` as floats, one per checkpoint, >= 0, not all 0."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise ConfigError(f"--weights {text!r}: give numbers separated by commas, e.g. 2,1") from None
    else:
        values = [float(v) for v in text]
    if len(values) != n:
        raise ConfigError(f"--weights: {len(values)} weights for {n} checkpoints; give one per checkpoint")
    if any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"--weights {values}: weights must be finite numbers >= 0, not all 0")
    return values


class Ensemble:
    """Several image detectors whose scores are combined (see the module docstring); a
    :class:`~deepfake_detect.inference.predictor.Predictor`."""

    input_kind = "images"  # members are image detectors (video detectors are refused)
    default_tta = None  # the members' recipes may differ: views only when asked for

    def __init__(
        self,
        members: Sequence[Member],
        method: str = "soft",
        threshold: float | None = None,
        temperature: float = 1.0,
        calibration: dict[str, Any] | None = None,
    ) -> None:
        if method not in ENSEMBLE_METHODS:
            raise ConfigError(f"ensemble method {method!r}: choose one of {', '.join(ENSEMBLE_METHODS)}")
        if len(members) < 2:
            raise ConfigError("an ensemble needs two or more checkpoints")
        for m in members:
            if m.model.input_kind != "images":
                raise ConfigError(
                    f"ensemble member {m.checkpoint}: the video detector {m.model.name!r} "
                    "scores clips, not images; ensembles combine image detectors (evaluate it "
                    "on its own)"
                )
        weights = np.asarray([m.weight for m in members], dtype=np.float64)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ConfigError("ensemble weights must be >= 0 and not all 0")
        self.members = list(members)
        self.weights = weights / weights.sum()
        self.method = method
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.temperature = float(temperature)
        self.calibration = calibration

    # The face pipeline (videos in dataset folders, raw videos to predict on) and the default
    # video aggregation come from the first member: the crops must be the same for all.
    @property
    def primary(self) -> LoadedModel:
        return self.members[0].model

    @property
    def meta(self) -> CheckpointMeta | None:
        return self.primary.meta

    @property
    def checkpoint_meta(self) -> CheckpointMeta | None:  # the older name of meta
        return self.meta

    @property
    def default_aggregation(self) -> str:
        return self.primary.default_aggregation

    @property
    def transform(self):
        """The first member's image transform (each member reads with its own)."""
        return self.primary.transform

    def prepare_settings(self) -> PrepareConfig:
        return self.primary.prepare_settings()

    def config(self) -> EnsembleConfig:
        return EnsembleConfig(
            method=self.method,
            threshold=self.threshold,
            temperature=self.temperature,
            members=[
                EnsembleMember(checkpoint=Path(m.checkpoint), config=m.config and Path(m.config),
                               weight=float(w))
                for m, w in zip(self.members, self.weights)
            ],
            calibration=self.calibration,
        )

    def describe(self) -> dict[str, Any]:
        """The ensemble as recorded in metrics.json and run.json."""
        return {
            "method": self.method,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "members": [
                {"name": m.name, "checkpoint": m.checkpoint, "config": m.config,
                 "weight": float(w), "threshold": float(m.model.threshold),
                 "input_size": m.model.input_size}
                for m, w in zip(self.members, self.weights)
            ],
        }

    def run_record(self) -> tuple[dict[str, Any] | None, list[str]]:
        return ({"ensemble": self.config().model_dump(mode="json")},
                [m.checkpoint for m in self.members])

    # -- combining ---------------------------------------------------------------------------
    def member_output(self, model: LoadedModel | Detector) -> Output:
        """What each member contributes per input: its fake logit over its temperature for
        ``logits``, its P(fake) otherwise (a TTA spec averages this value over the views)."""
        model = as_predictor(model)
        if self.method == "logits":
            return lambda logits: model.fake_logit(logits.float()) / model.temperature
        return model.probabilities

    def member_probabilities(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.method == "logits":
            return np.exp(-np.logaddexp(0.0, -values))
        return values

    def combine(self, values: np.ndarray) -> np.ndarray:
        """Ensemble scores from the members' values, shape (members, inputs) -> (inputs,)."""
        values = np.asarray(values, dtype=np.float64)
        w = self.weights[:, None]
        if self.method == "soft":
            return (w * values).sum(0)
        if self.method == "logits":
            z = (w * values).sum(0) / self.temperature
            return np.exp(-np.logaddexp(0.0, -z))
        votes = np.stack([
            predict_labels(np.nan_to_num(v), m.model.threshold)
            for v, m in zip(values, self.members)
        ]).astype(np.float64)
        votes[np.isnan(values)] = np.nan
        return (w * votes).sum(0)

    def disagreement(self, values: np.ndarray) -> np.ndarray:
        """Standard deviation of the members' P(fake) per input."""
        return np.std(self.member_probabilities(values), axis=0, ddof=1)

    # -- scoring (the Predictor protocol) ------------------------------------------------------
    def check(self, options: ScoringOptions) -> None:
        """Monte-Carlo dropout is refused: an ensemble's ``score_std`` is already the spread
        of its members' scores. TTA applies to every member."""
        if options.mc_dropout:
            raise ConfigError(
                "--mc-dropout with an ensemble: leave it out; an ensemble's score_std is already "
                "the spread of its members' scores"
            )

    def place(self, device: Any) -> None:
        """Every member on ``device`` (face crops are scored by all members in turn)."""
        for m in self.members:
            m.model.place(device)

    def member_values(
        self, samples: Sequence[Any], options: ScoringOptions, description: str = "scoring",
        *, views: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """(members, inputs) values of :meth:`member_output` (NaN where unreadable) and the
        errors. Each member reads the inputs with its own transform; only one member is on
        the device at a time. With ``views`` (see :meth:`LoadedModel.score_images`) the values
        are (members, 1 + len(views), inputs), view 0 the clean one: each member applies the
        views to the decoded image before its own transform."""
        self.check(options)
        shape = (len(samples),) if views is None else (1 + len(views), len(samples))
        values = np.full((len(self.members), *shape), np.nan, dtype=np.float64)
        errors: dict[int, str] = {}
        for i, m in enumerate(self.members):
            result = m.model.score_images(samples, options, f"{description} [{m.name}]",
                                          output=self.member_output(m.model), views=views)
            values[i] = result.scores if views is None else result.views
            for index, reason in result.errors.items():
                errors.setdefault(index, reason)
            m.model.release()  # one member on the device at a time
        return values, errors

    def score_images(self, samples: Sequence[Any], options: ScoringOptions,
                     description: str = "scoring", *, views: Sequence[Any] | None = None
                     ) -> EnsembleScores:
        """``scores`` the ensemble score, ``std`` the members' disagreement, ``members`` each
        member's P(fake). An input that any member could not read gets NaN. With ``views``,
        ``views`` holds the ensemble score per view ``(1 + len(views), inputs)``, row 0 the
        clean view (``scores``; ``std`` and ``members`` are the clean view's)."""
        values, errors = self.member_values(samples, options, description, views=views)
        per_view = values if views is not None else values[:, None]  # (members, V, inputs)
        combined = np.stack([self._combined(per_view[:, v]) for v in range(per_view.shape[1])])
        clean = per_view[:, 0]
        bad = np.isnan(clean).any(axis=0)
        std = self.disagreement(np.where(bad, 0.0, clean))
        std[bad] = np.nan
        return EnsembleScores(scores=combined[0], errors=errors, std=std,
                              members=self.member_probabilities(clean),
                              views=combined if views is not None else None)

    def _combined(self, values: np.ndarray) -> np.ndarray:
        """:meth:`combine` of (members, inputs) values, NaN where any member has none."""
        bad = np.isnan(values).any(axis=0)
        scores = self.combine(np.where(bad, 0.0, values))
        scores[bad] = np.nan
        return scores

    def score_clips(self, samples: Sequence[Any], options: ScoringOptions,
                    description: str = "scoring clips") -> VideoScores:
        raise ConfigError("an ensemble combines image detectors; it does not score clips")

    def score_crops(self, crops: list[np.ndarray], options: ScoringOptions) -> CropScores:
        """Every member scores the same crops (cut with the first member's face settings),
        each with its own transform; the per-crop spread is the members' disagreement."""
        self.check(options)
        values = np.stack([m.model.crop_values(crops, options, self.member_output(m.model))
                           for m in self.members])
        members = self.member_probabilities(values)
        return CropScores(self.combine(values), members.std(axis=0, ddof=1), members)

    def score_files(
        self,
        samples: Sequence[Any],
        batch_size: int = 64,
        num_workers: int | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        description: str = "scoring",
        tta: TTASpec | str | None = None,
    ) -> EnsembleScores:
        """:meth:`score_images` with the options given one by one (the older form)."""
        options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                                 tta=tta, progress=progress)
        return self.score_images(samples, options, description)


def check_scoring_options(
    model: Predictor | Detector, tta: TTASpec | str | None, mc_dropout: int
) -> TTASpec | None:
    """Parse ``tta`` and check ``mc_dropout`` for ``model`` before any input is read (the
    older form of ``ScoringOptions`` + :meth:`Predictor.check`): a bad spec, a detector without
    dropout, or Monte-Carlo dropout asked of an ensemble raise :class:`ConfigError`."""
    options = ScoringOptions(tta=tta, mc_dropout=mc_dropout)
    as_predictor(model).check(options)
    return options.tta


def load_ensemble(
    checkpoints: Sequence[str | Path],
    method: str | None = None,
    weights: str | Sequence[float] | None = None,
    config: str | Path | None = None,
    threshold: float | None = None,
) -> Ensemble:
    """An ensemble from an ensemble file (one path) or from several checkpoints.

    ``method`` / ``weights`` override the file's; ``config`` (a model YAML) applies to every
    checkpoint given directly (members needing different configs go in an ensemble file).
    """
    calibration = None
    temperature = 1.0
    if len(checkpoints) == 1 and is_ensemble_file(checkpoints[0]):
        if config is not None:
            raise ConfigError(
                f"--config with the ensemble file {checkpoints[0]}: give each member's config "
                "in the file (members[].config)"
            )
        cfg = read_ensemble_file(checkpoints[0])
        check_ensemble_members(checkpoints[0], cfg)
        entries = [(m.checkpoint, m.config, m.weight) for m in cfg.members]
        method = method or cfg.method
        threshold = cfg.threshold if threshold is None else threshold
        temperature, calibration = cfg.temperature, cfg.calibration
        if weights is not None or method != cfg.method:
            calibration = None  # the fitted figures no longer describe this ensemble
            temperature = 1.0 if method != cfg.method else temperature
    else:
        for c in checkpoints:
            if is_ensemble_file(c):
                raise ConfigError(f"{c}: an ensemble file must be the only --checkpoint")
        entries = [(Path(c), config and Path(config), 1.0) for c in checkpoints]
        method = method or "soft"
    given = parse_weights(weights, len(entries))
    if given is not None:
        entries = [(c, cf, w) for (c, cf, _), w in zip(entries, given)]
    names = _member_names([c for c, _, _ in entries])
    members = []
    for name, (ckpt, cfg_path, weight) in zip(names, entries):
        members.append(Member(name, str(ckpt), load_one(ckpt, cfg_path), float(weight),
                              None if cfg_path is None else str(cfg_path)))
    return Ensemble(members, method, threshold, temperature, calibration)


@dataclass
class ModelSource:
    """What ``--checkpoint`` (repeatable), ``--config``, ``--ensemble`` and ``--weights`` name:
    one checkpoint, or an ensemble (several checkpoints, or one ensemble file). Which of the
    two is decided here, once, from the paths (:attr:`kind`); :meth:`load` gives the
    :class:`~deepfake_detect.inference.predictor.Predictor`."""

    checkpoints: Sequence[str | Path] | str | Path
    config: str | Path | None = None
    method: str | None = None  # ensemble voting: soft, hard, logits
    weights: str | Sequence[float] | None = None

    def __post_init__(self) -> None:
        given = self.checkpoints
        self.checkpoints = [Path(given)] if isinstance(given, (str, Path)) else [Path(c) for c in given]

    @property
    def kind(self) -> str:
        """``ensemble`` (several checkpoints, or an ensemble file) or ``model``."""
        paths = self.checkpoints
        return "ensemble" if len(paths) > 1 or (paths and is_ensemble_file(paths[0])) else "model"

    @property
    def inputs(self) -> list[Path]:
        """The files read (for output claims: an output never replaces one of them)."""
        return [*self.checkpoints, *([Path(self.config)] if self.config else [])]

    def check(self) -> None:
        """Refuse, before anything is loaded, options that do not fit what is named."""
        if not self.checkpoints:
            raise ConfigError("give a --checkpoint")
        if self.kind == "model" and (self.method is not None or self.weights is not None):
            raise ConfigError(
                "--ensemble / --weights need several --checkpoint options (or an ensemble file)"
            )
        if self.method is not None and self.method not in ENSEMBLE_METHODS:
            raise ConfigError(
                f"--ensemble {self.method!r}: choose one of {', '.join(ENSEMBLE_METHODS)}")
        if len(self.checkpoints) > 1:
            parse_weights(self.weights, len(self.checkpoints))

    def load(self) -> Predictor:
        """One model (a ``.onnx`` path: an :class:`~deepfake_detect.inference.onnx_model.OnnxModel`
        run by ONNX Runtime) or an ensemble, whose members may be ``.onnx`` files too."""
        self.check()
        if self.kind == "model":
            return load_one(self.checkpoints[0], self.config)
        return load_ensemble(self.checkpoints, self.method, self.weights, self.config)


def load_one(path: str | Path, config: str | Path | None = None) -> LoadedModel:
    """One checkpoint ready to score: a ``.onnx`` file exported by this tool runs in ONNX
    Runtime (:class:`~deepfake_detect.inference.onnx_model.OnnxModel`), anything else is read
    by :meth:`LoadedModel.load`."""
    from deepfake_detect.models.onnx_export import is_onnx_path

    if is_onnx_path(path):
        from deepfake_detect.inference.onnx_model import OnnxModel

        return OnnxModel.load(path, config)
    return LoadedModel.load(path, config)


def load_predictor(
    checkpoints: str | Path | Sequence[str | Path],
    config: str | Path | None = None,
    method: str | None = None,
    weights: str | Sequence[float] | None = None,
) -> Predictor:
    """What ``--checkpoint`` names, ready to score: a :class:`LoadedModel`, or an
    :class:`Ensemble` (several checkpoints, or an ensemble file)."""
    return ModelSource(checkpoints, config, method, weights).load()


load_model = load_predictor  # the older name
