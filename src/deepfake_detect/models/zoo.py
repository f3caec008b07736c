"""Built-in detectors: common deepfake-detection backbones from timm, plus any timm model by name.

Default input size, mean and std come from timm's pretrained config of each architecture
(e.g. xception: 299 px, mean/std 0.5; efficientnet_b4: 320 px).
"""

from __future__ import annotations

from collections.abc import Callable

import timm

from deepfake_detect.models.registry import register_detector
from deepfake_detect.models.timm_detector import TimmAnyConfig, TimmDetector, TimmDetectorConfig

# detector name -> timm architecture
TIMM_DETECTORS: dict[str, str] = {
    "xception": "legacy_xception",
    "mobilenetv2": "mobilenetv2_100",
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)},
    "swin_base": "swin_base_patch4_window7_224",
    "vit_base": "vit_base_patch16_224",
}


def _describe(arch: str) -> str:
    pcfg = timm.models.get_pretrained_cfg(arch)
    size = f", {pcfg.input_size[-1]} px" if pcfg is not None and pcfg.input_size else ""
    return f"timm {arch}{size}"


def _factory(arch: str) -> Callable[[TimmDetectorConfig], TimmDetector]:
    def build(cfg: TimmDetectorConfig) -> TimmDetector:
        return TimmDetector(cfg, default_name=arch)

    build.__name__ = f"build_{arch}"
    return build


for _name, _arch in TIMM_DETECTORS.items():
    register_detector(_name, config=TimmDetectorConfig, defaults={}, description=_describe(_arch))(
        _factory(_arch)
    )


@register_detector(
    "timm",
    config=TimmAnyConfig,
    defaults={},
    description="any timm architecture named by model.timm_name",
)
def timm_any(cfg: TimmAnyConfig) -> TimmDetector:
    return TimmDetector(cfg)


# Detectors with their own module register themselves on import.
import deepfake_detect.models.dual_stream  # noqa: E402,F401
import deepfake_detect.models.effort  # noqa: E402,F401
import deepfake_detect.models.fsfm  # noqa: E402,F401
