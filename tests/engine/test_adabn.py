"""AdaBN: BatchNorm statistics re-estimated once on the training images, then fixed for the whole run."""

import numpy as np
import pytest
import torch

from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import create_model
from xferlab.config import DataConfig, TrainConfig
from xferlab.data.batches import Preprocess
from xferlab.engine.loop import adapt_batchnorm, extract_features
from xferlab.engine.run import train
from xferlab.engine.runtime import eager


def _bn_stats(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()
            if k.startswith("body.") and k.endswith(("running_mean", "running_var"))}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _model(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet18", 2, "none", image_size=32)
    apply_regime(model, parse_regime("adabn"))
    return model


def _images(n=24, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8))


def test_adabn_estimates_the_population_statistics_of_the_training_images():
    """The first BN sees conv1's output: its running mean must be that output's mean over every training image."""
    model, images = _model(), _images()
    model.eval()
    pre = Preprocess(model.spec.mean, model.spec.std)
    n_bn = adapt_batchnorm(model.body, images, pre, batch_size=8, generator=torch.Generator().manual_seed(0))
    assert n_bn == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.body.modules())
    with torch.no_grad():
        conv1 = model.body.conv1(pre(images))
    assert torch.allclose(model.body.bn1.running_mean, conv1.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.body.bn1.running_var, conv1.var((0, 2, 3)), rtol=0.1)  # mean of batch variances
    assert model.body.bn1.momentum == 0.1 and not model.body.training  # restored after the pass


def test_adabn_changes_the_statistics_once_and_training_never_again():
    model, images = _model(), _images()
    pre = Preprocess(model.spec.mean, model.spec.std)
    initial = _bn_stats(model.state_dict())
    adapt_batchnorm(model.body, images, pre, batch_size=8, generator=torch.Generator().manual_seed(0))
    adapted = _bn_stats(model.state_dict())
    assert all(not torch.equal(initial[k], adapted[k]) for k in initial)  # every statistic re-estimated
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()  # the regime keeps the body in eval mode: train-mode batches must not move the statistics
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(pre(images[:8])), torch.tensor([0, 1] * 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    extract_features(eager(model.body, pre), images, batch_size=8)
    assert _equal(adapted, _bn_stats(model.state_dict()))


@pytest.mark.parametrize("regime", ["frozen", "adabn"])
def test_a_run_saves_the_statistics_it_adapted_once_or_the_original_ones(tiny_npy, tmp_path, regime):
    cfg = TrainConfig(data=DataConfig(path=tiny_npy), backbone="resnet18", weights="none", regime=regime, epochs=2,
                      batch_size=8, device="cpu")
    saved = _bn_stats(torch.load(train(cfg, tmp_path / "run", progress=False).out / "model.pt",
                                 weights_only=True)["state_dict"])
    model = _model(cfg.seed)  # train() seeds torch with cfg.seed before building the model: the same initial weights
    initial = _bn_stats(model.state_dict())
    if regime == "frozen":
        assert _equal(saved, initial)
        return
    from xferlab.data.sources import load_dataset

    data = load_dataset(cfg.data)
    train_images = torch.from_numpy(data.split("train")[0])
    adapt_batchnorm(model.body, train_images, Preprocess(model.spec.mean, model.spec.std), cfg.batch_size,
                    torch.Generator().manual_seed(cfg.seed))
    assert _equal(saved, _bn_stats(model.state_dict())) and not _equal(saved, initial)


def test_adabn_is_a_cached_head_only_regime():
    regime = parse_regime("adabn")
    assert regime.cache_features and regime.adapt_bn and regime.trainable_stages == 0
    assert not parse_regime("frozen").adapt_bn


def test_adabn_leaves_out_a_last_batch_of_one_image():
    """ResNet-18's last stage is 1×1 at 32²: a one-image train-mode batch there has no variance and would raise."""
    model, images = _model(), _images(n=17)
    adapt_batchnorm(model.body, images, Preprocess(model.spec.mean, model.spec.std), batch_size=8)
    assert int(model.body.bn1.num_batches_tracked) == 2
