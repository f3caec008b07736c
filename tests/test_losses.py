import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from deepfake_detect.config.schema import LossConfig
from deepfake_detect.errors import ConfigError
from deepfake_detect.training.losses import build_loss

torch.set_num_threads(1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits2 = torch.randn(16, 2, generator=g) * 3
    logits1 = torch.randn(16, 1, generator=g) * 3
    labels = torch.randint(0, 2, (16,), generator=g)
    labels[:2] = torch.tensor([0, 1])  # both classes present
    return logits2, logits1, labels


def test_ce_matches_cross_entropy(batch):
    logits2, _, labels = batch
    loss = build_loss(LossConfig(name="ce"), num_classes=2)(logits2, labels)
    assert torch.allclose(loss, F.cross_entropy(logits2, labels))


def test_ce_label_smoothing_matches_torch(batch):
    logits2, _, labels = batch
    loss = build_loss(LossConfig(name="ce", label_smoothing=0.2), num_classes=2)(logits2, labels)
    assert torch.allclose(loss, F.cross_entropy(logits2, labels, label_smoothing=0.2))
    assert not torch.allclose(loss, F.cross_entropy(logits2, labels))


def test_ce_fake_index_zero_maps_labels_to_logit_columns(batch):
    logits2, _, labels = batch
    loss = build_loss(LossConfig(name="ce"), num_classes=2, fake_index=0)(logits2, labels)
    # fake (label 1) is logit column 0, real is column 1
    assert torch.allclose(loss, F.cross_entropy(logits2, 1 - labels))
    assert torch.allclose(
        loss, build_loss(LossConfig(name="ce"), 2, fake_index=1)(logits2.flip(1), labels)
    )


def test_bce_matches_bce_with_logits_and_smoothing(batch):
    _, logits1, labels = batch
    y = labels.float()
    plain = build_loss(LossConfig(name="bce"), num_classes=1, fake_index=0)(logits1, labels)
    assert torch.allclose(plain, F.binary_cross_entropy_with_logits(logits1[:, 0], y))
    eps = 0.1
    smooth = build_loss(LossConfig(name="bce", label_smoothing=eps), 1, 0)(logits1, labels)
    target = y * (1 - eps) + eps / 2
    assert torch.allclose(smooth, F.binary_cross_entropy_with_logits(logits1[:, 0], target))


def test_bce_and_ce_agree_on_equivalent_heads(batch):
    logits2, _, labels = batch
    fake_logit = (logits2[:, 1] - logits2[:, 0]).unsqueeze(1)
    cfg = dict(label_smoothing=0.1)
    ce = build_loss(LossConfig(name="ce", **cfg), 2)(logits2, labels)
    bce = build_loss(LossConfig(name="bce", **cfg), 1, 0)(fake_logit, labels)
    assert torch.allclose(ce, bce, atol=1e-6)


def test_class_weights_scale_each_sample(batch):
    logits2, logits1, labels = batch
    w = torch.tensor([0.5, 3.0])  # [real, fake]
    per_sample = w[labels]
    ce = build_loss(LossConfig(name="ce"), 2, class_weights=w)(logits2, labels)
    manual = (F.cross_entropy(logits2, labels, reduction="none") * per_sample).mean()
    assert torch.allclose(ce, manual)
    # weights follow labels, not logit columns
    ce0 = build_loss(LossConfig(name="ce"), 2, fake_index=0, class_weights=w)(logits2, labels)
    manual0 = (F.cross_entropy(logits2, 1 - labels, reduction="none") * per_sample).mean()
    assert torch.allclose(ce0, manual0)
    bce = build_loss(LossConfig(name="bce"), 1, 0, class_weights=w)(logits1, labels)
    manual_bce = F.binary_cross_entropy_with_logits(
        logits1[:, 0], labels.float(), weight=per_sample
    )
    assert torch.allclose(bce, manual_bce)
    # with smoothing each sample's smoothed loss is scaled by its label's weight
    ces = build_loss(LossConfig(name="ce", label_smoothing=0.2), 2, class_weights=w)
    per = F.cross_entropy(logits2, labels, label_smoothing=0.2, reduction="none")
    assert torch.allclose(ces(logits2, labels), (per * per_sample).mean())


def test_ce_requires_two_logits_and_bce_one():
    with pytest.raises(ConfigError, match="train.loss.name: bce"):
        build_loss(LossConfig(name="ce"), num_classes=1, fake_index=0)
    with pytest.raises(ConfigError, match="model.num_classes: 1"):
        build_loss(LossConfig(name="bce"), num_classes=2)
    with pytest.raises(ConfigError, match="fake_index"):
        build_loss(LossConfig(name="bce"), num_classes=1, fake_index=1)


def test_wrong_logit_shape_is_reported(batch):
    logits2, _, labels = batch
    loss = build_loss(LossConfig(name="focal"), num_classes=1, fake_index=0)
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        loss(logits2, labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_without_gamma_and_alpha_equals_ce_and_bce(batch, smoothing):
    logits2, logits1, labels = batch
    focal = LossConfig(name="focal", focal_gamma=0.0, focal_alpha=None, label_smoothing=smoothing)
    assert torch.allclose(
        build_loss(focal, 2)(logits2, labels),
        build_loss(LossConfig(name="ce", label_smoothing=smoothing), 2)(logits2, labels),
    )
    assert torch.allclose(
        build_loss(focal, 1, 0)(logits1, labels),
        build_loss(LossConfig(name="bce", label_smoothing=smoothing), 1, 0)(logits1, labels),
    )


def test_sigmoid_focal_matches_torchvision(batch):
    _, logits1, labels = batch
    cfg = LossConfig(name="focal", focal_gamma=2.0, focal_alpha=0.25)
    ours = build_loss(cfg, 1, 0)(logits1, labels)
    ref = sigmoid_focal_loss(logits1[:, 0], labels.float(), alpha=0.25, gamma=2.0, reduction="mean")
    assert torch.allclose(ours, ref, atol=1e-6)


def test_softmax_focal_matches_manual(batch):
    logits2, _, labels = batch
    gamma, alpha = 1.5, 0.7
    ours = build_loss(LossConfig(name="focal", focal_gamma=gamma, focal_alpha=alpha), 2)(
        logits2, labels
    )
    p = torch.softmax(logits2, 1)
    pt = p.gather(1, labels[:, None])[:, 0]
    at = torch.where(labels == 1, alpha, 1 - alpha)
    manual = (-at * (1 - pt) ** gamma * pt.log()).mean()
    assert torch.allclose(ours, manual, atol=1e-6)
    # the focal term shrinks the loss of well-classified samples
    assert ours < build_loss(LossConfig(name="ce"), 2)(logits2, labels)


def test_focal_gradients_stay_finite_on_confident_logits():
    logits = torch.tensor([[40.0, -40.0], [-40.0, 40.0]], requires_grad=True)
    loss = build_loss(LossConfig(name="focal", focal_gamma=0.5), 2)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_soft_targets_probability_of_fake(batch):
    logits2, logits1, _ = batch
    p = torch.linspace(0, 1, 16)
    ce = build_loss(LossConfig(name="ce"), 2)(logits2, p)
    assert torch.allclose(ce, F.cross_entropy(logits2, torch.stack([1 - p, p], 1)))
    bce = build_loss(LossConfig(name="bce"), 1, 0)(logits1, p)
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(logits1[:, 0], p))


def test_soft_targets_follow_logit_order(batch):
    logits2, logits1, _ = batch
    p = torch.rand(16, generator=torch.Generator().manual_seed(1))
    two = torch.stack([1 - p, p], 1)
    for name, fi, logits, soft in [
        ("ce", 1, logits2, two),
        ("ce", 0, logits2, two.flip(1)),
        ("focal", 0, logits2, two.flip(1)),
        ("bce", 0, logits1, p[:, None]),
    ]:
        loss = build_loss(LossConfig(name=name), logits.shape[1], fi)
        assert torch.allclose(loss(logits, soft), loss(logits, p)), (name, fi)
    # hard labels as floats give the same loss as integer labels
    hard = (p > 0.5).long()
    ce = build_loss(LossConfig(name="ce", label_smoothing=0.1), 2)
    assert torch.allclose(ce(logits2, hard), ce(logits2, hard.float()))


def test_soft_target_loss_is_mixup_of_hard_losses(batch):
    logits2, _, labels = batch
    lam = 0.3
    other = 1 - labels
    mixed = lam * labels.float() + (1 - lam) * other.float()
    w = torch.tensor([1.0, 2.0])
    for cfg in [LossConfig(name="ce", label_smoothing=0.1), LossConfig(name="focal")]:
        loss = build_loss(cfg, 2, class_weights=w)
        expected = lam * loss(logits2, labels) + (1 - lam) * loss(logits2, other)
        assert torch.allclose(loss(logits2, mixed), expected, atol=1e-6), cfg.name


def test_class_weights_move_with_module_and_are_not_saved():
    loss = build_loss(LossConfig(name="ce"), 2, class_weights=torch.tensor([1.0, 2.0]))
    assert "class_weights" not in loss.state_dict()
    assert loss.double().class_weights is not None
    with pytest.raises(ValueError, match="two non-negative"):
        build_loss(LossConfig(name="ce"), 2, class_weights=torch.tensor([1.0, 2.0, 3.0]))


def test_half_precision_logits_give_float32_loss(batch):
    logits2, _, labels = batch
    loss = build_loss(LossConfig(name="ce"), 2)(logits2.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, F.cross_entropy(logits2.to(torch.bfloat16).float(), labels))
