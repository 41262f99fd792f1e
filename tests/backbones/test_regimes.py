import pytest
import torch
import torch.nn.functional as F

from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import create_model
from xferlab.errors import XferlabError


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix=""):
    after = module.state_dict()
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def _train_steps(model, steps=3):
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32) * 2 + 1, torch.randint(0, 2, (8,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _model(regime):
    torch.manual_seed(0)
    model = create_model("resnet18", 2, "none", image_size=32)
    apply_regime(model, parse_regime(regime))
    return model


def test_frozen_keeps_every_backbone_parameter_and_batchnorm_statistic():
    model = _model("frozen")
    before = _snapshot(model)
    _train_steps(model)
    assert _changed(before, model, "body.") == set()
    assert _changed(before, model, "head.") == {"head.weight", "head.bias"}


def test_requires_grad_alone_would_let_batchnorm_drift():
    """The reference's frozen runs: parameters fixed, but BN running statistics change in train mode."""
    torch.manual_seed(0)
    model = create_model("resnet18", 2, "none", image_size=32)
    model.body.requires_grad_(False)
    before = _snapshot(model)
    _train_steps(model)
    drifted = _changed(before, model, "body.")
    assert "body.bn1.running_mean" in drifted
    assert not any(k.endswith(("weight", "bias")) for k in drifted)


def test_finetune_updates_backbone_weights_and_statistics():
    model = _model("finetune")
    before = _snapshot(model)
    _train_steps(model)
    changed = _changed(before, model, "body.")
    assert {"body.conv1.weight", "body.bn1.running_mean", "body.layer1.0.conv1.weight"} <= changed


def test_partial_trains_only_the_last_stages():
    model = _model("partial:1")
    before = _snapshot(model)
    _train_steps(model)
    changed = _changed(before, model, "body.")
    assert changed and all(k.startswith("body.layer4.") for k in changed)
    assert "body.layer4.0.bn1.running_mean" in changed and "body.layer4.0.conv1.weight" in changed


def test_adabn_freezes_like_frozen_once_its_statistics_are_set():
    """adabn changes the BN statistics once, before training (tests/engine/test_adabn.py); training moves nothing."""
    model = _model("adabn")
    assert model.frozen == ("body",)
    before = _snapshot(model)
    _train_steps(model)
    assert _changed(before, model, "body.") == set()


def test_cache_features_only_for_a_fixed_backbone():
    assert parse_regime("frozen").cache_features
    assert parse_regime("adabn").cache_features
    assert not parse_regime("finetune").cache_features
    assert not parse_regime("partial:2").cache_features


@pytest.mark.parametrize("bad", ["froze", "adabm", "partial:0", "partial:x", ""])
def test_bad_regimes_are_errors(bad):
    with pytest.raises(XferlabError, match="regime"):
        parse_regime(bad)


def test_partial_beyond_the_stage_count_is_an_error():
    with pytest.raises(XferlabError, match="only 4 stages"):
        _model("partial:5")
