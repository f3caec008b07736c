"""The config reference of README: experiment keys plus the model keys of each detector family."""

from __future__ import annotations

from deepfake_detect.config.reference import markdown_table
from deepfake_detect.config.schema import ExperimentConfig


def config_reference() -> str:
    from deepfake_detect.models.timm_detector import TimmDetectorConfig

    parts = [
        "#### Experiment (`name`, `seed`, `data`, `train`, `eval`, `log`, `prepare`)",
        markdown_table(ExperimentConfig, skip=("model",)),
        "#### `model` for the timm detectors (`xception`, `mobilenetv2`, `efficientnet_b0`..`b7`, "
        "`swin_base`, `vit_base`, `timm`)",
        markdown_table(TimmDetectorConfig, "model."),
    ]
    return "\n\n".join(parts) + "\n"
