"""The re-split experiment (xferlab.audit.resplit): rank p-values, a harder-than-random test split is caught, group
structure survives re-splitting, a small R says it cannot reach alpha, and a non-frozen regime runs,
reading its weights once."""

from __future__ import annotations

import numpy as np
import pytest

from xferlab.audit.resplit import placement, resplit_experiment
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset

FAST = dict(epochs=8, batch_size=32, lr=5e-2, device="cpu")


def test_placement_percentile_and_rank_p_values():
    values = np.array([0.80, 0.82, 0.84, 0.86])
    low = placement(0.70, values)
    assert low["percentile"] == 0 and low["p_lower"] == pytest.approx(1 / 5) and low["p_higher"] == 1.0
    tie = placement(0.84, values)
    assert tie["percentile"] == pytest.approx(100 * 2.5 / 4)
    assert tie["p_lower"] == pytest.approx(4 / 5) and tie["p_higher"] == pytest.approx(3 / 5)
    assert low["resplit_mean"] == pytest.approx(0.83)


def _features_dataset(rng, n_per_class=150, shift_test=False, groups=None):
    """Linearly separable 2-class features; with shift_test the original test split's features are corrupted so a
    model trained on train cannot read them (an acquisition shift in feature space)."""
    labels = np.repeat([0, 1], n_per_class)
    features = rng.normal(size=(len(labels), 16)).astype(np.float32)
    features[:, :4] += 2.0 * (2 * labels[:, None] - 1)
    splits = np.full(len(labels), "train", dtype=object)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        splits[idx[-50:]] = "test"
        splits[idx[-80:-50]] = "val"
    if shift_test:
        test = splits == "test"
        features[test, :4] = rng.normal(size=(test.sum(), 4))  # the class signal is gone on the original test images
    data = ImageDataset(images=np.zeros((len(labels), 4, 4), np.uint8), labels=labels, class_names=["a", "b"],
                        splits=splits, groups=groups)
    return data, features


def test_a_harder_than_random_test_split_is_caught_and_re_splitting_closes_the_gap():
    data, features = _features_dataset(np.random.default_rng(0), shift_test=True)
    result = resplit_experiment(data, features, AuditConfig(resplits=19, **FAST), progress=False)
    assert result["status"] == "ok" and result["note"] is None
    assert len(result["runs"]) == 19 and result["sizes"] == {"train": 140, "val": 60, "test": 100}
    assert all(r["sizes"] == result["sizes"] for r in result["runs"])
    assert result["test_accuracy"]["p_lower"] == pytest.approx(1 / 20) and result["test_lower"]
    assert result["gap"]["p_higher"] == pytest.approx(1 / 20) and result["gap_larger"]
    assert result["original"]["gap"] > 0.2 > abs(result["gap"]["resplit_mean"])
    assert len(result["original"]["history"]) == FAST["epochs"] == len(result["resplit_history_mean"])


def test_a_random_split_is_not_flagged_and_small_r_says_it_cannot_reach_alpha():
    data, features = _features_dataset(np.random.default_rng(1))
    result = resplit_experiment(data, features, AuditConfig(resplits=19, **FAST), progress=False)
    assert result["note"] is None
    assert not result["test_lower"] and not result["gap_larger"]  # a 5 % false alarm is possible; seed 1 is not one
    result = resplit_experiment(data, features, AuditConfig(resplits=5, **FAST), progress=False)
    assert "smallest p-value is 0.167" in result["note"] and "at least 19 re-splits" in result["note"]
    assert resplit_experiment(data, features, AuditConfig(resplits=0), progress=False)["status"] == "skipped"


def test_re_splits_keep_patient_groups_whole():
    rng = np.random.default_rng(2)
    groups = np.array([f"p{i // 3}" for i in range(300)])  # 3 images per patient, patients within one class
    data, features = _features_dataset(rng, groups=groups)
    data.splits[:] = "train"
    for c in (0, 1):  # the original split is group-aware too
        patients = np.unique(groups[data.labels == c])
        data.splits[np.isin(groups, patients[-17:])] = "test"
        data.splits[np.isin(groups, patients[-27:-17])] = "val"
    result = resplit_experiment(data, features, AuditConfig(resplits=3, **FAST), progress=False)
    assert result["status"] == "ok"
    for run in result["runs"]:
        assert abs(run["sizes"]["test"] - 102) <= 15  # group-aware sizes are approximate (data.splits docstring)


def test_a_non_frozen_regime_trains_the_backbone_on_every_re_split(tiny_npy):
    from xferlab.config import DataConfig
    from xferlab.data.sources import load_dataset

    data = load_dataset(DataConfig(path=tiny_npy))
    cfg = AuditConfig(backbone="resnet18", weights="none", regime="partial:1", resplits=1, epochs=1, batch_size=16,
                      device="cpu")
    result = resplit_experiment(data, np.zeros((len(data.labels), 4), np.float32), cfg, progress=False)
    assert result["status"] == "ok" and result["regime"] == "partial:1" and len(result["runs"]) == 1
    assert 0.0 <= result["original"]["test"] <= 1.0


def test_a_weights_file_is_read_once_and_every_seed_starts_as_create_model_would(tiny_npy, tmp_path, monkeypatch):
    import torch

    import xferlab.backbones.registry as registry
    from xferlab.audit.resplit import _factory
    from xferlab.config import DataConfig
    from xferlab.data.sources import load_dataset

    data = load_dataset(DataConfig(path=tiny_npy))
    size = data.image_size[0]
    torch.save(registry.create_model("resnet18", 2, "none", image_size=size).state_dict(), tmp_path / "w.pt")
    reads = []
    read = registry.load_state_dict_file
    monkeypatch.setattr(registry, "load_state_dict_file", lambda path: reads.append(path) or read(path))
    cfg = AuditConfig(backbone="resnet18", weights=str(tmp_path / "w.pt"), regime="partial:1", device="cpu")
    _, make = _factory(data, np.zeros((len(data.labels), 4), np.float32), cfg, torch.device("cpu"))
    models = {seed: make(seed)[0].state_dict() for seed in (3, 4)}
    assert len(reads) == 1
    for seed, got in models.items():
        torch.manual_seed(seed)  # what building the model for this seed from the file gives, head included
        expected = registry.create_model("resnet18", 2, str(tmp_path / "w.pt"), image_size=size).state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(v, expected[k]) for k, v in got.items())
    assert not torch.equal(models[3]["head.weight"], models[4]["head.weight"])
