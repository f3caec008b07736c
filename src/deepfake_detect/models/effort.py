"""Effort (ICML 2025): CLIP ViT-L/14 fine-tuned through an SVD residual of its attention weights.

Each adapted linear layer keeps its top ``n - k`` singular components frozen and trains the last
``k`` (``model.adapter.residual_rank``, 1 in the release); the feature is CLIP's pooler output
and the head one linear layer. The state dict is the release layout (``backbone.`` + HF names,
``weight_main``/``U_residual``/``S_residual``/``V_residual`` per adapted layer, ``head.*``), so
the released checkpoints load strictly and without any SVD.
"""

from __future__ import annotations

import re

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from deepfake_detect.config.schema import Strict
from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.models.adapters.svd import (
    RESIDUAL_KEYS,
    check_patterns,
    merge_factors,
    merge_svd_residual,
    replace_with_svd_residual,
    svd_residual_layers,
)
from deepfake_detect.models.backbones.clip import (
    CLIP_MEAN,
    CLIP_STD,
    AttnImplementation,
    ClipSettings,
    build_clip_vision,
    enable_activation_checkpointing,
    infer_clip_settings,
    load_clip_weights,
)
from deepfake_detect.models.detector import Detector, ExplainTarget, ModelConfig, module_name
from deepfake_detect.models.registry import DetectorCard, register_detector

ATTENTION_PROJECTIONS = "encoder.layers.*.self_attn.*_proj"
MLP_LAYERS = "encoder.layers.*.mlp.fc*"
# Frozen principal factors that some later copies of the official model class also save; they
# are recomputable from weight_main and not part of the release layout.
_EXTRA_FACTORS = ("U_r", "S_r", "V_r")


class SVDAdapterSettings(Strict):
    targets: list[str] = Field(
        default_factory=lambda: [ATTENTION_PROJECTIONS],
        description="fnmatch patterns of the adapted linear layers (names inside the CLIP tower); "
        f"the release adapts q/k/v/out projections; add '{MLP_LAYERS}' for the MLP too",
    )
    residual_rank: int = Field(
        1, ge=1, description="trainable singular components per layer (release: 1, top n-1 frozen)"
    )
    svd_dtype: Literal["float64", "float32"] = Field(
        "float64", description="precision of the SVD computed from plain CLIP weights"
    )
    svd_device: str = Field(
        "auto", description="where that SVD runs: auto (a GPU when there is one), cpu, cuda"
    )
    orthogonality: float = Field(
        0.0, ge=0, description="weight of the orthogonality regulariser (paper; off in release)"
    )
    keep_sv: float = Field(
        0.0, ge=0, description="weight of the keep-singular-value (weight norm) regulariser"
    )


class EffortConfig(ModelConfig):
    """`pretrained`: a local HF snapshot folder or weights file of plain CLIP (the SVD split is
    computed from it); `input_size` must equal `clip.image_size`; `strip_prefix` and
    `allow_download` do not apply."""

    clip: ClipSettings = Field(default_factory=ClipSettings)
    adapter: SVDAdapterSettings = Field(default_factory=SVDAdapterSettings)
    attn_implementation: AttnImplementation = Field(
        "sdpa", description="sdpa: fused scaled-dot-product attention; eager: plain matmuls"
    )
    grad_checkpointing: bool = Field(False, description="recompute activations in backward")
    merged: bool = Field(
        False,
        description="plain linear layers with the residuals summed in (what exported inference "
        "checkpoints hold); nothing to fine-tune",
    )


def _svd_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"model.adapter.svd_device: {setting!r} is not a device (auto, cpu, cuda)") from None


class EffortDetector(Detector):
    """CLIP vision tower with SVD residual layers -> pooler output -> ``Linear(hidden, classes)``.

    ``weights_follow``: whole-detector weights are loaded right after building, so nothing is
    initialised, ``model.pretrained`` is not read and no SVD is computed (the weights hold the
    factors).
    """

    config: EffortConfig

    def __init__(self, config: EffortConfig, *, weights_follow: bool = False) -> None:
        clip = config.clip
        super().__init__(config, clip.image_size, CLIP_MEAN, CLIP_STD)
        if self.input_size != clip.image_size:
            raise ConfigError(
                f"model.input_size {self.input_size} differs from model.clip.image_size "
                f"{clip.image_size}; the position embeddings are sized for the latter: set "
                "model.clip.image_size instead"
            )
        loaded_next = weights_follow
        from_plain = config.pretrained is not None and not loaded_next
        self.backbone = build_clip_vision(
            clip.hf_config(config.attn_implementation), initialise=not (loaded_next or from_plain)
        )
        if from_plain:
            load_clip_weights(self.backbone, config.pretrained, clip)
        self.head = nn.Linear(clip.hidden_size, config.num_classes)
        if not loaded_next:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        adapter = config.adapter
        adapted = check_patterns(self.backbone, adapter.targets, "model.adapter.targets")
        if not config.merged:
            replace_with_svd_residual(
                self.backbone, adapted, adapter.residual_rank,
                decompose=not loaded_next,
                svd_dtype=getattr(torch, adapter.svd_dtype),
                svd_device=_svd_device(adapter.svd_device),
                progress=from_plain,
            )
        # Effort trains only the residual factors and the head.
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(not config.merged and name.rsplit(".", 1)[-1] in RESIDUAL_KEYS)
        self.apply_freeze()
        if config.grad_checkpointing:
            enable_activation_checkpointing(self.backbone)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values=x).pooler_output

    def layer_ids(self) -> dict[str, int]:
        # CLIP: embeddings and pre-norm 0, encoder layer i -> i + 1, post-norm on top.
        depth = self.config.clip.num_hidden_layers
        ids = {}
        for name, _ in self.backbone.named_parameters():
            m = re.match(r"encoder\.layers\.(\d+)\.", name)
            ids[f"backbone.{name}"] = int(m.group(1)) + 1 if m else (
                0 if name.startswith(("embeddings.", "pre_layrnorm.")) else depth + 1)
        return ids

    def explain_target(self) -> ExplainTarget:
        """The last encoder layer's ``layer_norm1``: the tokens its attention mixes into the
        class token that the pooler reads; CLIP's layout, the class token first, then the
        patches in row order."""
        # transformers 5 holds the encoder on the model itself, earlier versions in vision_model
        tower = getattr(self.backbone, "vision_model", self.backbone)
        layer = tower.encoder.layers[-1].layer_norm1
        side = self.config.clip.image_size // self.config.clip.patch_size
        return ExplainTarget(module_name(self, layer), "tokens", 1, (side, side))

    # -- training ---------------------------------------------------------------------------------

    def regularization_loss(self) -> torch.Tensor | None:
        adapter = self.config.adapter
        if not (adapter.orthogonality or adapter.keep_sv) or not self.training:
            return None
        total = self.head.weight.new_zeros(())
        for layer in svd_residual_layers(self.backbone):
            if adapter.orthogonality:
                total = total + adapter.orthogonality * layer.orthogonality_loss()
            if adapter.keep_sv:
                total = total + adapter.keep_sv * layer.keep_sv_loss()
        return total

    # -- inference --------------------------------------------------------------------------------

    def for_inference(self) -> "EffortDetector":
        """Sum each residual into its layer: the model then runs exactly like plain CLIP."""
        if merge_svd_residual(self.backbone):
            self.config = self.config.model_copy(update={"merged": True})
        return self.eval()

    # -- loading ----------------------------------------------------------------------------------

    def adapt_state_dict(self, state_dict: dict) -> dict:
        sd = {k: v for k, v in state_dict.items()
              if k.rsplit(".", 1)[-1] not in _EXTRA_FACTORS and not k.endswith("position_ids")}
        self._explain_clip_size(sd)
        has_factors = any(k.endswith(".weight_main") for k in sd)
        if self.config.merged and has_factors:
            return _merge_factors(sd)
        clip_like = any(".self_attn." in k for k in sd)
        if clip_like and not self.config.merged and not has_factors:
            if not any(k.startswith("head.") for k in sd):
                raise CheckpointError(
                    "these are plain CLIP weights without the Effort head; give them as "
                    "model.pretrained (the SVD split is computed from them at build), not as "
                    "detector weights"
                )
            raise CheckpointError(
                "this file holds merged weights (plain linear layers, as exported for "
                "inference); load it with model.merged: true, or fine-tune from a training "
                "checkpoint (.ckpt) or the official release, which keep the residual factors"
            )
        return sd

    def _explain_clip_size(self, sd: dict) -> None:
        found = infer_clip_settings(sd, "backbone.")
        wrong = {k: v for k, v in found.items() if getattr(self.config.clip, k) != v}
        if wrong:
            setting = ", ".join(f"model.clip.{k}: {v}" for k, v in wrong.items())
            raise CheckpointError(
                f"the file holds a CLIP tower of another size ({setting}); this detector is "
                f"built with {', '.join(f'{k} {getattr(self.config.clip, k)}' for k in wrong)}. "
                f"Set {setting} to load it"
            )


def _merge_factors(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        base, _, leaf = key.rpartition(".")
        if leaf in RESIDUAL_KEYS:
            continue
        if leaf == "weight_main":
            out[f"{base}.weight"] = merge_factors(value, *(sd[f"{base}.{n}"] for n in RESIDUAL_KEYS))
        else:
            out[key] = value
    return out


register_detector(
    "effort",
    config=EffortConfig,
    description="Effort: CLIP ViT-L/14 (HF transformers) with SVD residual attention, 224 px",
    card=DetectorCard(
        architecture="CLIP ViT-L/14 (HF transformers `CLIPVisionModel`) + SVD residual "
        "attention, `Linear(1024, 2)`",
        input="224",
        normalisation="CLIP mean/std",
        weights="official Effort checkpoint (`effort_clip_L14_trainOn_FaceForensic.pth`, linked "
        "from the Effort GitHub repository, YZY-stack/Effort-AIGI-Detection) as `model.weights`; "
        "or plain CLIP: a local HF snapshot of `openai/clip-vit-large-patch14` (e.g. "
        "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir clip-l14`) as "
        "`model.pretrained`",
    ),
)(EffortDetector)
