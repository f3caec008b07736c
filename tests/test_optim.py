import math

import pytest
import torch
from torch import nn

from deepfake_detect.config.schema import OptimizerConfig, SchedulerConfig
from deepfake_detect.errors import ConfigError
from deepfake_detect.models.detector import Detector, ModelConfig
from deepfake_detect.training.optim import build_optimizer, build_scheduler, param_groups

torch.set_num_threads(1)


class Tokens(nn.Module):
    """Stands in for a timm ViT: lists a parameter in ``no_weight_decay()``."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(8, 8)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


class Tiny(Detector):
    def __init__(self) -> None:
        super().__init__(ModelConfig(name="tiny"), 16, (0.5,) * 3, (0.5,) * 3)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.tokens = Tokens()
        self.head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens.proj(self.backbone(x)) + self.tokens.pos_embed.mean())


def names_of(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def test_groups_split_head_backbone_and_decay():
    model = Tiny()
    cfg = OptimizerConfig(lr=1e-3, backbone_lr=1e-4, head_lr=1e-2, weight_decay=0.05)
    groups = by_name(param_groups(model, cfg))
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert names_of(model, groups["backbone"]) == {"backbone.0.weight", "tokens.proj.weight"}
    assert names_of(model, groups["backbone_no_decay"]) == {
        "backbone.0.bias", "backbone.1.weight", "backbone.1.bias",
        "tokens.pos_embed", "tokens.proj.bias",
    }
    assert names_of(model, groups["head"]) == {"head.1.weight"}
    head_no_decay = {"head.0.weight", "head.0.bias", "head.1.bias"}
    assert names_of(model, groups["head_no_decay"]) == head_no_decay
    assert groups["backbone"]["lr"] == groups["backbone_no_decay"]["lr"] == 1e-4
    assert groups["head"]["lr"] == groups["head_no_decay"]["lr"] == 1e-2
    assert groups["backbone"]["weight_decay"] == groups["head"]["weight_decay"] == 0.05
    assert groups["backbone_no_decay"]["weight_decay"] == 0
    assert groups["head_no_decay"]["weight_decay"] == 0
    covered = sum(len(g["params"]) for g in groups.values())
    assert covered == len(list(model.parameters()))


def test_groups_default_to_lr_and_merge_without_weight_decay():
    model = Tiny()
    groups = param_groups(model, OptimizerConfig(lr=3e-4, weight_decay=0.0))
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert all(g["lr"] == 3e-4 and g["weight_decay"] == 0 for g in groups)
    assert names_of(model, groups[1]) == model.head_parameter_names()


def test_frozen_params_excluded_and_empty_groups_dropped():
    model = Tiny()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    groups = param_groups(model, OptimizerConfig(weight_decay=0.01))
    assert [g["name"] for g in groups] == ["head", "head_no_decay"]
    # backbone_lr 0 is fine when the backbone is frozen anyway
    assert param_groups(model, OptimizerConfig(backbone_lr=0.0))[0]["name"] == "head"


def test_backbone_lr_zero_with_trainable_backbone_suggests_freeze():
    with pytest.raises(ConfigError, match="model.freeze.backbone: true"):
        param_groups(Tiny(), OptimizerConfig(backbone_lr=0.0))


def test_everything_frozen_is_an_error():
    model = Tiny().requires_grad_(False)
    with pytest.raises(ConfigError, match="model.freeze"):
        param_groups(model, OptimizerConfig())


@pytest.mark.parametrize(
    "cfg, kind",
    [
        (OptimizerConfig(name="adam", betas=(0.8, 0.99)), torch.optim.Adam),
        (OptimizerConfig(name="adamw", weight_decay=0.1), torch.optim.AdamW),
        (OptimizerConfig(name="sgd", momentum=0.8, nesterov=True), torch.optim.SGD),
    ],
)
def test_build_optimizer(cfg, kind):
    model = Tiny()
    opt = build_optimizer(model, cfg)
    assert type(opt) is kind
    for g in opt.param_groups:
        if cfg.name == "sgd":
            assert g["momentum"] == 0.8 and g["nesterov"] is True
        else:
            assert tuple(g["betas"]) == cfg.betas
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    loss.backward()
    before = model.head[1].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.head[1].weight)


def test_nesterov_without_momentum_is_config_error():
    with pytest.raises(ConfigError, match="momentum"):
        build_optimizer(Tiny(), OptimizerConfig(name="sgd", momentum=0.0, nesterov=True))


def make_opt(lr=1.0, head_lr=None):
    model = Tiny()
    cfg = OptimizerConfig(name="sgd", lr=lr, head_lr=head_lr, momentum=0.0)
    return build_optimizer(model, cfg)


def step_lrs(opt, sched, n):
    """Learning rates used by each of ``n`` optimizer steps (group 0), as Lightning steps them."""
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_warmup_then_decay_to_min_lr():
    opt = make_opt(lr=1.0, head_lr=2.0)
    cfg = SchedulerConfig(name="cosine", warmup_epochs=1, min_lr=0.1)
    conf = build_scheduler(opt, cfg, epochs=3, steps_per_epoch=4, monitor="val_auc", mode="max")
    assert conf["interval"] == "step"
    sched = conf["scheduler"]
    lrs = step_lrs(opt, sched, 12)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear rise over 4 steps
    decay = lrs[4:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # cosine decays monotonically
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8))
    assert lrs[8] == pytest.approx(mid)
    # after the last step both groups sit at min_lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1])
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_cosine_without_warmup_starts_at_lr():
    opt = make_opt(lr=0.5)
    conf = build_scheduler(opt, SchedulerConfig(name="cosine"), 2, 5, "val_loss", "min")
    lrs = step_lrs(opt, conf["scheduler"], 10)
    assert lrs[0] == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_onecycle_peaks_at_group_lrs():
    opt = make_opt(lr=1.0, head_lr=4.0)
    cfg = SchedulerConfig(name="onecycle", pct_start=0.25)
    conf = build_scheduler(opt, cfg, epochs=2, steps_per_epoch=10, monitor="val_auc", mode="max")
    assert conf["interval"] == "step"
    lrs, head = [], []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        head.append(opt.param_groups[-1]["lr"])
        opt.step()
        conf["scheduler"].step()
    peak = max(range(20), key=lrs.__getitem__)
    assert peak == round(0.25 * 20) - 1
    assert lrs[peak] == pytest.approx(1.0) and max(head) == pytest.approx(4.0)
    assert lrs[0] < 0.1 and lrs[-1] < 1e-3
    assert opt.param_groups[0]["momentum"] == 0.0  # momentum is not cycled


def test_step_decays_per_epoch():
    opt = make_opt(lr=1.0)
    cfg = SchedulerConfig(name="step", step_size=2, gamma=0.5)
    conf = build_scheduler(opt, cfg, 6, 3, "val_auc", "max")
    assert conf["interval"] == "epoch"
    assert step_lrs(opt, conf["scheduler"], 6) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])


def test_plateau_monitors_metric():
    opt = make_opt(lr=1.0)
    cfg = SchedulerConfig(name="plateau", factor=0.5, patience=1)
    conf = build_scheduler(opt, cfg, 10, 3, monitor="val_auc", mode="max")
    assert conf["interval"] == "epoch" and conf["monitor"] == "val_auc"
    sched = conf["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and sched.mode == "max"
    for auc in [0.5, 0.6, 0.6, 0.6]:
        sched.step(auc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_none_returns_none_and_warmup_elsewhere_is_error():
    opt = make_opt()
    assert build_scheduler(opt, SchedulerConfig(name="none"), 3, 4, "val_auc", "max") is None
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_scheduler(opt, SchedulerConfig(name="step", warmup_epochs=1), 3, 4, "val_auc", "max")
    with pytest.raises(ConfigError, match="train.epochs"):
        cfg = SchedulerConfig(name="cosine", warmup_epochs=3)
        build_scheduler(opt, cfg, 3, 4, "val_auc", "max")


@pytest.mark.parametrize("name", ["cosine", "plateau", "onecycle", "step"])
def test_scheduler_state_round_trips_with_weights_only(tmp_path, name):
    cfg = SchedulerConfig(name=name, warmup_epochs=0.5 if name == "cosine" else 0)
    opt = make_opt(lr=1.0, head_lr=2.0)
    sched = build_scheduler(opt, cfg, 3, 4, "val_loss", "min")["scheduler"]
    for _ in range(5):
        opt.step()
        sched.step(1.0) if name == "plateau" else sched.step()
    path = tmp_path / "sched.pt"
    torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, path)
    state = torch.load(path, weights_only=True)

    opt2 = make_opt(lr=1.0, head_lr=2.0)
    sched2 = build_scheduler(opt2, cfg, 3, 4, "val_loss", "min")["scheduler"]
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    for _ in range(3):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step(1.0) if name == "plateau" else s.step()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
