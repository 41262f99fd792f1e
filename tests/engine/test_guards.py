"""The divergence rule (xferlab.engine.guards) on chosen histories, its hint, and the issue's cases end to end: a
learning rate typed twelve orders of magnitude too high stops `xferlab train` with one error line and saves nothing,
whether the losses go NaN (phantoms) or stay finite (16-bit PNGs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinydata import write_tiny_npy
from xferlab.cli import main
from xferlab.engine.guards import (
    ABOVE_CHANCE,
    GROWING,
    NOT_FINITE,
    TRAIN_CHANCE_MULTIPLE,
    VAL_CHANCE_MULTIPLE,
    Diverged,
    Divergence,
    check_finite_losses,
    divergence,
    lr_hint,
)

LN2 = math.log(2)


def _history(train, val, test=None):
    test = test or [0.7] * len(train)
    return [{"epoch": e, "train_loss": t, "val_loss": v, "test_loss": s}
            for e, (t, v, s) in enumerate(zip(train, val, test), 1)]


def _first(history, k=2, lr=1e-3):
    """The rule as the fit loop applies it: epoch by epoch, the first epoch that diverged."""
    return next((d for n in range(1, len(history) + 1) if (d := divergence(history[:n], k, lr))), None)


@pytest.mark.parametrize("train, val", [
    ([0.69, 0.4, 0.1, 0.01], [0.7, 0.5, 0.3, 0.2]),  # learning
    ([4.4, 1.0, 1.3, 0.7], [16190.0, 5477.0, 253.0, 10.8]),  # measured: random-weight ResNet-18 at lr 1e-2, eval BN
    ([1e-3, 1e-5, 0.5], [1e-4, 1e-6, 0.6]),  # grew 50,000-fold, still below chance: a spike, not a divergence
])
def test_healthy_histories_pass(train, val):
    assert _first(_history(train, val)) is None


def test_a_finite_training_loss_far_above_chance_stops_at_that_epoch():
    found = _first(_history([1.8e14, 1.3e15], [0.7, 0.7]), lr=1e12)
    assert (found.epoch, found.split, found.rule, found.lr) == (1, "train", ABOVE_CHANCE, 1e12)
    assert "1.8e+14" in found.reason() and "chance" in found.reason()
    just_below = TRAIN_CHANCE_MULTIPLE * LN2 * 0.99
    assert _first(_history([just_below], [0.7])) is None
    assert _first(_history([TRAIN_CHANCE_MULTIPLE * LN2 * 1.01], [0.7])).rule == ABOVE_CHANCE


def test_val_loss_decides_only_far_beyond_what_eval_batchnorm_does():
    assert _first(_history([0.7, 0.6], [1e5, 10.0])) is None  # within eval-mode BatchNorm's measured spread
    found = _first(_history([0.7, 0.6], [0.7, VAL_CHANCE_MULTIPLE * LN2 * 2]))
    assert (found.epoch, found.split, found.rule) == (2, "val", ABOVE_CHANCE)


def test_a_loss_growing_by_orders_of_magnitude_to_far_above_chance_stops():
    found = _first(_history([0.5, 0.01, 0.2, 12.0], [0.6, 0.5, 0.5, 0.5]))
    assert (found.epoch, found.split, found.rule) == (4, "train", GROWING)
    assert "in epoch 2" in found.detail  # the lowest earlier loss it grew from
    assert _first(_history([0.5, 0.01, 5.0], [0.6, 0.5, 0.5])) is None  # 500-fold: below the growth factor


def test_the_test_loss_never_decides_and_chance_is_ln_k():
    assert _first(_history([0.7, 0.6], [0.7, 0.6], test=[1e30, 1e30])) is None
    loss = 0.8 * TRAIN_CHANCE_MULTIPLE * math.log(10)  # above 100 × ln 2, below 100 × ln 10
    assert _first(_history([loss], [2.3]), k=10) is None and _first(_history([loss], [0.7]), k=2) is not None


def test_non_finite_losses_raise_diverged_with_every_bad_loss():
    row = {"epoch": 3, "train_loss": 0.3, "val_loss": float("nan"), "test_loss": float("inf")}
    with pytest.raises(Diverged, match=r"^epoch 3: val loss nan, test loss inf: training diverged; lr = 0\.5 "
                                       r"is likely too high: the default is 0\.001; nothing was saved$") as caught:
        check_finite_losses(row, 0.5)
    assert caught.value.divergence.rule == NOT_FINITE and caught.value.divergence.as_dict()["loss"] is None
    named = caught.value.with_origin("run.yaml line 7")
    assert "lr = 0.5 (run.yaml line 7) is likely too high" in str(named) and named.history == [row]


@pytest.mark.parametrize("lr, origin, hint", [
    (1e12, "--lr", "lr = 1e+12 (--lr) is likely too high: the default is 0.001"),
    (1e-3, "the default", "lr = 0.001 (the default) is likely too high: try 0.0001"),
    (5e-4, "--lr", "lr = 0.0005 (--lr) is likely too high: try 5e-05 (the default is 0.001)"),
])
def test_the_hint_names_the_default_and_where_the_rate_came_from(lr, origin, hint):
    assert lr_hint(lr, origin) == hint


def test_a_divergence_records_itself_for_json():
    d = Divergence(2, "train", 1.5e3, ABOVE_CHANCE, "2.16e+03 × chance", 10.0)
    assert d.as_dict() == {"epoch": 2, "split": "train", "loss": 1500.0, "rule": ABOVE_CHANCE,
                           "reason": "epoch 2: train loss 1.5e+03 (2.16e+03 × chance)", "lr": 10.0}


def _sixteen_bit_pngs(root):
    """The tiny dataset as 16-bit grayscale PNGs in the folder layout, values spread over 0..65535."""
    from PIL import Image

    arrays = write_tiny_npy(root.parent / f"{root.name}-npy", n=10, n_test=4, size=32)
    for npy in sorted(arrays.glob("*.npy")):
        split, name = ("test", npy.stem[5:]) if npy.stem.startswith("test_") else ("train", npy.stem)
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(np.load(npy)):
            Image.fromarray(pixels.astype(np.uint16) * 257).save(root / split / name / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("layout, regime, loss", [
    ("16-bit PNGs", "frozen", "× chance"),  # finite: the head's logits grow with the step size, no NaN
    ("npy", "finetune", "nan"),  # the backbone's activations overflow: NaN
])
def test_lr_1e12_stops_train_with_one_error_line_and_saves_nothing(layout, regime, loss, tmp_path, capsys):
    pngs = layout != "npy"
    data = _sixteen_bit_pngs(tmp_path / "pngs") if pngs else write_tiny_npy(tmp_path / "npy", n=10, n_test=4)
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nlr: 1.0e+12\n")
    status = main(["train", "-c", str(config), "--data", str(data), *(["--format", "folder"] if pngs else []),
                   "--regime", regime, "--weights", "none", "--batch-size", "8", "--device", "cpu",
                   "--num-threads", "1", "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and sum(line.startswith("error") for line in lines) == 1
    assert lines[-1].startswith("error: epoch 1: train loss ") and loss in lines[-1]
    assert lines[-1].endswith(f"training diverged; lr = 1e+12 ({config} line 2) is likely too high: the default is "
                              "0.001; nothing was saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run.yaml", data.name, *(
        [f"{data.name}-npy"] if pngs else [])])  # no run folder, no staging leftovers
