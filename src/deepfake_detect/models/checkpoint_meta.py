"""What a checkpoint says about itself, typed: validated once, when the checkpoint is read.

Stored as JSON under the ``deepfake_detect`` key (a Lightning ``.ckpt``) or the safetensors
metadata key of the same name. Keys beyond these (metrics a run adds) are kept as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepfake_detect.errors import CheckpointError

FORMAT_VERSION = 1
CLASS_NAMES = ["real", "fake"]  # label 0, label 1 (as in deepfake_detect.data.samples)


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    format: int = Field(FORMAT_VERSION, ge=1, description="layout version of this meta")
    model: dict[str, Any] = Field(description="the detector's resolved model config")
    preprocessing: dict[str, Any] = Field(default_factory=dict,
                                          description="input size, mean, std (and clip layout)")
    threshold: float = Field(0.5, ge=0, le=1, description="decision threshold on P(fake)")
    temperature: float = Field(1.0, gt=0, description="P(fake) = sigmoid(fake logit / T)")
    version: str = Field("unknown", description="deepfake-detect version that wrote it")
    git_commit: str = Field("unknown", description="its source commit")
    experiment: dict[str, Any] = Field(default_factory=dict,
                                       description="the training run's resolved config")
    class_names: list[str] = Field(default_factory=lambda: list(CLASS_NAMES))
    lora: dict[str, Any] | None = Field(None, description="LoRA settings of unmerged adapters")
    calibration: dict[str, Any] | None = Field(None, description="what calibrate fitted")

    @classmethod
    def read(cls, raw: Any, source: str) -> CheckpointMeta:
        """Validate stored meta; a bad value is a one-line CheckpointError naming the key."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise CheckpointError(f"{source}: the 'deepfake_detect' metadata has no model config")
        fmt = raw.get("format", FORMAT_VERSION)
        if isinstance(fmt, int) and fmt > FORMAT_VERSION:
            from deepfake_detect import __version__

            raise CheckpointError(
                f"{source}: checkpoint format {fmt} was written by a newer deepfake-detect "
                f"({raw.get('version', '?')}); this is {__version__}, please upgrade"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "<meta>"
            raise CheckpointError(
                f"{source}: checkpoint meta '{key}' {err['msg'].lower()} (got {err.get('input')!r}); "
                "the file was edited or damaged: export or calibrate the checkpoint again"
            ) from None

    # -- the parts other layers read ---------------------------------------------------------
    @property
    def eval_settings(self) -> dict[str, Any]:
        """The run's ``eval`` section (tta, video_aggregation), empty if none was recorded."""
        return dict(self.experiment.get("eval") or {})

    @property
    def prepare(self) -> dict[str, Any] | None:
        """The face pipeline the training crops were made with, if recorded."""
        return self.experiment.get("prepare") or None

    def to_json(self) -> dict[str, Any]:
        """Plain data to store (None-valued optional keys left out, as before typing)."""
        return self.model_dump(mode="json", exclude_none=True)
