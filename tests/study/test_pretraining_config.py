"""configs/pretraining.yaml: ImageNet CNN vs ImageNet ConvNeXt / ViT vs chest-X-ray DenseNet. Its weights cannot be
on this machine; everything else is checked: it loads, expands, every backbone resolves, and offline it stops
before the first run with the file to place."""

import pytest

pytest.importorskip("timm")
pytest.importorskip("torchxrayvision")

import xferlab.backbones.zoo  # noqa: E402, F401
from xferlab.backbones.registry import get_spec  # noqa: E402
from xferlab.demo import config_path  # noqa: E402
from xferlab.errors import XferlabError  # noqa: E402
from xferlab.study.grid import expand_grid, load_study, preflight  # noqa: E402


def test_the_pretraining_study_expands_and_names_missing_weights_offline(tiny_npy, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    import torchxrayvision as xrv

    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path / "xrv"))
    study = load_study(config_path("pretraining.yaml"), data=tiny_npy)
    specs = expand_grid(study)
    assert len(specs) == 4 * 2 * 3 and {s.config.weights for s in specs} == {"pretrained"}
    assert "timm_convnext_tiny.fb_in1k-frozen-seed0" in {s.name for s in specs}
    inputs = {b: get_spec(b).input for b in study.backbones}
    assert inputs["xrv:densenet121-res224-all"].channels == 1 and inputs["densenet121"].channels == 3
    with pytest.raises(XferlabError, match=r"densenet121-a639ec97\.pth"):
        preflight(specs)
    for backbone in study.backbones[1:]:
        with pytest.raises(XferlabError, match=r"not cached and XFERLAB_OFFLINE forbids downloading; (place|put) "):
            get_spec(backbone).weights.load()
