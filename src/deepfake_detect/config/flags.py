"""The advanced trainer's command-line flags (``--use_mixup``, ``--batch_size 16`` ...) as config
overrides, so a seed command line keeps working and every flag is also a config key.

Each flag is translated to ``key=value`` overrides applied after the ones given on the command
line, against the config as loaded (so ``--use-mixup`` keeps a recipe's own mixup strengths and
only switches mixup on with the usual 0.2 / 1.0 when the recipe has none).
"""

from __future__ import annotations

from typing import Any

from deepfake_detect.config.schema import ExperimentConfig

# flag -> config key for the flags that set one key to the value given
VALUE_FLAGS: dict[str, str] = {
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "lr": "train.optimizer.lr",
    "loss": "train.loss.name",
    "scheduler": "train.scheduler.name",
    "accumulation_steps": "train.accumulate_grad_batches",
    "early_stopping": "train.early_stopping_patience",
    "label_smoothing": "train.loss.label_smoothing",
    "attention": "model.attention",
}
# the usual strengths when --use-mixup switches on a recipe without mixup
MIXUP_ALPHA, CUTMIX_ALPHA = 0.2, 1.0
RANDAUGMENT_OPS = 2


def flag_overrides(cfg: ExperimentConfig, flags: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for the flags that were given (None: not given)."""
    out = [f"{VALUE_FLAGS[k]}={v}" for k, v in flags.items() if k in VALUE_FLAGS and v is not None]
    aug = cfg.data.augment
    if flags.get("use_mixup") is True and aug.mixup_alpha == 0 and aug.cutmix_alpha == 0:
        out += [f"data.augment.mixup_alpha={MIXUP_ALPHA}", f"data.augment.cutmix_alpha={CUTMIX_ALPHA}"]
    elif flags.get("use_mixup") is False:
        out += ["data.augment.mixup_alpha=0", "data.augment.cutmix_alpha=0"]
    if flags.get("use_randaugment") is True and aug.randaugment == 0:
        out.append(f"data.augment.randaugment={RANDAUGMENT_OPS}")
    elif flags.get("use_randaugment") is False:
        out.append("data.augment.randaugment=0")
    if flags.get("use_amp") is not None:
        out.append(f"train.precision={'auto' if flags['use_amp'] else '32'}")
    if flags.get("use_tta") is True and not cfg.eval.tta:
        out.append("eval.tta=default")
    elif flags.get("use_tta") is False:
        out.append("eval.tta=null")
    if flags.get("use_mlflow") is not None:
        out.append(f"log.mlflow.enabled={str(bool(flags['use_mlflow'])).lower()}")
    return out
