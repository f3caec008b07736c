"""``deepfake-detect calibrate`` for an ensemble: fit the voting weights and the threshold on
validation data and write an ensemble file that predict and evaluate read.

The members keep their own temperatures and thresholds (calibrate each member first to change
those). Soft and logits weights are fitted by minimising the validation negative log-likelihood
of the ensemble score (:func:`fit_weights`); given weights
(``--weights``) are kept, and only the threshold is chosen. The test split is refused, as for
a single checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfake_detect.errors import ConfigError, DataError
from deepfake_detect.calibration.temperature import (
    CalibrateRequest,
    FitSummary,
    _check_arguments,
    claim_calibration_outputs,
    write_calibration_json,
    calibration_samples,
)
from deepfake_detect.evaluation.metrics import brier_score, expected_calibration_error, roc_auc
from deepfake_detect.calibration.thresholds import choose_threshold
from deepfake_detect.inference.ensemble import (
    ENSEMBLE_METHODS,
    ModelSource,
    load_ensemble,
    write_ensemble_file,
)
from deepfake_detect.inference.options import ScoringOptions

_EPS = 1e-7


def _report(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    p = np.clip(scores, _EPS, 1 - _EPS)
    nll = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return {"nll": nll, "ece": expected_calibration_error(labels, scores),
            "brier": brier_score(labels, scores), "auc": roc_auc(labels, scores)}


@dataclass(kw_only=True)
class EnsembleCalibration(FitSummary):
    """What calibrate fitted for an ensemble, with the validation figures before and after."""

    method: str
    members: list[str]
    member_auc: list[float]
    weights_before: list[float]
    weights: list[float]
    fitted: bool
    temperature: float

    @property
    def title(self) -> str:
        return f"ensemble ({self.method}) calibration"

    def table(self) -> list[tuple[str, str, str]]:
        """(quantity, before, after) rows for printing."""
        rows = [(f"weight {name} (AUC {auc:.4f})", f"{b:.4f}", f"{a:.4f}")
                for name, auc, b, a in zip(self.members, self.member_auc, self.weights_before,
                                           self.weights)]
        if self.method == "logits":
            rows.append(("temperature", "1", f"{self.temperature:.4g}"))
        rows.append(("threshold", f"{self.threshold_before:.4g}", f"{self.threshold:.4g}"))
        for key in ("auc", "nll", "ece", "brier"):
            rows.append((key, f"{self.before[key]:.4f}", f"{self.after[key]:.4f}"))
        return rows


def fit_weights(values: np.ndarray, labels: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    """Weights (summing to 1) and, for ``logits``, a temperature minimising the validation
    negative log-likelihood of the ensemble score.

    ``values``: (members, inputs) member values as :meth:`Ensemble.member_output` gives them
    (P(fake) for soft, fake logits for logits). Hard voting has no likelihood to fit (its score
    moves in steps), so its weights must be given.
    """
    if method == "hard":
        raise ConfigError(
            "hard voting weights can not be fitted (the vote share has no smooth likelihood); "
            "give --weights, or fit with --ensemble soft or logits"
        )
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(f"ensemble method {method!r}: choose one of {', '.join(ENSEMBLE_METHODS)}")
    v = torch.as_tensor(np.asarray(values, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if v.ndim != 2 or v.shape[1] != y.numel():
        raise DataError(f"member values {tuple(v.shape)} do not match {y.numel()} labels")
    if not (0 < float(y.sum()) < y.numel()):
        raise DataError("fitting ensemble weights needs validation data with real and fake samples")
    # softmax keeps the weights on the simplex; the log-temperature keeps T > 0. Starting from
    # equal weights and T = 1, L-BFGS on this smooth, low-dimensional problem is deterministic.
    a = torch.zeros(v.shape[0], dtype=torch.float64, requires_grad=True)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=method == "logits")
    params = [a, log_t] if method == "logits" else [a]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        w = torch.softmax(a, 0)[:, None]
        if method == "soft":
            p = (w * v).sum(0).clamp(_EPS, 1 - _EPS)
            return -(y * p.log() + (1 - y) * (1 - p).log()).mean()
        z = (w * v).sum(0) / log_t.exp()
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    weights = torch.softmax(a.detach(), 0).numpy()
    return weights, float(log_t.detach().exp()) if method == "logits" else 1.0


def calibrate_weights(request: CalibrateRequest) -> EnsembleCalibration:
    """Fit the weights (unless given, or ``hard``) and a threshold of the ensemble ``request``
    names; write the ensemble file ``request.out`` (``.yaml``) and ``calibration.json``
    beside it."""
    request.check()
    out, source = request.out, request.model
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: an ensemble is written as a .yaml ensemble file")
    claim_calibration_outputs(out, request.inputs, request.force)
    ensemble = load_ensemble(source.checkpoints, source.method, source.weights, source.config)
    samples = calibration_samples(ensemble, request.data, request.split, out.parent,
                                  request.options.progress)
    values, _ = ensemble.member_values(samples, request.options, "calibrating")
    ok = ~np.isnan(values).any(axis=0)
    if not ok.any():
        raise DataError(f"none of the {ok.size} calibration inputs could be scored")
    values = values[:, ok]
    y = np.array([s.label for s, good in zip(samples, ok) if good], dtype=np.int64)

    weights_before = ensemble.weights.copy()
    threshold_before = ensemble.threshold
    before = _report(y, ensemble.combine(values))
    fitted = source.weights is None and ensemble.method != "hard"
    notes = []
    if fitted:
        ensemble.weights, ensemble.temperature = fit_weights(values, y, ensemble.method)
    elif ensemble.method == "hard" and source.weights is None:
        notes.append("hard voting: weights kept as given (they can not be fitted), threshold chosen")
    scores = ensemble.combine(values)
    threshold_strategy, target_fpr = request.threshold_strategy, request.target_fpr
    if threshold_strategy != "keep":
        value = target_fpr if threshold_strategy == "fpr" else 0.5
        ensemble.threshold = choose_threshold(y, scores, threshold_strategy, value)
    member_auc = [roc_auc(y, p) for p in ensemble.member_probabilities(values)]
    result = EnsembleCalibration(
        out=str(out), data=[str(d) for d in request.data], split=request.split,
        method=ensemble.method, n=int(y.size), n_real=int(np.sum(y == 0)),
        n_fake=int(np.sum(y == 1)), members=[m.name for m in ensemble.members],
        member_auc=member_auc, weights_before=[float(w) for w in weights_before],
        weights=[float(w) for w in ensemble.weights], fitted=fitted,
        temperature=ensemble.temperature, threshold_before=threshold_before,
        threshold=ensemble.threshold, threshold_strategy=threshold_strategy,
        target_fpr=float(target_fpr) if threshold_strategy == "fpr" else None,
        before=before, after=_report(y, scores), notes=notes,
    )
    ensemble.calibration = _meta(result)
    write_ensemble_file(ensemble.config(), out)
    write_calibration_json(out, result)
    return result


def calibrate_ensemble(
    checkpoints: Sequence[str | Path],
    data: Sequence[str | Path],
    out: str | Path,
    split: str = "auto",
    threshold_strategy: str = "eer",
    target_fpr: float = 0.01,
    method: str | None = None,
    weights: str | Sequence[float] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    config: str | Path | None = None,
    force: bool = False,
) -> EnsembleCalibration:
    """:func:`calibrate_weights` with the request given option by option (the older form)."""
    _check_arguments(threshold_strategy, target_fpr, split, data)
    options = ScoringOptions(batch_size=batch_size, num_workers=num_workers, device=device,
                             progress=progress)
    return calibrate_weights(CalibrateRequest(
        model=ModelSource(checkpoints, config, method, weights), data=data, out=Path(out),
        split=split, threshold_strategy=threshold_strategy, target_fpr=target_fpr,
        options=options, force=force,
    ))


def _meta(result: EnsembleCalibration) -> dict[str, Any]:
    """The ``calibration`` entry of the ensemble file."""
    return {
        "data": result.data, "split": result.split, "n": result.n, "fitted": result.fitted,
        "threshold_strategy": result.threshold_strategy, "target_fpr": result.target_fpr,
        **{f"{k}_before": v for k, v in result.before.items()},
        **{f"{k}_after": v for k, v in result.after.items()},
    }
