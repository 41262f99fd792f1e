"""Checks the fit loop makes once per epoch: a loss that is NaN or infinite stops the run with an error naming the
epoch and the likely cause, before anything is written (the run folder is still staged)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from xferlab.errors import XferlabError

if TYPE_CHECKING:
    from xferlab.engine.fit import EpochRecord, FitState

LOSS_KEYS = ("train_loss", "val_loss", "test_loss")


def check_finite_losses(row: dict, lr: float) -> None:
    """Raise when a loss of this epoch's history row is NaN or infinite.

    A loss that was finite at the start and diverges is almost always a step size too large for the model (a
    learning rate typed with the wrong exponent, or fine-tuning at a frozen head's rate); bad pixels are refused when
    the data is loaded, so they are not the cause here.
    """
    bad = {k: row[k] for k in LOSS_KEYS if row.get(k) is not None and not math.isfinite(row[k])}
    if bad:
        losses = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in bad.items())
        raise XferlabError(
            f"epoch {row['epoch']}: {losses}: training diverged; the learning rate (lr = {lr:g}) is likely too "
            f"high: lower it (e.g. --lr {lr / 10:g}); nothing was saved"
        )


class FiniteLosses:
    """check_finite_losses as a fit-loop hook (xferlab.engine.fit): after every epoch, before the best epoch is
    chosen when passed first."""

    def __init__(self, lr: float):
        self.lr = lr

    def on_epoch_end(self, record: EpochRecord, state: FitState) -> None:
        check_finite_losses(record.row(), self.lr)
