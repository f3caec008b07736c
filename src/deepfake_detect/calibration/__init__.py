"""Everything that is fitted on validation data and written as a new artefact: the decision
threshold (:mod:`.thresholds`), temperature scaling of one checkpoint (:mod:`.temperature`) and
the weights of an ensemble (:mod:`.ensemble`). Never on test data.
"""

from deepfake_detect.calibration.thresholds import STRATEGIES, choose_threshold, threshold_candidates

__all__ = ["STRATEGIES", "choose_threshold", "threshold_candidates"]
