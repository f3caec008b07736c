"""Classification losses for the binary real/fake task.

Every loss here works on two-class log-probabilities in *label* order (column 0 real, column 1
fake), whatever the model's head looks like: a single fake logit ``s`` gives
``[logsigmoid(-s), logsigmoid(s)]``, two logits give their log-softmax reordered by
``fake_index``. Cross-entropy over these is exactly softmax cross-entropy (2 logits) or
BCE-with-logits (1 logit), and focal loss is the same formula for both heads.

Targets may be hard labels (integer or bool ``(B,)``, 0 real / 1 fake), the probability of fake
(float ``(B,)``, e.g. from mixup), or soft targets shaped like the logits (float ``(B, C)``, in
*logit* order: column ``fake_index`` is the fake mass; ``(B, 1)`` is P(fake)).

Label smoothing moves targets towards 1/2 for both heads: ``y * (1 - eps) + eps / 2``, which is
what ``F.cross_entropy(label_smoothing=eps)`` does with two classes.

Every loss is linear in the target: a soft target ``t`` costs ``t_real * L(real) + t_fake *
L(fake)``, where ``L(c)`` is the (smoothed) loss of hard label ``c``; so a mixup target costs the
mix of its two labels' losses. Class weights are given in label order ``[w_real, w_fake]`` and
scale ``L(c)`` by ``w_c``: with hard labels each sample's loss is scaled by its label's weight.
The batch loss is the plain mean over samples, the same for every loss name (this differs from
``F.cross_entropy(weight=)``, which divides by the sum of the weights; a plain mean keeps a batch
an unbiased estimate of the class-balanced risk). Pass weights that average 1 over the training
set, e.g. ``n / (2 * n_c)``, to keep the loss scale, and so the effective learning rate.

A detector with a variance head (``model.uncertainty``) predicts, besides its fake logit ``z``,
the log-variance ``v`` of a Gaussian over it (heteroscedastic aleatoric uncertainty, Kendall &
Gal 2017: "What uncertainties do we need in Bayesian deep learning for computer vision?").
Training marginalises over that noise: :func:`marginal_fake_logit` draws ``T`` logits
``z_t = z + exp(v / 2) * eps_t`` and returns the single logit
``s = log mean_t sigmoid(z_t) - log mean_t sigmoid(-z_t)``, whose sigmoid is the Monte-Carlo
estimate of P(fake) = E[sigmoid(z + noise)]. :func:`logits_like_head` shapes ``s`` like the
head's logits, so every loss above (smoothing, class weights, focal, soft targets) applies to it
unchanged; its cross-entropy for a fake label is ``-log mean_t sigmoid(z_t)``, Kendall & Gal's
marginalised classification loss. Noise moves the mean sigmoid towards 1/2, so a large variance
lowers the loss of samples the mean logit gets confidently wrong (e.g. noisy labels) and raises
it for those it gets right: the head learns a large variance exactly where the labels are
unpredictable from the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepfake_detect.config.schema import LossConfig
from deepfake_detect.errors import ConfigError


def _check_head(name: str, num_classes: int, fake_index: int) -> None:
    if num_classes not in (1, 2):
        raise ConfigError(f"model.num_classes must be 1 or 2, got {num_classes}")
    if name == "ce" and num_classes != 2:
        raise ConfigError(
            "train.loss.name 'ce' needs two logits (model.num_classes: 2); with a single fake "
            "logit (model.num_classes: 1) use train.loss.name: bce (or focal)"
        )
    if name == "bce" and num_classes != 1:
        raise ConfigError(
            "train.loss.name 'bce' needs a single fake logit: set model.num_classes: 1, or keep "
            "two logits and use train.loss.name: ce (or focal)"
        )
    if fake_index not in (0, 1) or (num_classes == 1 and fake_index != 0):
        raise ConfigError(
            f"model.fake_index {fake_index} does not fit model.num_classes {num_classes}: "
            "use 0 or 1 with two logits, 0 with one"
        )


class BinaryLoss(nn.Module):
    """Cross-entropy (``gamma=None``) or focal loss over a 1- or 2-logit binary head."""

    class_weights: Tensor | None

    def __init__(
        self,
        num_classes: int,
        fake_index: int = 1,
        label_smoothing: float = 0.0,
        class_weights: Tensor | None = None,
        gamma: float | None = None,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.fake_index = int(fake_index) if num_classes == 2 else 0
        self.label_smoothing = float(label_smoothing)
        self.gamma = None if gamma is None else float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if class_weights.numel() != 2 or bool((class_weights < 0).any()):
                raise ValueError(
                    "class_weights must hold two non-negative weights [real, fake], got "
                    f"{class_weights.tolist()}"
                )
        # Not persistent: checkpoints must load whether or not weights were used in training.
        self.register_buffer("class_weights", class_weights, persistent=False)

    def extra_repr(self) -> str:
        focal = "" if self.gamma is None else f", gamma={self.gamma}, alpha={self.alpha}"
        return (
            f"num_classes={self.num_classes}, fake_index={self.fake_index}, "
            f"label_smoothing={self.label_smoothing}{focal}"
        )

    def log_probs(self, logits: Tensor) -> Tensor:
        """``(B, 2)`` log-probabilities in label order (real, fake), in float32."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"expected logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}"
            )
        logits = logits.float()
        if self.num_classes == 1:
            s = logits[:, 0]
            return torch.stack([F.logsigmoid(-s), F.logsigmoid(s)], dim=1)
        logp = F.log_softmax(logits, dim=1)
        return logp if self.fake_index == 1 else logp.flip(1)

    def targets(self, labels: Tensor, batch: int) -> Tensor:
        """``(B, 2)`` target masses in label order (real, fake), before smoothing."""
        if labels.ndim == 1:
            if labels.shape[0] != batch:
                raise ValueError(f"expected {batch} labels, got {labels.shape[0]}")
            p_fake = labels.float()
            return torch.stack([1 - p_fake, p_fake], dim=1)
        if labels.ndim == 2 and labels.shape == (batch, self.num_classes):
            if not labels.is_floating_point():
                raise ValueError("(B, C) soft targets must be a float tensor")
            labels = labels.float()
            if self.num_classes == 1:
                return torch.cat([1 - labels, labels], dim=1)
            return labels if self.fake_index == 1 else labels.flip(1)
        raise ValueError(
            f"labels must be (B,) or (B, {self.num_classes}) for logits of batch {batch}, "
            f"got {tuple(labels.shape)}"
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logp = self.log_probs(logits)
        target = self.targets(labels.to(logp.device), logp.shape[0])
        # Per-class terms -log p_k, focal-modulated: the loss of a target is sum_k q_k * term_k.
        term = -logp
        if self.gamma is not None:
            if self.gamma > 0:
                # With two classes 1 - p_k is the other class's probability; taking it from the
                # log-probabilities avoids pow(0, gamma) (and NaN gradients) on confident logits.
                term = term * (self.gamma * logp.flip(1)).exp()
            if self.alpha is not None:
                term = term * logp.new_tensor([1 - self.alpha, self.alpha])
        # hard_loss[:, c]: the loss if the label were c, with c's target smoothed towards 1/2.
        eps = self.label_smoothing
        hard_loss = term * (1 - eps / 2) + term.flip(1) * (eps / 2) if eps > 0 else term
        # Linear in the target, so a mixed target costs the mix of its hard-label losses.
        mass = target if self.class_weights is None else target * self.class_weights.to(target)
        return (mass * hard_loss).sum(dim=1).mean()


def build_loss(
    cfg: LossConfig,
    num_classes: int,
    fake_index: int = 1,
    class_weights: Tensor | None = None,
) -> nn.Module:
    """The loss named by ``train.loss`` for a detector head of ``num_classes`` logits.

    ``class_weights`` are ``[w_real, w_fake]`` in label order (see the module docstring).
    Focal loss weights the fake class by ``focal_alpha`` and the real class by
    ``1 - focal_alpha`` (``null``: no class weighting); with ``focal_gamma: 0`` and
    ``focal_alpha: null`` it equals ce/bce.
    """
    _check_head(cfg.name, num_classes, fake_index)
    if cfg.name == "focal":
        return BinaryLoss(
            num_classes,
            fake_index,
            cfg.label_smoothing,
            class_weights,
            gamma=cfg.focal_gamma,
            alpha=cfg.focal_alpha,
        )
    return BinaryLoss(num_classes, fake_index, cfg.label_smoothing, class_weights)


def marginal_fake_logit(
    fake_logit: Tensor,
    log_var: Tensor,
    samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The logit of P(fake) marginalised over Gaussian noise on the fake logit, in float32.

    ``fake_logit`` and ``log_var`` are ``(B,)``; ``samples`` noise draws per input (from
    ``generator``, default torch's global one). Returns ``(B,)``
    ``s = log mean_t sigmoid(z_t) - log mean_t sigmoid(-z_t)``, ``z_t = z + exp(v / 2) eps_t``,
    computed with logsigmoid and logsumexp, so it neither overflows nor loses the tails. As the
    variance goes to 0, ``s`` goes to ``z``; gradients reach both inputs.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if fake_logit.shape != log_var.shape:
        raise ValueError(
            f"fake_logit {tuple(fake_logit.shape)} and log_var {tuple(log_var.shape)} must have "
            "the same shape"
        )
    z = fake_logit.float()
    eps = torch.randn(
        (*z.shape, samples), generator=generator, device=z.device, dtype=torch.float32
    )
    z_t = z.unsqueeze(-1) + (0.5 * log_var.float()).exp().unsqueeze(-1) * eps
    # The 1/T of both means cancels in the difference.
    return torch.logsumexp(F.logsigmoid(z_t), dim=-1) - torch.logsumexp(F.logsigmoid(-z_t), dim=-1)


def logits_like_head(fake_logit: Tensor, num_classes: int, fake_index: int = 1) -> Tensor:
    """Logits of a ``num_classes`` head whose fake logit (see ``Detector.fake_logit``) is
    ``fake_logit``: ``(B, 1)``, or ``(B, 2)`` with the fake column ``fake_logit`` and the other 0.
    """
    if num_classes == 1:
        return fake_logit.unsqueeze(1)
    zero = torch.zeros_like(fake_logit)
    return torch.stack([zero, fake_logit] if fake_index == 1 else [fake_logit, zero], dim=1)
