"""Temperature scaling and threshold selection on validation data (``deepfake-detect calibrate``).

A detector's fake logit z (``Detector.fake_logit``: the single logit, or l_fake - l_real for two)
gives P(fake) = sigmoid(z). Temperature scaling replaces that with sigmoid(z / T), with one T > 0
fitted to minimise the negative log-likelihood on held-out data (Guo et al., 2017). It changes
no ranking (AUC, EER, AP stay), only how far scores sit from 0 and 1. T is stored in the
checkpoint meta as ``temperature`` and ``Detector.probabilities`` applies it, so predict and
evaluate use it without options. The test split is never used: fitting on it would leak.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.evaluation.metrics import brier_score, expected_calibration_error
from deepfake_detect.calibration.thresholds import choose_threshold
from deepfake_detect.inference.ensemble import ModelSource
from deepfake_detect.inference.options import ScoringOptions
from deepfake_detect.inference.predictor import as_predictor
from deepfake_detect.outputs import atomic_write, claim_file

CALIBRATION_JSON = "calibration.json"

# T is searched in this range: beyond it the scores are all ~0.5 or all saturated, which only
# happens with degenerate validation data (e.g. perfectly separated, where NLL keeps falling).
T_MIN, T_MAX = 1e-2, 1e2
CALIBRATION_SPLITS = ("auto", "val", "all")
THRESHOLD_CHOICES = ("eer", "max_acc", "max_f1", "max_macro_f1", "fpr", "keep")


def _logits_labels(fake_logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(
        fake_logits.detach().cpu().numpy() if hasattr(fake_logits, "detach") else fake_logits,
        dtype=np.float64,
    ).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if z.shape != y.shape:
        raise DataError(f"fake logits and labels differ in length: {z.size} vs {y.size}")
    if z.size == 0:
        raise DataError("no samples to calibrate on: fake logits and labels are empty")
    if not np.all(np.isfinite(z)):
        raise DataError(f"fake logits contain {int(np.sum(~np.isfinite(z)))} NaN/inf values")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("labels must be 0 (real) or 1 (fake)")
    return z, y


def binary_nll(fake_logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under P(fake) = sigmoid(z / temperature).

    Computed from logits (log(1 + e^x) - y x), so saturated scores do not give inf.
    """
    z, y = _logits_labels(fake_logits, labels)
    x = z / float(temperature)
    return float(np.mean(np.logaddexp(0.0, x) - y * x))


def scaled_probabilities(fake_logits: Any, temperature: float = 1.0) -> np.ndarray:
    """P(fake) = sigmoid(z / temperature) in float64."""
    z = np.asarray(fake_logits, dtype=np.float64).reshape(-1) / float(temperature)
    # sigmoid through exp(-logaddexp) stays exact near 0 and 1 and never overflows
    return np.exp(-np.logaddexp(0.0, -z))


def fit_temperature(fake_logits: Any, labels: Any) -> float:
    """The T in [T_MIN, T_MAX] minimising the NLL of sigmoid(z / T) on (fake_logits, labels).

    With a = 1 / T the NLL is convex in a (the logit is linear in a), so its derivative
    mean(z * (sigmoid(a z) - y)) is increasing and a bisection on it finds the unique optimum,
    deterministically and without an optimiser's step-size settings. Needs both classes; when
    the optimum lies outside the range (separable or anti-correlated scores) the nearest bound
    is returned.
    """
    z, y = _logits_labels(fake_logits, labels)
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == y.size:
        only = "real" if n_fake == 0 else "fake"
        raise DataError(
            f"temperature scaling needs validation data with both real and fake samples, got "
            f"only {only} ({y.size}); add the other class to the calibration data"
        )

    def slope(a: float) -> float:
        return float(np.mean(z * (scaled_probabilities(z, 1.0 / a) - y)))

    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    if slope(lo) >= 0.0:
        return T_MAX
    if slope(hi) <= 0.0:
        return T_MIN
    # bisect in log a: the range spans four decades
    log_lo, log_hi = math.log(lo), math.log(hi)
    for _ in range(80):
        mid = (log_lo + log_hi) / 2.0
        if slope(math.exp(mid)) < 0.0:
            log_lo = mid
        else:
            log_hi = mid
    return float(1.0 / math.exp((log_lo + log_hi) / 2.0))


def calibration_report(fake_logits: Any, labels: Any, temperature: float) -> dict[str, float]:
    """nll, ece (15 bins) and brier of sigmoid(z / temperature) against the labels."""
    z, y = _logits_labels(fake_logits, labels)
    p = scaled_probabilities(z, temperature)
    return {
        "nll": binary_nll(z, y, temperature),
        "ece": expected_calibration_error(y, p),
        "brier": brier_score(y, p),
    }


def calibrated_threshold(
    fake_logits: Any,
    labels: Any,
    temperature: float,
    strategy: str = "eer",
    target_fpr: float = 0.01,
    old_threshold: float = 0.5,
    old_temperature: float = 1.0,
) -> float:
    """Threshold on the calibrated scores sigmoid(z / temperature) for `strategy`.

    ``keep`` keeps the old decisions: the old threshold on sigmoid(z / old_temperature) moved to
    the new scale (temperature scaling is monotone, so the same samples are called fake).
    ``fpr`` uses `target_fpr`; the rest are those of :func:`choose_threshold`.
    """
    if strategy not in THRESHOLD_CHOICES:
        raise ConfigError(
            f"threshold strategy {strategy!r}: choose one of {', '.join(THRESHOLD_CHOICES)}"
        )
    if strategy == "keep":
        t = min(max(float(old_threshold), 1e-12), 1.0 - 1e-12)
        logit = math.log(t) - math.log1p(-t)
        return float(scaled_probabilities([logit * old_temperature], temperature)[0])
    z, y = _logits_labels(fake_logits, labels)
    value = target_fpr if strategy == "fpr" else 0.5
    scores = scaled_probabilities(z, temperature)
    return choose_threshold(y.astype(np.int64), scores, strategy, value)


def select_calibration_split(samples: Sequence[Any], split: str, dataset: str) -> list[Any]:
    """The samples to calibrate on: ``val``, ``all``, or ``auto`` (val when the dataset has a
    val split; every sample when it has no splits at all). The test split is refused."""
    if split == "test":
        raise DataError(
            "--split test: calibration fits the temperature and threshold to the data it sees, "
            "so fitting on the test split would leak it into the test results; calibrate on "
            "validation data (--split val, or a separate --data folder) and keep test for evaluate"
        )
    if split not in CALIBRATION_SPLITS:
        raise DataError(f"--split {split!r}: choose one of {', '.join(CALIBRATION_SPLITS)}")
    if split == "auto":
        if not any(s.split for s in samples):
            return list(samples)
        if not any(s.split == "val" for s in samples):
            found = sorted({s.split or "none" for s in samples})
            raise DataError(
                f"{dataset}: has splits ({', '.join(found)}) but no 'val' split; --split auto "
                "will not fall back to train or test data. Pass a validation folder, or --split "
                "all to use every sample on purpose"
            )
        split = "val"
    from deepfake_detect.evaluation.evaluate import select_split

    return select_split(samples, split, dataset)


@dataclass
class CalibrateRequest:
    """Everything ``deepfake-detect calibrate`` is asked to do (see
    :func:`deepfake_detect.calibration.calibrate.calibrate`).

    ``model``: what ``--checkpoint`` names: one checkpoint (a temperature and a threshold are
    fitted, ``out`` a ``.safetensors``) or an ensemble (weights and a threshold, ``out`` an
    ensemble ``.yaml``); ``data``: validation folders or CSVs, pooled; ``options``: how the
    samples are scored (batch size, workers, device, precision, progress).
    """

    model: ModelSource
    data: Sequence[str | Path]
    out: Path
    split: str = "auto"
    threshold_strategy: str = "eer"
    target_fpr: float = 0.01
    options: ScoringOptions = field(default_factory=ScoringOptions)
    force: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    def check(self) -> None:
        """Refuse bad options before any model is loaded or file read."""
        _check_arguments(self.threshold_strategy, self.target_fpr, self.split, self.data)
        self.model.check()

    @property
    def inputs(self) -> list[Any]:
        """Every path read: no output may replace one of them."""
        return [*self.model.inputs, *self.data]


def _check_arguments(
    threshold_strategy: str, target_fpr: float, split: str, data: Sequence[Any],
) -> None:
    """Refuse bad options before any model is loaded or file read."""
    if threshold_strategy not in THRESHOLD_CHOICES:
        raise ConfigError(
            f"--threshold-strategy {threshold_strategy!r}: choose one of "
            f"{', '.join(THRESHOLD_CHOICES)}"
        )
    if not 0.0 <= target_fpr < 1.0:
        raise ConfigError(f"--target-fpr {target_fpr}: must lie in [0, 1), e.g. 0.01 for 1%")
    if split == "test" or split not in CALIBRATION_SPLITS:
        select_calibration_split([], split, "")  # raises with the explanation
    if not data:
        raise DataError("give at least one --data folder or CSV with validation samples")


def claim_calibration_outputs(out: Path, inputs: Sequence[str | Path], force: bool) -> None:
    """Refuse, before any work, an ``out`` (or ``calibration.json`` beside it) that is an input
    or a file this tool did not write."""
    claim_file(out, inputs=inputs, force=force)
    claim_file(out.parent / CALIBRATION_JSON, inputs=inputs, force=force,
               what=f"{CALIBRATION_JSON} beside --out:")


def write_calibration_json(out: Path, result: Any) -> None:
    atomic_write(out.parent / CALIBRATION_JSON,
                 json.dumps({"tool": "deepfake-detect", **asdict(result)}, indent=2))


def calibration_samples(
    model: Any, data: Sequence[str | Path], split: str, out_dir: Path, progress: bool = True
) -> list[Any]:
    """The labelled validation samples of every ``data`` path, pooled (see
    :func:`select_calibration_split`). Videos in dataset folders are cut into faces the way
    the model (a Predictor or a detector module) was trained, reusing the training run's
    crops when they are there (as evaluate does)."""
    from deepfake_detect.data.dataset_videos import gather_samples
    from deepfake_detect.evaluation.evaluate import _faces_cache

    predictor = as_predictor(model)
    chosen: list[Any] = []
    experiment = predictor.meta.experiment if predictor.meta is not None else {}
    faces_cache, cache_root = _faces_cache(experiment, out_dir)
    settings = predictor.prepare_settings()
    for path in data:
        gathered = gather_samples(
            [path], prepare=settings, faces_cache=faces_cache,
            cache_root=cache_root, progress=progress,
        )
        samples = gathered.samples
        name = samples[0].dataset if samples else Path(path).stem
        if not samples:
            raise DataError(f"{path}: no labelled samples found to calibrate on")
        chosen += select_calibration_split(samples, split, name)
    if any(s.label not in (0, 1) for s in chosen):
        raise DataError("calibration needs labelled samples (real/fake folders or a label column)")
    return chosen


def score_fake_logits(
    detector: Any,
    samples: Sequence[Any],
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    *,
    options: ScoringOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(fake logits, labels) of the samples that could be scored, for a model (a
    :class:`LoadedModel` or a detector module); the options one by one (the older form) or as
    ``options``.

    A video detector gives one value per video: the mean fake logit over its clips (the scores
    evaluate reports average probabilities instead, so the fit is an approximation there).
    """
    if options is None:
        options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                                 progress=progress)
    z, labels = as_predictor(detector).fake_logits(samples, options, "calibrating")
    ok = ~np.isnan(z)
    if not ok.any():
        raise DataError(f"none of the {ok.size} calibration inputs could be scored")
    return z[ok], labels[ok]


@dataclass(kw_only=True)
class FitSummary:
    """What a calibration saw and chose, shared by one checkpoint and an ensemble: the data,
    the threshold before and after, and validation figures (``before`` / ``after``)."""

    out: str
    data: list[str]
    split: str
    n: int
    n_real: int
    n_fake: int
    threshold_before: float
    threshold: float
    threshold_strategy: str
    target_fpr: float | None
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class CalibrationResult(FitSummary):
    """What ``calibrate`` fitted and how the validation scores changed."""

    checkpoint: str
    temperature_before: float
    temperature: float

    def meta(self) -> dict[str, Any]:
        """The ``calibration`` entry of the checkpoint meta."""
        return {
            "data": self.data, "split": self.split, "n": self.n,
            **{f"{k}_before": v for k, v in self.before.items()},
            **{f"{k}_after": v for k, v in self.after.items()},
            "threshold_strategy": self.threshold_strategy, "target_fpr": self.target_fpr,
            "notes": self.notes,
        }

    @property
    def title(self) -> str:
        return "calibration"

    def table(self) -> list[tuple[str, str, str]]:
        """(quantity, before, after) rows for printing."""
        rows = [("temperature", f"{self.temperature_before:.4g}", f"{self.temperature:.4g}"),
                ("threshold", f"{self.threshold_before:.4g}", f"{self.threshold:.4g}")]
        for key in ("nll", "ece", "brier"):
            rows.append((key, f"{self.before[key]:.4f}", f"{self.after[key]:.4f}"))
        return rows


def calibrate_model(request: CalibrateRequest) -> CalibrationResult:
    """Fit temperature scaling and a threshold for the one checkpoint of ``request`` on its
    validation data; write a new checkpoint.

    ``request.out`` (a ``.safetensors``) gets the detector with meta ``temperature``,
    ``threshold`` and ``calibration``; ``calibration.json`` beside it holds the same figures.
    The samples of all data paths are pooled: one temperature per model. With a model config
    the checkpoint may be any weights file that detector reads (as in evaluate).
    """
    from deepfake_detect.inference.predictor import LoadedModel
    from deepfake_detect.models.checkpoint import export_safetensors

    request.check()
    out, data = request.out, request.data
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the calibrated checkpoint must be a .safetensors file")
    claim_calibration_outputs(out, request.inputs, request.force)

    source = request.model
    model = LoadedModel.load(source.checkpoints[0], source.config)
    old_t, old_threshold = model.temperature, model.threshold
    chosen = calibration_samples(model, data, request.split, out.parent,
                                 request.options.progress)
    z, y = score_fake_logits(model, chosen, options=request.options)
    new_t = fit_temperature(z, y)
    threshold_strategy, target_fpr = request.threshold_strategy, request.target_fpr
    threshold = calibrated_threshold(
        z, y, new_t, threshold_strategy, target_fpr, old_threshold=old_threshold,
        old_temperature=old_t,
    )
    notes = []
    if new_t in (T_MIN, T_MAX):
        # At a bound the NLL had no interior minimum: perfectly separated (T_MIN) or inverted
        # (T_MAX) validation scores. The scores written would be near 0/1 or near 0.5 for all.
        notes.append(
            f"the temperature hit its bound {new_t:g}: the validation scores are "
            + ("perfectly separated, so the NLL keeps falling as scores saturate"
               if new_t == T_MIN else "ranked the wrong way round")
            + "; calibrate on more (or harder) validation data for a meaningful temperature"
        )
    result = CalibrationResult(
        checkpoint=str(source.checkpoints[0]), out=str(out), data=[str(d) for d in data],
        split=request.split, n=int(y.size), n_real=int(np.sum(y == 0)),
        n_fake=int(np.sum(y == 1)), temperature_before=old_t, temperature=new_t,
        threshold_before=old_threshold, threshold=threshold,
        threshold_strategy=threshold_strategy,
        target_fpr=float(target_fpr) if threshold_strategy == "fpr" else None,
        before=calibration_report(z, y, old_t), after=calibration_report(z, y, new_t),
        notes=notes,
    )
    meta = model.meta.model_copy(
        update={"temperature": new_t, "threshold": threshold, "calibration": result.meta()})
    export_safetensors(model.module, out, meta)
    write_calibration_json(out, result)
    return result


def calibrate_checkpoint(
    checkpoint: str | Path,
    data: Sequence[str | Path],
    out: str | Path,
    split: str = "auto",
    threshold_strategy: str = "eer",
    target_fpr: float = 0.01,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    config: str | Path | None = None,
    force: bool = False,
) -> CalibrationResult:
    """:func:`calibrate_model` with the request given option by option (the older form)."""
    _check_arguments(threshold_strategy, target_fpr, split, data)
    options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                             progress=progress)
    return calibrate_model(CalibrateRequest(
        model=ModelSource([checkpoint], config), data=data, out=Path(out), split=split,
        threshold_strategy=threshold_strategy, target_fpr=target_fpr, options=options,
        force=force,
    ))
