"""The re-split experiment (xferlab.audit.resplit): rank p-values, a harder-than-random test split is caught, group
structure survives re-splitting, a small R says it cannot reach alpha, frozen heads trained together give what
fit_split gives one split at a time, and a non-frozen regime runs, reading its weights once."""

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


def _features_dataset(rng, n_per_class=150, shift_test=False, groups=None, signal=2.0):
    """2-class features, linearly separable at the default signal; with shift_test the original test split's
    features are corrupted so a model trained on train cannot read them (an acquisition shift in feature space)."""
    labels = np.repeat([0, 1], n_per_class)
    features = rng.normal(size=(len(labels), 16)).astype(np.float32)
    features[:, :4] += signal * (2 * labels[:, None] - 1)
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
    assert result["note"] is None and result["unit"] == "image" and "by_image" not in result
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
    assert result["status"] == "ok" and result["unit"] == "patient"
    for run in result["runs"]:
        assert abs(run["sizes"]["test"] - 102) <= 15  # group-aware sizes are approximate (data.splits docstring)
    # beside them, as many re-splits by image, with the original's sizes exactly and the same seeds
    by_image = result["by_image"]
    assert [r["seed"] for r in by_image["runs"]] == [r["seed"] for r in result["runs"]]
    assert all(r["sizes"] == result["sizes"] for r in by_image["runs"])
    assert set(by_image) >= {"test_accuracy", "gap", "resplit_history_mean", "test_lower", "gap_larger"}
    from xferlab.audit.verdict import resplit_finding

    text = resplit_finding(result)[1]
    assert "Re-split (frozen, by patient)" in text and "Re-split by image instead" in text
    assert f"{by_image['gap']['resplit_mean']:+.3f}" in text


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


def _grouped(data):
    """The dataset with 3 images per patient and a group-aware original split (as re-splits will be)."""
    data.groups = np.array([f"p{i // 3}" for i in range(len(data.labels))])
    data.splits[:] = "train"
    for c in (0, 1):
        patients = np.unique(data.groups[data.labels == c])
        data.splits[np.isin(data.groups, patients[-17:])] = "test"
        data.splits[np.isin(data.groups, patients[-27:-17])] = "val"
    return data


@pytest.mark.parametrize("grouped", [False, True], ids=["one-stack", "stack-per-train-size"])
def test_frozen_heads_trained_together_match_fit_split_one_split_at_a_time(grouped):
    """Same weights within float tolerance, and the same best epochs and accuracies, history included: exact
    equality is safe because no logit margin on this small problem comes near the float differences (checked
    below). Grouped re-splits differ in train size, so their heads train in several stacks (one per size)."""
    import torch

    from xferlab.audit.resplit import _factory, fit_heads_together, fit_split
    from xferlab.data.splits import draw_splits, split_counts

    # overlapping classes (signal 0.4): val accuracy moves between epochs, so the best epoch is a real choice
    data, features = _features_dataset(np.random.default_rng(3), signal=0.4)
    data = _grouped(data) if grouped else data
    cfg = AuditConfig(resplits=4, **FAST)  # 140 train images: 4 batches of 32 and a short one of 12 per epoch
    seeds = [7, 11, 12, 13, 14]
    assignments = [data.splits] + [draw_splits(data.labels, data.groups, split_counts(data.splits), seed)
                                   for seed in seeds[1:]]
    train_sizes = {int((a == "train").sum()) for a in assignments}
    assert (len(train_sizes) > 1) == grouped
    cpu = torch.device("cpu")
    inputs, make = _factory(data, features, cfg, cpu)
    heads = {"alone": {}, "together": {}}  # seed -> the head trained for it

    def keeping(kind):
        def make_kept(seed):
            head, forward = make(seed)
            heads[kind][seed] = head
            return head, forward
        return make_kept

    alone = [fit_split(inputs, data.labels, a, keeping("alone"), cfg, s, cpu) for a, s in zip(assignments, seeds)]
    together = fit_heads_together(inputs, data.labels, assignments, keeping("together"), cfg, seeds)
    for seed in seeds:
        old, new = heads["alone"][seed], heads["together"][seed]
        torch.testing.assert_close(new.weight, old.weight, atol=1e-4, rtol=0)
        torch.testing.assert_close(new.bias, old.bias, atol=1e-4, rtol=0)
        with torch.no_grad():
            logits, diff = old(inputs), (new(inputs) - old(inputs)).abs().max()
        assert diff < 1e-4
        # why exact accuracies below are safe: no prediction sits within float noise of a tie (here the smallest
        # margin is ~100x the largest difference; were it not, the data would need another seed, not the code a fix)
        assert (logits[:, 1] - logits[:, 0]).abs().min() > 10 * diff
    assert together == alone  # best epoch, train / val / test accuracy, gap, sizes and the whole history
    assert len({r["best_epoch"] for r in alone}) > 1  # best epochs differ between splits: a real choice was made
