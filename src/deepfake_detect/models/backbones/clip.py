"""The CLIP vision tower of HF transformers: settings, fast construction, local weight files.

Weights are only read from local files: an HF snapshot folder (``config.json`` plus
``model.safetensors``, a sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``) or a
single weights file of ``CLIPModel`` / ``CLIPVisionModel``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from deepfake_detect.config.schema import Strict
from deepfake_detect.errors import CheckpointError, ConfigError
from deepfake_detect.models.weights import compare_state_dict, describe_mismatch, read_state_dict

if TYPE_CHECKING:  # transformers is imported when a tower is built: listing detectors stays fast
    from transformers import CLIPVisionConfig, CLIPVisionModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Keys of full CLIP checkpoints that the vision tower does not use.
_NOT_VISION = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")


class ClipSettings(Strict):
    """``CLIPVisionConfig`` fields; the defaults are CLIP ViT-L/14 at 224 px."""

    hidden_size: int = Field(1024, ge=8, description="token width")
    intermediate_size: int = Field(4096, ge=8, description="MLP hidden width")
    num_hidden_layers: int = Field(24, ge=1, description="transformer layers")
    num_attention_heads: int = Field(16, ge=1, description="attention heads")
    patch_size: int = Field(14, ge=1, description="patch side in pixels")
    image_size: int = Field(224, ge=8, description="input side in pixels")
    num_channels: int = Field(3, ge=1, description="input channels")
    hidden_act: str = Field("quick_gelu", description="MLP activation")
    layer_norm_eps: float = Field(1e-5, gt=0, description="layer norm epsilon")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights")

    def hf_config(self, attn_implementation: str = "sdpa") -> "CLIPVisionConfig":
        from transformers import CLIPVisionConfig

        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.clip.hidden_size {self.hidden_size} must be divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"model.clip.image_size {self.image_size} must be a multiple of patch_size "
                f"{self.patch_size}"
            )
        cfg = CLIPVisionConfig(**self.model_dump())
        cfg._attn_implementation = attn_implementation
        return cfg


AttnImplementation = Literal["sdpa", "eager"]


def build_clip_vision(config: "CLIPVisionConfig", initialise: bool = True) -> "CLIPVisionModel":
    """A CLIP vision tower in float32, on the CPU.

    Without ``initialise`` the parameters stay on the meta device (no memory, no random
    initialisation of ~300M values, which dominates building ViT-L/14): the weights must be
    loaded next with ``load_state_dict(..., assign=True)``.
    """
    from transformers import CLIPVisionModel

    if initialise:
        return CLIPVisionModel(config)
    with _no_init_weights(), torch.device("meta"):
        model = CLIPVisionModel(config)
    # The one non-persistent buffer: in no checkpoint, so it is made here, for real.
    emb = model.embeddings
    emb.position_ids = torch.arange(emb.num_positions, device="cpu").unsqueeze(0)
    return model


def _no_init_weights():
    try:  # transformers 5: skips the init functions, which run even on the meta device
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - other transformers layouts
        from contextlib import nullcontext

        return nullcontext()
    return no_init_weights()


def enable_activation_checkpointing(model: "CLIPVisionModel") -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# -- reading plain CLIP weights --------------------------------------------------------------------


def _snapshot_files(folder: Path) -> tuple[list[Path], Path | None]:
    config = folder / "config.json"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards], config if config.is_file() else None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name], config if config.is_file() else None
    raise CheckpointError(
        f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin found. "
        "Point model.pretrained at an HF CLIP snapshot folder (e.g. a local copy of "
        "openai/clip-vit-large-patch14) or at its weights file."
    )


def _vision_settings_of(config_file: Path) -> dict:
    raw = json.loads(config_file.read_text())
    return raw.get("vision_config") or raw


def check_snapshot_config(config_file: Path, settings: ClipSettings) -> None:
    """The snapshot's ``config.json`` must describe the tower that ``model.clip`` builds."""
    found = _vision_settings_of(config_file)
    wrong = [
        f"model.clip.{key} is {getattr(settings, key)!r} but {config_file} has {found[key]!r}"
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "patch_size", "image_size", "hidden_act")
        if key in found and found[key] != getattr(settings, key)
    ]
    if wrong:
        raise ConfigError(
            "the CLIP snapshot does not match model.clip: " + "; ".join(wrong)
            + ". Set those model.clip keys to the snapshot's values."
        )


def vision_state_dict(state_dict: Mapping[str, torch.Tensor], source: Path | str) -> dict[str, torch.Tensor]:
    """The vision-tower tensors of a ``CLIPModel`` / ``CLIPVisionModel`` state dict, HF names."""
    if any(k.startswith(("visual.transformer.", "visual.conv1")) for k in state_dict):
        raise CheckpointError(
            f"{source}: these are OpenAI's original CLIP weights (keys 'visual.*'); convert them to "
            "the HF transformers layout (e.g. a local copy of openai/clip-vit-large-patch14) first"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_NOT_VISION) or key.endswith("position_ids"):
            continue
        out[key.removeprefix("vision_model.")] = value
    return out


def read_clip_weights(path: str | Path, settings: ClipSettings) -> dict[str, torch.Tensor]:
    """Vision-tower weights from a snapshot folder or file, checked against ``settings``."""
    path = Path(path)
    if path.is_dir():
        files, config_file = _snapshot_files(path)
        if config_file is not None:
            check_snapshot_config(config_file, settings)
    elif path.is_file():
        files = [path]
    else:
        raise CheckpointError(f"model.pretrained: {path} does not exist")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_state_dict(f))
    return vision_state_dict(state, path)


def load_clip_weights(model: "CLIPVisionModel", path: str | Path, settings: ClipSettings) -> None:
    """Load plain CLIP weights into the tower (built with or without ``initialise``), strictly,
    in float32 (half-precision snapshots are widened)."""
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in read_clip_weights(path, settings).items()}
    missing, unexpected, mismatched = compare_state_dict(model, state)
    if missing or unexpected or mismatched:
        n = len(model.state_dict())
        raise CheckpointError(
            f"{path}: not the CLIP vision tower that model.clip describes: "
            f"{describe_mismatch(missing, unexpected, mismatched, n)}\n  likely cause: "
            + ("a different CLIP size (set model.clip to the snapshot's values)" if mismatched
               else "not CLIP weights in the HF transformers layout")
        )
    model.load_state_dict(state, strict=True, assign=True)


def infer_clip_settings(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict:
    """Tower sizes read off the tensors of a state dict (for explaining mismatches)."""
    get = state_dict.get
    out: dict = {}
    if (t := get(f"{prefix}embeddings.class_embedding")) is not None:
        out["hidden_size"] = int(t.shape[0])
    if (t := get(f"{prefix}embeddings.patch_embedding.weight")) is not None:
        out["patch_size"] = int(t.shape[-1])
    if (t := get(f"{prefix}embeddings.position_embedding.weight")) is not None and "patch_size" in out:
        grid = round((t.shape[0] - 1) ** 0.5)
        out["image_size"] = grid * out["patch_size"]
    if (t := get(f"{prefix}encoder.layers.0.mlp.fc1.weight")) is not None:
        out["intermediate_size"] = int(t.shape[0])
    layers = {k[len(prefix):].split(".")[2] for k in state_dict
              if k.startswith(f"{prefix}encoder.layers.")}
    if layers:
        out["num_hidden_layers"] = len(layers)
    return out
