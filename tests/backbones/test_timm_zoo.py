"""timm backbones through the registry: a tiny CNN (resnet10t) and a tiny ViT (timm's test_vit), random weights or
weights files the tests write; every regime's trainable parameters and BatchNorm statistics; offline weights."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")  # the `timm` extra; `make test` installs it

import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import xferlab.backbones.zoo  # noqa: E402, F401
from xferlab.backbones.regimes import apply_regime, parse_regime  # noqa: E402
from xferlab.backbones.registry import create_model, get_spec, preprocessing_for  # noqa: E402
from xferlab.errors import XferlabError  # noqa: E402

CNN, VIT = "timm:resnet10t", "timm:test_vit"
SIZE = 32


def _model(name, regime, weights="none"):
    torch.manual_seed(0)
    model = create_model(name, 2, weights, image_size=SIZE)
    apply_regime(model, parse_regime(regime))
    return model


def _train_steps(model, steps=2):
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, SIZE, SIZE) * 2 + 1, torch.randint(0, 2, (4,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _changed(model, before):
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_spec_comes_from_timms_pretrained_configuration():
    for name in (CNN, VIT):
        spec = get_spec(name)
        cfg = timm.models.get_pretrained_cfg(name.split(":", 1)[1])
        assert (spec.mean, spec.std, spec.input_size) == (cfg.mean, cfg.std, cfg.input_size[-1])
        assert spec.head == cfg.classifier
    assert get_spec(CNN).stages == (("layer1",), ("layer2",), ("layer3",), ("layer4",))
    vit = get_spec(VIT)
    assert vit.stages[0] == ("blocks.0",) and vit.stages[-1] == ("blocks.5", "norm")  # the stem is no stage
    assert vit.feature_dim == 64 and vit.reshape_transform is not None and get_spec(CNN).reshape_transform is None
    assert preprocessing_for(VIT).mean == (0.5, 0.5, 0.5) and preprocessing_for(VIT).channels == 3


def test_vit_reshape_transform_drops_the_class_token_and_makes_a_map():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 class token + 2x2 patches, 3 channels
    out = get_spec(VIT).reshape_transform(tokens)
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out[1, :, 0, 1], tokens[1, 2])  # patch 1 (after the class token) sits at row 0, column 1


def test_cnn_frozen_keeps_weights_and_batchnorm_statistics():
    model = _model(CNN, "frozen")
    assert _trainable(model) == {"head.weight", "head.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    assert _changed(model, before) == {"head.weight", "head.bias"}


def test_cnn_partial_1_trains_the_last_stage_and_its_statistics_only():
    model = _model(CNN, "partial:1")
    assert _trainable(model) - {"head.weight", "head.bias"} == {n for n, _ in model.named_parameters()
                                                                if n.startswith("body.layer4.")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    changed = _changed(model, before)
    assert "body.layer4.0.bn1.running_mean" in changed
    assert all(k.startswith(("body.layer4.", "head.")) for k in changed)


def test_cnn_adabn_and_finetune():
    assert _model(CNN, "adabn").frozen == ("body",)  # timm's BatchNormAct2d is BatchNorm: adabn applies
    model = _model(CNN, "finetune")
    assert _trainable(model) == {n for n, _ in model.named_parameters()}


def test_vit_regimes_and_partial_1():
    assert _trainable(_model(VIT, "frozen")) == {"head.weight", "head.bias"}
    assert _trainable(_model(VIT, "finetune")) == {n for n, _ in _model(VIT, "finetune").named_parameters()}
    model = _model(VIT, "partial:1")
    body = {n for n in _trainable(model) if n.startswith("body.")}
    assert body == {n for n, _ in model.named_parameters() if n.startswith(("body.blocks.5.", "body.norm."))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    assert all(k.startswith(("body.blocks.5.", "body.norm.", "head.")) for k in _changed(model, before))
    assert "body.blocks.5.attn.qkv.weight" in _changed(model, before)


def test_adabn_is_refused_for_a_vit_naming_what_to_use():
    with pytest.raises(XferlabError, match=r"'timm:test_vit' has no BatchNorm.*use frozen"):
        _model(VIT, "adabn")


def test_weights_file_at_another_image_size_is_adapted_by_timm(tmp_path):
    """A ViT saved at its native 160 px loads at 32 px: timm resamples the position embeddings."""
    torch.manual_seed(1)
    source = timm.create_model("test_vit")  # 160 px, 1000-class head: as the published weights
    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    model = create_model(VIT, 2, str(tmp_path / "vit.safetensors"), image_size=SIZE)
    assert model.body.pos_embed.shape == (1, 1 + 2 * 2, 64)
    assert torch.equal(model.body.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert torch.equal(model.body.cls_token, source.cls_token)


def test_weights_from_a_run_and_mismatched_weights(tmp_path):
    trained = _model(CNN, "finetune")
    torch.save(trained.state_dict(), tmp_path / "model.pt")  # an xferlab model.pt: body.* and head.*
    again = create_model(CNN, 2, str(tmp_path / "model.pt"), image_size=SIZE)
    assert torch.equal(again.body.layer2[0].conv1.weight, trained.body.layer2[0].conv1.weight)
    torch.save({"layer1.0.conv1.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(XferlabError, match=r"do not fit backbone 'timm:resnet10t'"):
        create_model(CNN, 2, str(tmp_path / "other.pt"), image_size=SIZE)


def _fake_hf_cache(root, repo, sd):
    """The Hugging Face hub cache layout: models--ORG--NAME/{refs/main, snapshots/REV/model.safetensors}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    save_file(sd, folder / "snapshots" / "abc123" / "model.safetensors")


def test_pretrained_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from xferlab.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    weights = get_spec(CNN).weights
    assert not weights.available()
    missing = r"not cached and XFERLAB_OFFLINE.*model\.safetensors.*models--timm--resnet10t"
    with pytest.raises(XferlabError, match=missing):
        create_model(CNN, 2, "pretrained", image_size=SIZE)
    torch.manual_seed(2)
    source = timm.create_model("resnet10t")
    _fake_hf_cache(tmp_path / "hub", weights.hf_hub_id, source.state_dict())
    assert weights.available()
    model = create_model(CNN, 2, "imagenet", image_size=SIZE)
    assert torch.equal(model.body.layer3[0].conv2.weight, source.layer3[0].conv2.weight)
    assert main(["backbones", "--filter", "timm:resnet10t*"]) == 0
    assert "timm:resnet10t.c3_in1k  yes" in capsys.readouterr().out


def test_hf_hub_offline_is_honoured_without_a_download_attempt(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("XFERLAB_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(XferlabError, match="HF_HUB_OFFLINE forbids downloading"):
        get_spec(VIT).weights.load()


def test_unknown_timm_names_suggest_the_closest():
    with pytest.raises(XferlabError, match=r"unknown timm model 'resnet10x' \(did you mean 'resnet10t'"):
        get_spec("timm:resnet10x")
    with pytest.raises(XferlabError, match=r"no weights tagged 'c4_in1k' \(did you mean 'c3_in1k'"):
        get_spec("timm:resnet10t.c4_in1k")
    with pytest.raises(XferlabError, match=r"did you mean 'timm:'"):
        get_spec("tim:resnet10t")


def test_a_vit_trains_end_to_end_through_the_cli(tiny_npy, tmp_path):
    """partial:1 on a ViT through `xferlab train`: the engine builds its preprocessing from the registry entry."""
    from xferlab.cli import main

    out = tmp_path / "vit"
    assert main(["train", "--data", str(tiny_npy), "--backbone", VIT, "--weights", "none", "--regime", "partial:1",
                 "--epochs", "1", "--batch-size", "8", "--out", str(out)]) == 0
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["backbone"] == VIT and saved["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert (out / "metrics.json").is_file()


def test_a_missing_extra_is_named(monkeypatch, capsys):
    import sys

    from xferlab.backbones.registry import Family
    from xferlab.cli import main

    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(XferlabError, match=r"pip install 'xferlab\[timm\]'"):
        get_spec("timm:resnet14t")
    monkeypatch.setattr(Family, "installed", lambda self: self.prefix != "xrv")
    assert main(["backbones", "--filter", "xrv:*"]) == 0
    assert "xrv: not installed (pip install 'xferlab[xrv]')" in capsys.readouterr().out
