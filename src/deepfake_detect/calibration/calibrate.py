"""``deepfake-detect calibrate``: one request, whatever ``--checkpoint`` names.

One checkpoint gets temperature scaling and a threshold (:func:`~deepfake_detect.calibration.
temperature.calibrate_model`, writing a ``.safetensors``); an ensemble gets its voting weights
and a threshold (:func:`~deepfake_detect.calibration.ensemble.calibrate_weights`, writing an
ensemble ``.yaml``). The two fits are different problems with different artefacts, so each
has its own function; which one runs follows from :attr:`ModelSource.kind
<deepfake_detect.inference.ensemble.ModelSource.kind>`, decided once from the paths, before
anything is loaded (the artefact's suffix is checked first).
"""

from __future__ import annotations

from deepfake_detect.calibration.ensemble import EnsembleCalibration, calibrate_weights
from deepfake_detect.calibration.temperature import (
    CalibrateRequest,
    CalibrationResult,
    calibrate_model,
)

# what is fitted, by what --checkpoint names (ModelSource.kind)
FITS = {"model": calibrate_model, "ensemble": calibrate_weights}


def calibrate(request: CalibrateRequest) -> CalibrationResult | EnsembleCalibration:
    """Check the request, fit on its validation data and write the calibrated artefact and
    ``calibration.json`` beside it; the result has ``title``, ``table()`` and ``notes`` for
    printing. The test split is refused: calibrating on it would leak."""
    request.check()
    return FITS[request.model.kind](request)


__all__ = ["FITS", "CalibrateRequest", "calibrate"]
