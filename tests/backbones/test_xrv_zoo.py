"""torchxrayvision's chest-X-ray DenseNet-121 as a backbone: xferlab's path (registry preprocessing + body + head)
gives torchxrayvision's own model output, from a weights file the test writes; its cache folder and offline errors."""

import numpy as np
import pytest
import torch

xrv = pytest.importorskip("torchxrayvision")  # the `xrv` extra; `make test` installs it

import xferlab.backbones.zoo  # noqa: E402, F401
from xferlab.backbones.regimes import apply_regime, parse_regime  # noqa: E402
from xferlab.backbones.registry import create_model, get_spec, preprocessing_for  # noqa: E402
from xferlab.data.batches import Preprocess  # noqa: E402
from xferlab.errors import XferlabError  # noqa: E402

NAME = "xrv:densenet121-res224-all"


@pytest.fixture(scope="module")
def reference():
    """torchxrayvision's model with random weights and non-trivial BatchNorm statistics, as its pretrained
    models are used: eval mode, resizing to 224 inside forward (input_resolution, set by `weights=`)."""
    torch.manual_seed(0)
    model = xrv.models.DenseNet(num_classes=18)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.input_resolution = 224
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(1, 64, 64), dtype=np.uint8)


def _xrv_input(images):
    """torchxrayvision's documented preprocessing: normalize(img, 255) -> [-1024, 1024], a channel axis."""
    return torch.from_numpy(np.stack([xrv.utils.normalize(img, 255, reshape=True) for img in images]))


def _xferlab_output(model, images):
    model.eval()
    with torch.no_grad():
        return model(Preprocess.for_input(preprocessing_for(NAME))(torch.from_numpy(images)))


def test_the_registry_carries_xrv_preprocessing():
    spec = preprocessing_for(NAME)
    assert (spec.channels, spec.value_range, spec.mean, spec.std, spec.size) == (1, (-1024.0, 1024.0), (0.0,), (1.0,),
                                                                                224)


def test_xferlab_path_equals_torchxrayvisions_own_model(reference, images, tmp_path):
    torch.save(reference.state_dict(), tmp_path / "xrv.pt")
    model = create_model(NAME, 18, str(tmp_path / "xrv.pt"), image_size=64)
    model.head.load_state_dict(reference.classifier.state_dict())  # the same classifier on xferlab's features
    with torch.no_grad():
        expected = reference(_xrv_input(images))
    got = _xferlab_output(model, images)
    assert got.shape == (1, 18) and expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_pickled_model_in_the_cache_folder_loads_weights_only(reference, tmp_path, monkeypatch):
    """torchxrayvision's cache holds whole pickled models; they load allowing layer classes only."""
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path / "models_data"))
    weights = get_spec(NAME).weights
    with pytest.raises(XferlabError, match=r"not cached and XFERLAB_OFFLINE.*place nih-pc-chex.*\.pt \(from https://"):
        create_model(NAME, 2, "pretrained", image_size=64)
    weights.cache_file.parent.mkdir(parents=True)
    torch.save(reference, weights.cache_file)
    assert weights.available()
    body = create_model(NAME, 2, "pretrained", image_size=64).body.state_dict()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    assert body.keys() == expected.keys() and all(torch.equal(body[k], expected[k]) for k in body)


class NotALayer:
    pass


def test_a_pickle_naming_other_classes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path))
    weights = get_spec(NAME).weights
    torch.save({"model": NotALayer()}, weights.cache_file)
    with pytest.raises(XferlabError, match=r"names .*NotALayer, which is not a layer class"):
        weights.load()


def test_xrv_regimes():
    torch.manual_seed(0)
    model = create_model(NAME, 2, "none", image_size=64)
    apply_regime(model, parse_regime("partial:1"))
    body = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("body.")}
    assert body and all(n.startswith(("body.features.denseblock4.", "body.features.norm5.")) for n in body)
    apply_regime(model, parse_regime("adabn"))  # BatchNorm throughout: allowed
    assert model.frozen == ("body",)
    assert model.body.features.conv0.in_channels == 1


def test_unknown_xrv_weights_suggest_the_closest():
    with pytest.raises(XferlabError, match=r"did you mean 'densenet121-res224-all'"):
        get_spec("xrv:densenet121-res224-al")
