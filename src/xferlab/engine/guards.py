"""Checks the fit loop makes once per epoch, so that a run that went wrong stops and says so before anything is written
(the run folder is still staged): a loss that is NaN or infinite (FiniteLosses), and a finite loss that has diverged
(DivergingLosses). Both raise Diverged, an XferlabError that carries the epoch, the loss, the learning rate and the
history so far: `xferlab train` prints it as one error line, a study records the run as diverged and goes on.

The divergence rule, on the epoch's mean training loss and its val loss (the test loss never decides: test chooses
nothing). Chance is ln K for K classes (the cross-entropy of predicting 1/K for every class). A run diverged when

  - its training loss exceeds TRAIN_CHANCE_MULTIPLE × chance, or
  - its val loss exceeds VAL_CHANCE_MULTIPLE × chance, or
  - a training or val loss exceeds GROWTH_FACTOR × the lowest loss of that split in earlier epochs while above
    GROWTH_FLOOR_MULTIPLE × chance (grown by orders of magnitude to far above chance).

Chance, not the first epoch, is the yardstick: a learning rate typed with the wrong exponent diverges within the first
epoch (issue 29: a training loss of 1.8e14 in epoch 1, then 1.3e15, at lr 1e12). The thresholds and their false
alarms are measured in benchmarks/divergence.py (docs/runs-that-go-wrong.md): none over 120 seeded runs of the four
regimes at learning rates from 1e-4 to 1e-2, the demo's runs and the golden runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xferlab.config import DEFAULT_LR
from xferlab.errors import XferlabError

if TYPE_CHECKING:
    from xferlab.engine.fit import EpochRecord, FitState

LOSS_KEYS = ("train_loss", "val_loss", "test_loss")
DECIDING_SPLITS = ("train", "val")  # the splits whose loss can stop a run as diverged; test never decides

# The largest losses of healthy runs (benchmarks/divergence.py: 120 runs, lr 1e-4..1e-2, 4 epochs, 32 px phantoms,
# EfficientNet-Lite0 ImageNet and ResNet-18 random weights) were a training loss of 6.4 × chance and a val loss of
# 6.4e4 × chance, and no loss grew more than 10-fold. Each threshold sits about 15 times above its measured maximum.
# A mean training loss 100 times chance (69 nats for two classes: wrong answers at a probability of about e^-69) is
# an optimiser throwing the weights about, not a model learning. Val loss is computed in eval mode, where BatchNorm
# uses running statistics that a young network has not yet settled (a random-weight ResNet-18 fine-tuned at lr 1e-2
# showed val losses of 4.4e4 in epoch 1 and 10 by epoch 4), so only a far larger val loss says the model itself broke.
TRAIN_CHANCE_MULTIPLE = 100.0
VAL_CHANCE_MULTIPLE = 1e6
# Growth: three orders of magnitude above the lowest loss so far (healthy runs: at most 10-fold), and only once the
# loss is also well above chance, so a loss that fell to 1e-5 and rose to 1e-2 (still a good model) is no alarm.
GROWTH_FACTOR = 1e3
GROWTH_FLOOR_MULTIPLE = 10.0

NOT_FINITE, ABOVE_CHANCE, GROWING = "not finite", "far above chance", "growing"


@dataclass(frozen=True)
class Divergence:
    """What stopped a run: the epoch, the split whose loss decided, that loss (NaN or inf for a non-finite one), the
    rule (NOT_FINITE, ABOVE_CHANCE or GROWING), the rule's numbers in words, and the learning rate."""

    epoch: int
    split: str
    loss: float
    rule: str
    detail: str
    lr: float

    def reason(self) -> str:
        """'epoch 1: train loss 1.8e+14 (2.6e+14 × chance, ln 2 = 0.693)': what went wrong, in one phrase."""
        detail = f" ({self.detail})" if self.detail else ""
        return f"epoch {self.epoch}: {self.split} loss {self.loss:.3g}{detail}"

    def as_dict(self) -> dict:
        """JSON-ready (a non-finite loss as None, its text in `reason`)."""
        return {"epoch": self.epoch, "split": self.split, "loss": self.loss if math.isfinite(self.loss) else None,
                "rule": self.rule, "reason": self.reason(), "lr": self.lr}


def lr_hint(lr: float, origin: str | None = None) -> str:
    """'lr = 1e+12 (--lr) is likely too high: the default is 0.001': the rate, where it was set, and what to try.

    `origin`: where the value came from ('--lr', 'run.yaml line 7', 'the default'); None: not known here."""
    where = f" ({origin})" if origin else ""
    if lr > DEFAULT_LR:
        advice = f"the default is {DEFAULT_LR:g}"
    else:
        advice = f"try {lr / 10:g}" + (f" (the default is {DEFAULT_LR:g})" if lr < DEFAULT_LR else "")
    return f"lr = {lr:g}{where} is likely too high: {advice}"


class Diverged(XferlabError):
    """A run stopped because its losses diverged (NaN, inf, or the divergence rule): what happened (`divergence`),
    the epochs trained (`history`, history.csv rows) and where the learning rate was set (`origin`; with_origin adds
    it once the caller knows)."""

    def __init__(self, divergence: Divergence, history: Sequence[dict], origin: str | None = None,
                 losses: str | None = None):
        self.divergence, self.history, self.origin = divergence, list(history), origin
        self._losses = losses  # every non-finite loss of the epoch, when there were several
        shown = f"epoch {divergence.epoch}: {losses}" if losses else divergence.reason()
        super().__init__(f"{shown}: training diverged; {lr_hint(divergence.lr, origin)}; nothing was saved")

    def with_origin(self, origin: str | None) -> Diverged:
        """The same error, its hint naming where the learning rate was set."""
        return Diverged(self.divergence, self.history, origin, self._losses)


def _chance(num_classes: int) -> float:
    return math.log(max(num_classes, 2))


def check_finite_losses(row: dict, lr: float, history: Sequence[dict] = ()) -> None:
    """Raise Diverged when a loss of this epoch's history row is NaN or infinite.

    A loss that was finite at the start and diverges is almost always a step size too large for the model (a
    learning rate typed with the wrong exponent, or fine-tuning at a frozen head's rate); bad pixels are refused when
    the data is loaded, so they are not the cause here. The test loss is checked too: NaN test probabilities could not
    be saved as predictions.
    """
    bad = {k: row[k] for k in LOSS_KEYS if row.get(k) is not None and not math.isfinite(row[k])}
    if bad:
        key = next(iter(bad))
        losses = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in bad.items())
        found = Divergence(row["epoch"], key.removesuffix("_loss"), bad[key], NOT_FINITE, "", lr)
        raise Diverged(found, history or [row], losses=losses)


def divergence(history: Sequence[dict], num_classes: int, lr: float) -> Divergence | None:
    """The divergence rule (module docstring) applied to the last row of `history` (history.csv rows, every earlier
    row already checked); None while the run is sound."""
    row, earlier = history[-1], history[:-1]
    chance = _chance(num_classes)
    limits = {"train": TRAIN_CHANCE_MULTIPLE, "val": VAL_CHANCE_MULTIPLE}
    for split in DECIDING_SPLITS:
        loss = row.get(f"{split}_loss")
        if loss is None or not math.isfinite(loss):
            continue
        times = f"{loss / chance:.3g} × chance, ln {max(num_classes, 2)} = {chance:.3g}"
        if loss > limits[split] * chance:
            return Divergence(row["epoch"], split, loss, ABOVE_CHANCE, f"{times}; the limit is {limits[split]:g} ×",
                              lr)
        previous = [r[f"{split}_loss"] for r in earlier if r.get(f"{split}_loss") is not None]
        lowest = min(previous, default=math.inf)
        if loss > GROWTH_FLOOR_MULTIPLE * chance and loss > GROWTH_FACTOR * lowest:
            at = next(r["epoch"] for r in earlier if r.get(f"{split}_loss") == lowest)
            return Divergence(row["epoch"], split, loss, GROWING,
                              f"{loss / lowest:.3g} times its lowest, {lowest:.3g} in epoch {at}; {times}", lr)
    return None


class FiniteLosses:
    """check_finite_losses as a fit-loop hook (xferlab.engine.fit): after every epoch, before the best epoch is
    chosen when passed first."""

    def __init__(self, lr: float):
        self.lr = lr

    def on_epoch_end(self, record: EpochRecord, state: FitState) -> None:
        check_finite_losses(record.row(), self.lr, [r.row() for r in state.history] if state else ())


class DivergingLosses:
    """The divergence rule (`divergence`) as a fit-loop hook, after FiniteLosses: raises Diverged at the first epoch
    whose training or val loss has diverged while finite."""

    def __init__(self, lr: float, num_classes: int):
        self.lr, self.num_classes = lr, num_classes

    def on_epoch_end(self, record: EpochRecord, state: FitState) -> None:
        history = [r.row() for r in state.history]
        found = divergence(history, self.num_classes, self.lr)
        if found is not None:
            raise Diverged(found, history)
