"""FSFM (CVPR 2025): a face foundation model, ViT-B/16, in its official fine-tuning form.

The encoder is timm's VisionTransformer with global average pooling of the patch tokens and
``fc_norm`` (the final ``norm`` removed), then a linear head. Both official checkpoint layouts
load (FACTS.md): fine-tuned (``{model, optimizer, epoch, scaler, args}``, top-level timm names,
index 0 = fake) as detector weights, and pretrained (encoder with ``norm`` and pretraining-only
modules) as ``model.pretrained``. Normalisation comes from ``pretrain_ds_mean_std.txt`` beside the
checkpoint when there is one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from deepfake_detect.config.schema import Strict
from deepfake_detect.errors import CheckpointError
from deepfake_detect.models.registry import DetectorCard, register_detector
from deepfake_detect.models.timm_detector import TimmDetector, TimmDetectorConfig
from deepfake_detect.models.weights import (
    compare_state_dict,
    describe_mismatch,
    read_state_dict,
)

MEAN_STD_FILE = "pretrain_ds_mean_std.txt"
VGGFACE2_MEAN = (0.5482, 0.4234, 0.3655)
VGGFACE2_STD = (0.2789, 0.2439, 0.2349)
PRETRAINING_ONLY = ("mask_token", "projector.", "predictor.", "rep_decoder", "decoder_")


class VitSettings(Strict):
    """Encoder size; the defaults are FSFM's ViT-B/16."""

    embed_dim: int = Field(768, ge=8, description="token width")
    depth: int = Field(12, ge=1, description="transformer blocks")
    num_heads: int = Field(12, ge=1, description="attention heads")
    patch_size: int = Field(16, ge=1, description="patch side in pixels")
    img_size: int = Field(224, ge=16, description="input side in pixels")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP width / token width")


class FSFMConfig(TimmDetectorConfig):
    """FSFM's ViT encoder (`vit` sets its size); `pretrained`: an FSFM encoder checkpoint; mean
    and std default to `pretrain_ds_mean_std.txt` beside `pretrained` or `weights`, else
    VGGFace2's."""

    vit: VitSettings = Field(default_factory=VitSettings)


def read_mean_std(checkpoint: str | Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from ``pretrain_ds_mean_std.txt`` beside ``checkpoint``; else VGGFace2's."""
    if checkpoint is not None:
        path = Path(checkpoint).parent / MEAN_STD_FILE
        if path.is_file():
            try:
                first = path.read_text("utf-8").splitlines()[0]
                stats = json.loads(first)
                mean, std = tuple(map(float, stats["mean"])), tuple(map(float, stats["std"]))
                if len(mean) == 3 and len(std) == 3:
                    return mean, std
            except (OSError, IndexError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"{path}: expected a first line of JSON with 'mean' and 'std' (3 values "
                    f"each), e.g. {{\"mean\": [0.5, 0.4, 0.4], \"std\": [0.3, 0.2, 0.2]}} ({exc})"
                ) from None
            raise CheckpointError(f"{path}: 'mean' and 'std' need 3 values each")
    return VGGFACE2_MEAN, VGGFACE2_STD


class FSFMDetector(TimmDetector):
    """timm ViT, global average pooling + ``fc_norm`` -> linear head."""

    config: FSFMConfig

    def __init__(self, config: FSFMConfig, *, weights_follow: bool = False) -> None:
        if config.mean is None or config.std is None:
            # Resolved into the config, so this tool's checkpoints keep the statistics.
            mean, std = read_mean_std(config.pretrained or config.weights)
            config = config.model_copy(update={"mean": config.mean or mean, "std": config.std or std})
        vit = config.vit
        kwargs = {
            "embed_dim": vit.embed_dim, "depth": vit.depth, "num_heads": vit.num_heads,
            "patch_size": vit.patch_size, "img_size": config.input_size or vit.img_size,
            "mlp_ratio": vit.mlp_ratio, "global_pool": "avg", "fc_norm": True,
            **config.backbone_kwargs,
        }
        super().__init__(config.model_copy(update={"backbone_kwargs": kwargs}),
                         default_name="vit_base_patch16_224", weights_follow=weights_follow)
        self.config = config

    def load_pretrained(self, path) -> dict[str, Any]:
        """A pretrained FSFM encoder: pretraining-only keys and the final ``norm`` dropped,
        ``pos_embed`` resized to this input, fresh ``fc_norm`` and head (std 2e-5)."""
        from timm.layers import resample_abs_pos_embed

        sd = read_state_dict(path, self.config.strip_prefix)
        sd = {k: v for k, v in sd.items()
              if not k.startswith(PRETRAINING_ONLY) and not k.startswith(("norm.", "head.", "fc_norm."))}
        grid = self.backbone.patch_embed.grid_size
        if "pos_embed" in sd and sd["pos_embed"].shape != self.backbone.pos_embed.shape:
            sd["pos_embed"] = resample_abs_pos_embed(
                sd["pos_embed"], new_size=list(grid), num_prefix_tokens=1)
        missing, unexpected, mismatched = compare_state_dict(self.backbone, sd)
        missing = [k for k in missing if not k.startswith("fc_norm.")]
        if missing or unexpected or mismatched:
            raise CheckpointError(
                f"{path}: not an FSFM encoder of this size: "
                f"{describe_mismatch(missing, unexpected, mismatched, len(self.backbone.state_dict()))}"
                "\n  likely cause: model.vit differs from the checkpoint (embed_dim, depth, "
                "num_heads, patch_size), or the file is not an FSFM/MAE ViT checkpoint"
            )
        self.backbone.load_state_dict(sd, strict=False)
        fc = self.head.fc if hasattr(self.head, "fc") else None
        if isinstance(fc, nn.Linear):
            nn.init.trunc_normal_(fc.weight, std=2e-5)
            nn.init.zeros_(fc.bias)
        return {"path": str(path), "loaded": len(sd), "missing": missing, "unexpected": []}

    def adapt_state_dict(self, state_dict: dict) -> dict:
        if not any(k in state_dict for k in ("cls_token", "pos_embed")):
            return super().adapt_state_dict(state_dict)  # this tool's layout (backbone.*, head.*)
        if "head.weight" not in state_dict:
            raise CheckpointError(
                "this is a pretrained FSFM encoder (no classifier head): give it as "
                "model.pretrained to fine-tune from it, not as detector weights"
            )
        out = {}
        for key, value in state_dict.items():
            if key.startswith("head."):
                out[f"head.fc.{key[len('head.'):]}"] = value
            else:
                out[f"backbone.{key}"] = value
        return super().adapt_state_dict(out)  # e.g. a fresh variance head (model.uncertainty)


register_detector(
    "fsfm",
    config=FSFMConfig,
    defaults={"fake_index": 0},
    description="FSFM: face foundation ViT-B/16, avg pooling + fc_norm, index 0 = fake (official)",
    card=DetectorCard(
        architecture="timm ViT-B/16, global average pooling + `fc_norm` (the FSFM fine-tuning "
        "form); `model.vit` sets the size",
        input="224",
        normalisation="`pretrain_ds_mean_std.txt` beside the checkpoint, else VGGFace2 mean/std",
        weights="FSFM's released checkpoints (FSFM GitHub repository, wolo-wolo/FSFM-CVPR25): a "
        "pretrained encoder as `model.pretrained` (pretraining-only keys dropped, `pos_embed` "
        "resized to `model.input_size`, fresh `fc_norm` and head), or a fine-tuned `{model, "
        "optimizer, epoch, scaler, args}` file as `model.weights` / `--checkpoint` with `-c "
        "configs/fsfm.yaml`. Index 0 = fake, as released (`model.fake_index`)",
    ),
)(FSFMDetector)
