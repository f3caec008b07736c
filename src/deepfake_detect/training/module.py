"""The LightningModule that trains any registered detector.

Validation predictions are gathered from every process and de-duplicated by sample index before
metrics are computed, so that distributed validation gives the same numbers as one process
(the distributed sampler pads ranks with repeated samples).

A detector with a variance head (``model.uncertainty``) trains on the loss marginalised over
its predicted fake-logit noise (:func:`~deepfake_detect.training.losses.marginal_fake_logit`)
and logs ``train_logit_var``, the mean predicted variance per epoch; validation scores its
deterministic logits, so metrics and thresholds mean what they mean without the head.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from deepfake_detect.config.schema import ExperimentConfig
from deepfake_detect.data.video_clips import average_by_video
from deepfake_detect.data.feature_cache import FeatureCache
from deepfake_detect.data.transforms import build_mixup
from deepfake_detect.evaluation.metrics import binary_metrics
from deepfake_detect.calibration.thresholds import choose_threshold
from deepfake_detect.models.checkpoint import checkpoint_meta
from deepfake_detect.models.detector import Detector
from deepfake_detect.training.losses import build_loss, logits_like_head, marginal_fake_logit
from deepfake_detect.training.optim import build_optimizer, build_scheduler

LOWER_IS_BETTER = {"val_loss", "val_eer"}
# f1: F1 of the fake class; f1_real: of the real class; macro_f1: their mean.
LOGGED_VAL_METRICS = ("auc", "ap", "eer", "acc", "f1", "f1_real", "macro_f1", "balanced_acc")


def monitor_mode(metric: str) -> str:
    return "min" if metric in LOWER_IS_BETTER else "max"


class DetectorModule(L.LightningModule):
    def __init__(
        self,
        detector: Detector,
        config: ExperimentConfig,
        class_weights: torch.Tensor | None = None,
        feature_cache: FeatureCache | None = None,
    ) -> None:
        super().__init__()
        self.model = detector
        self.feature_cache = feature_cache
        self.mixup = build_mixup(config.data.augment)
        self.config = config
        self.criterion = build_loss(
            config.train.loss, detector.num_classes, detector.fake_index, class_weights
        )
        self.threshold = config.eval.threshold.value
        self.skipped: dict[str, str] = {}
        self.val_metrics: dict[str, float] = {}
        self._val_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- steps -------------------------------------------------------------------------------
    def _images(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        if self.config.train.channels_last and x.device.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _note_skipped(self, batch: dict) -> None:
        for path, reason in batch.get("skipped", ()):
            self.skipped[path] = reason

    def _logits(self, batch: dict, split: str, with_variance: bool = False):
        """The batch's logits; with ``with_variance`` ``(logits, log_var)`` of a variance head."""
        classify = self.model.classify_with_variance if with_variance else self.model.classify
        if "features" in batch:  # served from the feature cache: only the head runs
            return classify(batch["features"])
        x = self._images(batch)
        cache = self.feature_cache
        if cache is None or not cache.wants(split):
            return self.model.forward_with_variance(x) if with_variance else self.model(x)
        with torch.no_grad():
            features = self.model.extract_features(x)
        cache.put(split, batch["index"], features)
        return classify(features)

    def _marginal_logits(self, batch: dict, n: int) -> torch.Tensor:
        """Logits of P(fake) marginalised over the predicted logit noise (see losses)."""
        logits, log_var = self._logits(batch, "train", with_variance=True)
        self.log(
            "train_logit_var", log_var.detach().float().exp().mean(),
            on_step=False, on_epoch=True, batch_size=n,
        )
        model = self.model
        s = marginal_fake_logit(model.fake_logit(logits), log_var, model.variance_samples)
        return logits_like_head(s, model.num_classes, model.fake_index)

    @staticmethod
    def _empty(batch: dict) -> bool:
        return "features" not in batch and batch["image"] is None

    def on_fit_start(self) -> None:
        if self.config.train.channels_last and self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)

    def training_step(self, batch: dict, batch_idx: int):
        self._note_skipped(batch)
        if self._empty(batch):
            return None  # every file of this batch failed to load; they are counted
        labels = batch["label"]
        if self.mixup is not None and len(labels) % 2 == 0:  # timm mixes pairs: even batches
            # The fake mass of each mixed image is its soft target (the loss is linear in it).
            batch = {**batch, "image": self._images(batch)}
            batch["image"], targets = self.mixup(batch["image"], labels)
            labels = targets[:, 1].float()
        n = len(batch["label"])
        if self.model.predicts_variance:
            logits = self._marginal_logits(batch, n)
        else:
            logits = self._logits(batch, "train")
        loss = self.criterion(logits, labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        extra = self.model.regularization_loss()
        if extra is not None:
            self.log("train_reg_loss", extra, on_step=True, on_epoch=True, batch_size=n)
            loss = loss + extra
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_parts = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._note_skipped(batch)
        if self._empty(batch):
            return
        logits = self._logits(batch, "val").float()
        # Clip batches also say which video each clip is from (metrics are per video then).
        video = batch.get("video", torch.full_like(batch["label"], -1))
        self._val_parts.append((batch["index"], logits.detach(), batch["label"], video))

    def on_validation_epoch_end(self) -> None:
        parts, self._val_parts = self._val_parts, []
        if self.trainer.sanity_checking:
            return
        _, logits, labels, videos = self._gather(parts)
        if len(labels) == 0:
            return
        loss = self.criterion(logits, labels).item()
        probs_t = self.model.probabilities(logits).cpu()
        labels = labels.cpu()
        if bool((videos >= 0).all()):
            # Video detectors: a video's score is the mean over its clips (as evaluate does).
            videos = videos.cpu()
            count = int(videos.max()) + 1
            probs_t = average_by_video(probs_t, videos, count)
            video_labels = torch.full((count,), -1, dtype=labels.dtype)
            video_labels[videos] = labels
            seen = video_labels >= 0
            probs_t, labels = probs_t[seen], video_labels[seen]
        probs = probs_t.numpy()
        y = labels.numpy()
        tcfg = self.config.eval.threshold
        self.threshold = choose_threshold(y, probs, tcfg.strategy, tcfg.value)
        metrics = binary_metrics(y, probs, threshold=self.threshold)
        values = {"val_loss": loss}
        values.update({f"val_{k}": float(metrics[k]) for k in LOGGED_VAL_METRICS})
        values["val_threshold"] = float(self.threshold)
        self.val_metrics = values
        # Every rank holds the same gathered values, so no further reduction is needed.
        shown = {k: v for k, v in values.items() if k in ("val_auc", "val_loss")}
        self.log_dict(shown, prog_bar=True, sync_dist=False)
        self.log_dict({k: v for k, v in values.items() if k not in shown}, sync_dist=False)

    def _gather(self, parts):
        """Concatenate this rank's predictions, gather all ranks, drop the sampler's duplicates."""
        num_outputs = self.model.num_classes
        if parts:
            index, logits, labels, videos = (torch.cat(t) for t in zip(*parts))
        else:
            index = torch.zeros(0, dtype=torch.long, device=self.device)
            logits = torch.zeros(0, num_outputs, device=self.device)
            labels = torch.zeros(0, dtype=torch.long, device=self.device)
            videos = torch.zeros(0, dtype=torch.long, device=self.device)
        if self.trainer.world_size > 1:
            sizes = self.all_gather(torch.tensor([len(index)], device=self.device)).flatten()
            most = int(sizes.max())

            def padded(t: torch.Tensor) -> torch.Tensor:
                pad = torch.zeros((most - len(t), *t.shape[1:]), dtype=t.dtype, device=t.device)
                return torch.cat([t, pad])

            gathered = [self.all_gather(padded(t)) for t in (index, logits, labels, videos)]
            index, logits, labels, videos = (
                torch.cat([g[r, : int(sizes[r])] for r in range(len(sizes))]) for g in gathered
            )
        order = torch.argsort(index, stable=True)
        index, logits, labels, videos = index[order], logits[order], labels[order], videos[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return index[keep], logits[keep], labels[keep], videos[keep]

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        tcfg = self.config.train
        strategy = self.config.strategy
        layer_decay = strategy.layer_decay if strategy.name == "fine_tuning" else None
        optimizer = build_optimizer(self.model, tcfg.optimizer, layer_decay)
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, -(-total_steps // tcfg.epochs))
        scheduler = build_scheduler(
            optimizer, tcfg.scheduler, tcfg.epochs, steps_per_epoch,
            monitor=tcfg.monitor, mode=monitor_mode(tcfg.monitor),
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain data in the file (it must load with weights_only=True); typed when read back.
        checkpoint["deepfake_detect"] = checkpoint_meta(
            self.model, self.threshold, self.config.model_dump(mode="json"),
            val_metrics=dict(self.val_metrics),
        )
        # Plain lists and tensors only: the file must load with weights_only=True.
        np_state = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": _python_state_to_lists(random.getstate()),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("deepfake_detect", {})
        self.threshold = float(meta.get("threshold", self.threshold))
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        name, keys, *rest = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
