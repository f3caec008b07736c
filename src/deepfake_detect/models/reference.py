"""The config reference of README: experiment keys plus the model keys of each detector family."""

from __future__ import annotations

from deepfake_detect.config.reference import markdown_table
from deepfake_detect.config.schema import EnsembleConfig, EnsembleMember, ExperimentConfig


def config_reference() -> str:
    from deepfake_detect.models.dual_stream import DualStreamConfig
    from deepfake_detect.models.effort import EffortConfig
    from deepfake_detect.models.fsfm import FSFMConfig
    from deepfake_detect.models.timm_detector import TimmDetectorConfig

    parts = [
        "#### Experiment (`name`, `seed`, `data`, `train`, `strategy`, `eval`, `log`, `prepare`)",
        markdown_table(ExperimentConfig, skip=("model",)),
        "#### `model` for the timm detectors (`xception`, `mobilenetv2`, `efficientnet_b0`..`b7`, "
        "`swin_base`, `vit_base`, `timm`)",
        markdown_table(TimmDetectorConfig, "model."),
        "#### `model` for `effort` (plus `num_classes`, `fake_index`, `input_size`, `mean`, `std`, "
        "`freeze` as above; `pretrained`: a CLIP HF snapshot folder or weights file)",
        markdown_table(EffortConfig, "model.", skip=_shared_keys()),
        "#### `model` for `fsfm` (the timm keys above, default `fake_index` 0, plus `vit`)",
        markdown_table(FSFMConfig, "model.", skip=_timm_keys(TimmDetectorConfig)),
        "#### `model` for `dual_stream` (default `num_classes` 1: one fake logit for BCE; plus `mean`, `std`, `freeze`, `weights` as "
        "above; `input_size` equals `hq.size`)",
        markdown_table(DualStreamConfig, "model.", skip=_shared_keys()),
        "#### Ensemble file (`--checkpoint ensemble.yaml`; written by `calibrate` with several "
        "checkpoints)",
        markdown_table(EnsembleConfig, "ensemble."),
        markdown_table(EnsembleMember, "ensemble.members[]."),
    ]
    return "\n\n".join(parts) + "\n"


def _shared_keys() -> tuple[str, ...]:
    """Keys of the shared ``ModelConfig`` rows already listed in the first detector's table."""
    from deepfake_detect.config.reference import iter_keys
    from deepfake_detect.models.detector import ModelConfig

    keep = {"model.name", "model.pretrained", "model.weights"}
    return tuple(k for k, *_ in iter_keys(ModelConfig, "model.") if k not in keep)


def _timm_keys(timm_config) -> tuple[str, ...]:
    from deepfake_detect.config.reference import iter_keys

    return tuple(k for k, *_ in iter_keys(timm_config, "model."))
