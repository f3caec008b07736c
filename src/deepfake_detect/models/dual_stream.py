"""Dual-stream video detector (the seed's ``001``): two CNN streams over a clip of face crops.

Per frame, an HQ stream (EfficientNet-B4 on 224 px crops) and an LQ stream (EfficientNet-B0 on
the same crops downscaled to 112 px) produce feature maps; a stacked ConvLSTM per stream follows
them over time; each stream's last hidden state is average-pooled to a vector; the two vectors
are fused (learned per-stream attention weights, concatenation or a gate) and an MLP gives one
logit (P(fake) = sigmoid, trained with BCE). The LQ stream sees what survives heavy downscaling
(compression-like), the HQ stream fine blending artefacts; the ConvLSTMs catch temporal
inconsistencies that a single frame does not show.

Input: normalised clips ``(B, T, 3, H, W)`` with ``H = W = model.hq.size``; any ``T``. The
clip sampling the detector was trained with travels in ``preprocessing()["sequence"]``.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import timm
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from deepfake_detect.config.schema import Strict
from deepfake_detect.errors import ConfigError
from deepfake_detect.models.convlstm import ConvLSTM
from deepfake_detect.models.detector import IMAGENET_MEAN, IMAGENET_STD, Detector, ModelConfig
from deepfake_detect.models.registry import DetectorCard, register_detector
from deepfake_detect.models.timm_detector import _check_timm_name, download_failed
from deepfake_detect.models.weights import load_backbone_weights

STREAMS = ("hq", "lq")


class StreamSettings(Strict):
    """One stream's CNN backbone and the side of the frames it sees."""

    timm_name: str = Field(description="timm CNN architecture, e.g. efficientnet_b0 ... b7")
    size: int = Field(ge=16, description="frame side in pixels fed to this stream")
    pretrained: Path | None = Field(
        None, description="local weights of this backbone (.pth, .pt, .bin, .safetensors)"
    )


class HQStream(StreamSettings):
    timm_name: str = Field("efficientnet_b4", description="timm CNN architecture (b0 ... b7)")
    size: int = Field(224, ge=16, description="frame side in pixels: the input crops as they are")


class LQStream(StreamSettings):
    timm_name: str = Field("efficientnet_b0", description="timm CNN architecture (b0 ... b7)")
    size: int = Field(112, ge=16, description="the input crops are downscaled to this side")


class SequenceSettings(Strict):
    """How clips are cut from a video; read by the data pipeline, not by the network."""

    frames: int = Field(10, ge=1, description="frames per clip (T)")
    stride: int = Field(3, ge=1, description="step between the frames of a clip, in frames")
    eval_clips: int = Field(
        4, ge=1, description="evenly spaced clips per video at evaluation (scores averaged)"
    )


class DualStreamConfig(ModelConfig):
    """Video clips of face crops; `input_size` equals `hq.size`; backbone weights per stream
    (`hq.pretrained`, `lq.pretrained`) instead of `pretrained`; default `num_classes` 1: one
    fake logit for BCE."""

    num_classes: int = Field(1, ge=1, le=2, description="1: one fake logit (BCE); 2: softmax")
    hq: HQStream = Field(
        default_factory=HQStream, description="high-quality stream: the input crops as they are"
    )
    lq: LQStream = Field(
        default_factory=LQStream,
        description="low-quality stream: the same crops downscaled (antialiased) to lq.size",
    )
    reduce_channels: int | None = Field(
        None, ge=1,
        description="1x1 convolution to this many channels before each ConvLSTM (cuts its "
        "parameters: B4's 1792-channel maps make a 256-filter ConvLSTM ~19M); null: none",
    )
    convlstm_filters: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [256, 128], min_length=1,
        description="hidden channels of each stacked ConvLSTM layer, per stream",
    )
    kernel_size: int = Field(3, ge=1, description="ConvLSTM kernel side (odd)")
    fusion: Literal["attention", "concat", "gated"] = Field(
        "attention",
        description="attention: learned softmax weight per stream over projected vectors; "
        "concat: both vectors side by side; gated: a sigmoid gate from both picks per feature",
    )
    fusion_dim: int | None = Field(
        None, ge=1,
        description="width the streams are projected to (attention, gated); null: the last "
        "ConvLSTM width",
    )
    classifier: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [512, 256, 128],
        description="hidden widths of the classifier MLP (ReLU), then a linear layer to the logit",
    )
    dropout: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.5, 0.3],
        description="dropout after the activation of the first classifier layers, in order",
    )
    freeze_backbones: bool = Field(
        False, description="freeze both CNNs (no gradients, BatchNorm statistics fixed)"
    )
    grad_checkpointing: bool = Field(
        False, description="recompute backbone activations in backward (less memory, ~30% slower)"
    )
    sequence: SequenceSettings = Field(default_factory=SequenceSettings)

    @field_validator("pretrained")
    @classmethod
    def _per_stream_weights(cls, v: Path | None) -> Path | None:
        if v is not None:
            raise ValueError(
                "the dual-stream detector has one backbone per stream: set model.hq.pretrained "
                "and/or model.lq.pretrained instead"
            )
        return v

    @field_validator("hq")
    @classmethod
    def _input_is_hq(cls, v: HQStream, info: ValidationInfo) -> HQStream:
        size = info.data.get("input_size")
        if size is not None and size != v.size:
            raise ValueError(
                f"model.input_size {size} differs from model.hq.size {v.size}: the HQ stream "
                "takes the input crops as they are, so set model.hq.size (input_size follows)"
            )
        return v

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (same padding keeps the feature-map size), e.g. 3")
        return v

    @model_validator(mode="after")
    def _dropout_fits(self) -> "DualStreamConfig":
        if len(self.dropout) > len(self.classifier):
            raise ValueError(
                f"model.dropout has {len(self.dropout)} rates but model.classifier only "
                f"{len(self.classifier)} hidden layers; give at most one rate per layer"
            )
        return self


# -- fusion ---------------------------------------------------------------------------------------


class ConcatFusion(nn.Module):
    """``[v_hq, v_lq]``: the classifier sees both streams unchanged."""

    def __init__(self, hq_features: int, lq_features: int) -> None:
        super().__init__()
        self.out_features = hq_features + lq_features

    def forward(self, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return torch.cat([hq, lq], dim=1)


class AttentionFusion(nn.Module):
    """``w_hq * P_hq(v_hq) + w_lq * P_lq(v_lq)``, ``(w_hq, w_lq) = softmax(learned logits)``.

    The two ConvLSTMs are independent, so channel k of one has nothing to do with channel k of
    the other: the linear projections map both into one space before they are summed. The
    weights start equal and are one scalar per stream (not per sample), so after training
    :meth:`weights` says how much the detector relies on each stream.
    """

    def __init__(self, hq_features: int, lq_features: int, dim: int) -> None:
        super().__init__()
        self.proj = _projections(hq_features, lq_features, dim)
        self.logits = nn.Parameter(torch.zeros(2))
        self.out_features = dim

    def weights(self) -> torch.Tensor:
        """The stream weights ``(w_hq, w_lq)``, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        w = self.weights().to(hq.dtype)
        return w[0] * self.proj["hq"](hq) + w[1] * self.proj["lq"](lq)


class GatedFusion(nn.Module):
    """``g * P_hq(v_hq) + (1 - g) * P_lq(v_lq)`` with ``g = sigmoid(W [P_hq, P_lq] + b)``.

    Unlike the attention weights, the gate depends on the clip and on the feature: a stream
    can dominate where it is informative (e.g. LQ on heavily compressed videos).
    """

    def __init__(self, hq_features: int, lq_features: int, dim: int) -> None:
        super().__init__()
        self.proj = _projections(hq_features, lq_features, dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.out_features = dim

    def forward(self, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        p, q = self.proj["hq"](hq), self.proj["lq"](lq)
        g = torch.sigmoid(self.gate(torch.cat([p, q], dim=1)))
        return g * p + (1 - g) * q


def _projections(hq_features: int, lq_features: int, dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({"hq": nn.Linear(hq_features, dim), "lq": nn.Linear(lq_features, dim)})


def build_fusion(kind: str, hq_features: int, lq_features: int, dim: int) -> nn.Module:
    if kind == "concat":
        return ConcatFusion(hq_features, lq_features)
    if kind == "gated":
        return GatedFusion(hq_features, lq_features, dim)
    return AttentionFusion(hq_features, lq_features, dim)


# -- classifier -----------------------------------------------------------------------------------


class _Hidden(nn.Module):
    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.act = nn.ReLU()
        # Always present (p may be 0) so that state-dict names do not depend on the rates.
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.fc(x)))


class Classifier(nn.Module):
    """``Linear -> ReLU -> Dropout`` per hidden width, then ``Linear`` to the logits.

    ``dropout[k]`` follows hidden layer ``k``; layers past the list get none. With the seed's
    ``[512, 256, 128]`` and ``[0.5, 0.3]``: 512 -> drop 0.5 -> 256 -> drop 0.3 -> 128 -> logit
    (the usual Keras stack: heavy dropout on the widest layers, none right before the output).
    """

    def __init__(
        self, in_features: int, hidden: list[int], dropout: list[float], num_outputs: int
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.blocks = nn.Sequential(*(
            _Hidden(a, b, dropout[k] if k < len(dropout) else 0.0)
            for k, (a, b) in enumerate(pairwise(widths))
        ))
        self.out = nn.Linear(widths[-1], num_outputs)
        # Small output weights: the first logits are near 0, i.e. P(fake) near 0.5.
        nn.init.trunc_normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(x))


# -- detector -------------------------------------------------------------------------------------


class DualStreamDetector(Detector):
    """HQ and LQ CNN streams -> ConvLSTM each -> pooled last state -> fusion -> MLP -> logit.

    Modules: ``backbone`` (``{"hq", "lq"}`` timm CNNs, the pretrained part), ``reduce`` (optional
    1x1 convolutions), ``temporal`` (``{"hq", "lq"}`` :class:`ConvLSTM`), ``fusion`` and ``head``
    (the classifier). Everything outside ``backbone`` is new and counts as head
    (:meth:`head_parameter_names`), for the head learning rate and the feature_extractor strategy.
    ``weights_follow``: whole-detector weights are loaded right after building, so the stream
    backbones' ``pretrained`` files are not read and nothing is downloaded.
    """

    config: DualStreamConfig

    def __init__(self, config: DualStreamConfig, *, weights_follow: bool = False) -> None:
        backbones = {
            key: _create_backbone(key, getattr(config, key), config, weights_follow)
            for key in STREAMS
        }
        pcfg = getattr(backbones["hq"], "pretrained_cfg", None) or {}
        mean, std = pcfg.get("mean") or IMAGENET_MEAN, pcfg.get("std") or IMAGENET_STD
        super().__init__(config, config.hq.size, mean, std)
        self.lq_size = config.lq.size
        self.backbone = nn.ModuleDict(backbones)
        channels = {
            key: _feature_channels(key, getattr(config, key), b) for key, b in backbones.items()
        }
        reduce = config.reduce_channels
        self.reduce = nn.ModuleDict({
            key: nn.Conv2d(channels[key], reduce, 1) if reduce else nn.Identity() for key in STREAMS
        })
        self.temporal = nn.ModuleDict({
            key: ConvLSTM(reduce or channels[key], config.convlstm_filters, config.kernel_size)
            for key in STREAMS
        })
        width = config.convlstm_filters[-1]
        self.fusion = build_fusion(config.fusion, width, width, config.fusion_dim or width)
        self.head = Classifier(
            self.fusion.out_features, config.classifier, config.dropout, config.num_classes
        )

        self.pretrained_report: dict[str, Any] | None = None
        if not weights_follow:
            reports = {key: self._load_pretrained(key) for key in STREAMS
                       if getattr(config, key).pretrained is not None}
            self.pretrained_report = reports or None
        if config.grad_checkpointing:
            for key in STREAMS:
                try:
                    self.backbone[key].set_grad_checkpointing(True)
                except (AssertionError, NotImplementedError, AttributeError):
                    raise ConfigError(
                        f"model.grad_checkpointing: timm model {getattr(config, key).timm_name!r} "
                        f"(model.{key}.timm_name) does not support gradient checkpointing; set it "
                        "to false"
                    ) from None
        if config.freeze_backbones:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.apply_freeze()

    def _load_pretrained(self, key: str) -> dict[str, Any]:
        backbone = self.backbone[key]
        classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
        return load_backbone_weights(
            backbone,
            getattr(self.config, key).pretrained,
            self.config.strip_prefix,
            drop_prefixes=(classifier,) if isinstance(classifier, str) else classifier,
        )

    def backbones_frozen(self) -> bool:
        return self.config.freeze_backbones or self.config.freeze.backbone

    def train(self, mode: bool = True) -> "DualStreamDetector":
        super().train(mode)
        if mode and self.backbones_frozen() and self.config.freeze.norm_eval:
            # Frozen statistics must not drift with the new data's batches.
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def head_parameter_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if not n.startswith("backbone.")}

    def preprocessing(self) -> dict:
        return {**super().preprocessing(), "sequence": self.config.sequence.model_dump()}

    def explain_target(self) -> None:
        """None: heatmaps explain single images; this detector scores clips, whose score a map
        over one frame would not explain (its ConvLSTMs weigh the frames together)."""
        return None

    def stream_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled last ConvLSTM state of each stream, ``(B, C)`` each, for clips ``x``."""
        if x.ndim != 5 or x.shape[2] != 3:
            raise ValueError(
                f"detector {self.config.name!r} expects clips (B, T, 3, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        b, t = x.shape[:2]
        frames = x.flatten(0, 1)
        # Antialiased, so that the LQ stream sees a low-pass image rather than aliasing.
        small = F.interpolate(
            frames, size=(self.lq_size, self.lq_size), mode="bilinear", align_corners=False,
            antialias=True,
        )
        return self._stream("hq", frames, b, t), self._stream("lq", small, b, t)

    def _stream(self, key: str, frames: torch.Tensor, b: int, t: int) -> torch.Tensor:
        fmap = self.reduce[key](self.backbone[key].forward_features(frames))
        _, last = self.temporal[key](fmap.unflatten(0, (b, t)))
        return last.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for normalised clips ``(B, T, 3, H, W)``."""
        return self.head(self.fusion(*self.stream_features(x)))


def _create_backbone(
    key: str, settings: StreamSettings, config: DualStreamConfig, weights_follow: bool
) -> nn.Module:
    _check_timm_name(settings.timm_name, key=f"model.{key}.timm_name")
    # Never reaches the network unless allowed and no local file or detector weights follow.
    download = bool(config.allow_download and settings.pretrained is None and not weights_follow)
    try:
        return timm.create_model(
            settings.timm_name, pretrained=download, num_classes=0, global_pool=""
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"model.{key}.timm_name: timm model {settings.timm_name!r} cannot be built as a "
            f"feature extractor: {exc}"
        ) from None
    except Exception as exc:
        if not download:
            raise
        raise download_failed(settings.timm_name, exc, f"model.{key}.pretrained") from None


def _feature_channels(key: str, settings: StreamSettings, backbone: nn.Module) -> int:
    """Channels of the backbone's last feature map; refuses backbones without one (ViTs)."""
    # Running it is the one reliable way to learn the layout; small, and on the backbone's
    # device (meta when building on the meta device).
    size = min(settings.size, 64)
    was_training = backbone.training
    backbone.eval()  # batch statistics of one 1x1 map would fail
    try:
        param = next(backbone.parameters(), None)
        probe = torch.zeros(1, 3, size, size, device=param.device if param is not None else None)
        with torch.no_grad():
            shape = tuple(backbone.forward_features(probe).shape)
    except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(
            f"model.{key}.timm_name: timm model {settings.timm_name!r} fails on a {size} px "
            f"frame ({type(exc).__name__}: {exc}); choose a CNN such as efficientnet_b0"
        ) from None
    finally:
        backbone.train(was_training)
    if len(shape) != 4:
        raise ConfigError(
            f"model.{key}.timm_name: {settings.timm_name!r} gives token features {shape}, not a "
            "CNN feature map (N, C, H, W) for the ConvLSTM; choose a CNN such as efficientnet_b4"
        )
    return int(shape[1])


register_detector(
    "dual_stream",
    config=DualStreamConfig,
    defaults={},
    description="video clips (B, T, 3, H, W): EfficientNet-B4 224 px + B0 112 px streams, "
    "ConvLSTM each, attention fusion, 1 logit",
    card=DetectorCard(
        architecture="EfficientNet-B4 (224 px) + EfficientNet-B0 (112 px) per frame, ConvLSTM per "
        "stream, attention fusion, MLP to 1 logit; input clips (B, T, 3, 224, 224)",
        input="224",
        normalisation="ImageNet",
        weights="timm ImageNet weights of each backbone, saved locally (as above), as "
        "`model.hq.pretrained` / `model.lq.pretrained`",
    ),
)(DualStreamDetector)
