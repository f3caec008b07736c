from deepfake_detect.config.loading import (
    apply_overrides,
    config_to_dict,
    load_config,
    read_yaml,
    validate,
)
from deepfake_detect.config.schema import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    LogConfig,
    LossConfig,
    OptimizerConfig,
    SchedulerConfig,
    Strict,
    ThresholdConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LogConfig",
    "LossConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "Strict",
    "ThresholdConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "read_yaml",
    "validate",
]
