"""Detectors: the registry of built-in and custom detectors, weights and checkpoints."""

from deepfake_detect.models.checkpoint import (
    checkpoint_meta,
    export_checkpoint,
    export_safetensors,
    load_checkpoint,
    load_detector,
    load_model_parts,
)
from deepfake_detect.models.detector import Detector, FreezeConfig, ModelConfig
from deepfake_detect.models.registry import (
    ENTRY_POINT_GROUP,
    DetectorCard,
    build_detector,
    get_entry,
    list_detectors,
    register_detector,
    validate_model_config,
)
from deepfake_detect.models.weights import (
    allow_safe_globals,
    load_detector_weights,
    read_state_dict,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Detector",
    "DetectorCard",
    "FreezeConfig",
    "ModelConfig",
    "allow_safe_globals",
    "build_detector",
    "checkpoint_meta",
    "export_checkpoint",
    "export_safetensors",
    "get_entry",
    "list_detectors",
    "load_checkpoint",
    "load_detector",
    "load_detector_weights",
    "load_model_parts",
    "read_state_dict",
    "register_detector",
    "validate_model_config",
]
