import numpy as np
import pytest
import torch
from PIL import Image

from xferlab.backbones.registry import create_model, get_spec, list_backbones
from xferlab.backbones.weights import TorchvisionWeights
from xferlab.data.batches import Preprocess
from xferlab.errors import XferlabError


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_builds_with_a_new_head(name):
    spec = get_spec(name)
    model = create_model(name, num_classes=3, weights="none", image_size=64).eval()
    assert isinstance(model.head, torch.nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (spec.feature_dim, 3)
    assert isinstance(getattr(model.body, spec.head), torch.nn.Identity)
    for stage in spec.stages:
        for prefix in stage:
            model.body.get_submodule(prefix)  # raises if a stage names a module that does not exist
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, spec.feature_dim)
        assert model(x).shape == (2, 3)


def test_unknown_backbone_suggests_the_closest_name():
    with pytest.raises(XferlabError, match="did you mean 'resnet18'"):
        get_spec("resnet81")


def test_the_registry_lists_the_reference_and_offline_backbones():
    assert {"resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0",
            "efficientnet_lite0", "efficientnet_lite2"} <= set(list_backbones())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_shipped_imagenet_weights_are_available_offline(name):
    assert get_spec(name).weights.available()


def _fake_cache_file(name: str) -> tuple[dict, "TorchvisionWeights"]:
    """A random state dict placed where torchvision's weights API caches the real file."""
    import torchvision

    spec = get_spec(name)
    sd = getattr(torchvision.models, name)(weights=None).state_dict()
    spec.weights.cache_file.parent.mkdir(parents=True, exist_ok=True)
    return sd, spec.weights


def test_imagenet_weights_load_from_the_torch_home_cache():
    sd, weights = _fake_cache_file("resnet18")
    torch.save(sd, weights.cache_file)
    model = create_model("resnet18", 2, "imagenet", image_size=32)
    assert torch.equal(model.body.layer3[0].conv1.weight, sd["layer3.0.conv1.weight"])
    assert torch.equal(model.body.bn1.running_var, sd["bn1.running_var"])


def test_densenet_cache_file_with_legacy_key_names_is_renamed():
    sd, weights = _fake_cache_file("densenet121")
    # torchvision's file predates BN's num_batches_tracked and names layers 'norm.1', 'conv.2'
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in sd.items()
              if not k.endswith("num_batches_tracked")}
    assert legacy.keys() != sd.keys()
    torch.save(legacy, weights.cache_file)
    model = create_model("densenet121", 2, "imagenet", image_size=32)
    key = "features.denseblock2.denselayer3.norm1.weight"
    assert torch.equal(model.body.state_dict()[key], sd[key])


def test_missing_cache_file_offline_names_the_file_and_the_alternatives():
    with pytest.raises(XferlabError) as err:
        create_model("resnet34", 2, "imagenet")
    msg = str(err.value)
    assert "resnet34-b627a593.pth" in msg and "--weights PATH" in msg and "--weights none" in msg


def test_weights_from_a_state_dict_file(tmp_path):
    src = create_model("resnet18", 2, "none", image_size=32)
    path = tmp_path / "r18.pt"
    body_sd = {**src.body.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(body_sd, path)
    model = create_model("resnet18", 5, str(path), image_size=32)
    assert torch.equal(model.body.layer1[0].conv1.weight, src.body.layer1[0].conv1.weight)
    assert model.head.out_features == 5


def test_safetensors_weights_are_accepted(tmp_path):
    from safetensors.torch import save_file

    src = create_model("resnet18", 2, "none", image_size=32)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.body.state_dict().items()}, str(path))
    model = create_model("resnet18", 2, str(path), image_size=32)
    assert torch.equal(model.body.layer4[1].bn2.weight, src.body.layer4[1].bn2.weight)


def test_weights_that_do_not_fit_list_the_mismatched_keys(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(create_model("resnet34", 2, "none").body.state_dict(), path)
    with pytest.raises(XferlabError, match=r"do not fit backbone 'resnet18'.*unexpected: layer1\.2"):
        create_model("resnet18", 2, str(path))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"layer1.0.conv1.weight": Evil()}, path)
    with pytest.raises(XferlabError, match="cannot be loaded safely"):
        create_model("resnet18", 2, str(path))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_shipped_weights_recognise_a_real_photo(name):
    """scikit-learn's sample photo of a Chinese temple must land in an architecture class: this fails if the
    weights, the normalisation or the channel order is wrong."""
    from sklearn.datasets import load_sample_image
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    size = 224
    spec = get_spec(name)
    body = spec.build(size)
    body.load_state_dict(spec.weights.load())
    body.eval()
    photo = np.array(Image.fromarray(load_sample_image("china.jpg")).resize((size, size), Image.BILINEAR))
    x = Preprocess(spec.mean, spec.std)(torch.from_numpy(photo).permute(2, 0, 1)[None])
    with torch.no_grad():
        top5 = body(x).softmax(1)[0].topk(5).indices.tolist()
    labels = {categories[i] for i in top5}
    assert labels & {"palace", "dome", "bell cote", "church", "castle", "monastery", "stupa", "pagoda"}, labels
