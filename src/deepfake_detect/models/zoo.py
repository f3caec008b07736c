"""Built-in detectors: common deepfake-detection backbones from timm, plus any timm model by name.

Default input size, mean and std come from timm's pretrained config of each architecture
(e.g. xception: 299 px, mean/std 0.5; efficientnet_b4: 320 px). The other families (``effort``,
``fsfm``, ``dual_stream``) register in their own modules; the registry imports each on demand.
"""

from __future__ import annotations

from collections.abc import Callable

import timm

from deepfake_detect.models.detector import IMAGENET_MEAN, IMAGENET_STD
from deepfake_detect.models.registry import DetectorCard, register_detector
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


def _normalisation(mean, std) -> str:
    if tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD:
        return "ImageNet"
    if len(set(mean)) == 1 and len(set(std)) == 1:
        return f"mean {mean[0]:g}, std {std[0]:g}"
    return f"mean {list(mean)}, std {list(std)}"


def _card(arch: str) -> DetectorCard:
    """The zoo row of a timm architecture, from timm's default pretrained config."""
    pcfg = timm.models.get_pretrained_cfg(arch)
    if pcfg is None:  # pragma: no cover - every architecture above has one
        return DetectorCard(f"`{arch}`", "timm default", "timm default", "")
    tag = getattr(pcfg, "tag", None)
    has_weights = bool(pcfg.hf_hub_id or pcfg.url or pcfg.file) and tag != "untrained"
    weights = f"timm `{arch}.{tag}`" if has_weights and tag else (
        f"timm `{arch}`" if has_weights else "none in timm by default (`model.pretrained`)")
    return DetectorCard(
        architecture=f"`{arch}`",
        input=str(pcfg.input_size[-1]),
        normalisation=_normalisation(pcfg.mean, pcfg.std),
        weights=weights,
    )


def _factory(arch: str) -> Callable[..., TimmDetector]:
    def build(cfg: TimmDetectorConfig, *, weights_follow: bool = False) -> TimmDetector:
        return TimmDetector(cfg, default_name=arch, weights_follow=weights_follow)

    build.__name__ = build.__qualname__ = f"build_{arch}"
    return build


for _name, _arch in TIMM_DETECTORS.items():
    register_detector(
        _name, config=TimmDetectorConfig, description=_describe(_arch), card=_card(_arch)
    )(_factory(_arch))


@register_detector(
    "timm",
    config=TimmAnyConfig,
    description="any timm architecture named by model.timm_name",
    card=DetectorCard(
        architecture="any, via `model.timm_name`",
        input="timm default",
        normalisation="timm default",
        weights="any timm tag",
    ),
)
def timm_any(cfg: TimmAnyConfig, *, weights_follow: bool = False) -> TimmDetector:
    return TimmDetector(cfg, weights_follow=weights_follow)
