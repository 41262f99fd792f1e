"""The one fit loop: every training in xferlab (a run, each run of a study, each of the audit's re-splits) goes
through `fit`, which trains an epoch, evaluates val and test, and hands an EpochRecord to its hooks.

Hook interface. A hook is any object with some of these methods (FitHook lists them; all are optional):

    on_fit_start(state: FitState)                        before the first epoch
    on_epoch_end(record: EpochRecord, state: FitState)   after each epoch's training and evaluation
    on_fit_end(state: FitState)                          after the last epoch (also after an early stop)

`state.epochs` is the number of epochs asked for, `state.history` the records so far; a hook may set
`state.stop = True` to end training after the current epoch (early stopping, a numeric check that found NaNs).
Hooks run in the order given. Built in: BestEpoch (the epoch chosen on val accuracy, ties keep the earlier one,
with a snapshot of whatever it is told to keep); progress (a bar on a terminal, a line per epoch otherwise) is the
hook xferlab.engine.progress.EpochProgress. Experiment trackers (MLflow, TensorBoard) and numeric checks plug in the
same way, without editing the loop. Test data is evaluated every epoch for the curves but no built-in hook lets it
choose anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from xferlab.artifacts import EVAL_SPLITS
from xferlab.engine.distributed import SINGLE, Dist
from xferlab.engine.loop import evaluate, train_one_epoch
from xferlab.evaluation.timing import Timer


@dataclass
class EpochRecord:
    """One epoch: mean training loss and accuracy, val and test loss and accuracy (None for an absent split), the
    seconds of training and of evaluation, and the evaluated splits' class probabilities (not part of the history)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None
    train_seconds: float
    eval_seconds: float
    probs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The history.csv row (xferlab.artifacts.HISTORY_COLUMNS)."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "train_acc": self.train_acc,
                "val_loss": self.val_loss, "val_acc": self.val_acc, "test_loss": self.test_loss,
                "test_acc": self.test_acc, "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds}


@dataclass
class FitState:
    epochs: int
    history: list[EpochRecord] = field(default_factory=list)
    stop: bool = False


class FitHook(Protocol):
    """What `fit` calls; a hook defines the methods it needs (see the module docstring)."""

    def on_fit_start(self, state: FitState) -> None: ...

    def on_epoch_end(self, record: EpochRecord, state: FitState) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...


@dataclass
class FitTask:
    """What one fit trains: the module switched between train and eval mode, the forwards over stored inputs
    (training may go through DistributedDataParallel), inputs and labels per split, the optimiser and per-step
    scheduler, the epoch's training batches (epoch -> index batches) and the evaluation batch size."""

    model: torch.nn.Module
    train_forward: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]
    inputs: dict[str, Any]
    labels: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Callable[[int], Iterable[torch.Tensor]]
    eval_batch_size: int
    device: torch.device
    dist: Dist = SINGLE
    after_train: Callable[[], None] | None = None  # e.g. every rank takes rank 0's BatchNorm statistics
    # an epoch's index batches -> (mean loss, accuracy) in place of train_one_epoch and the optimiser above: a trainer
    # that keeps the epoch on the device (xferlab.engine.graphs.epoch_trainer)
    train_epoch: Callable[[list[torch.Tensor]], tuple[float, float]] | None = None


def _evaluate(task: FitTask) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    values, probs = {}, {}
    for s in EVAL_SPLITS:
        if s in task.inputs:
            values[f"{s}_loss"], values[f"{s}_acc"], probs[s] = evaluate(
                task.forward, task.inputs[s], task.labels[s], task.eval_batch_size, task.device, task.dist)
        else:
            values[f"{s}_loss"] = values[f"{s}_acc"] = None
    return values, probs


def _call(hooks: Sequence[object], name: str, *args) -> None:
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            method(*args)


def fit(task: FitTask, epochs: int, hooks: Sequence[object] = ()) -> list[EpochRecord]:
    """Train `epochs` epochs (fewer if a hook stops it), evaluating val and test after each; returns the history."""
    state = FitState(epochs)
    _call(hooks, "on_fit_start", state)
    for epoch in range(1, epochs + 1):
        train_timer, eval_timer = Timer(task.device), Timer(task.device)
        batches = task.batches(epoch)
        task.model.train()
        with train_timer:
            if task.train_epoch is not None:
                train_loss, train_acc = task.train_epoch(list(batches))
            else:
                train_loss, train_acc = train_one_epoch(task.train_forward, task.inputs["train"], task.labels["train"],
                                                        task.optimizer, task.scheduler, batches, task.device, task.dist)
        if task.after_train is not None:
            task.after_train()
        task.model.eval()
        with eval_timer:
            values, probs = _evaluate(task)
        record = EpochRecord(epoch, train_loss, train_acc, **values, train_seconds=train_timer.seconds,
                             eval_seconds=eval_timer.seconds, probs=probs)
        state.history.append(record)
        _call(hooks, "on_epoch_end", record, state)
        if state.stop:
            break
    _call(hooks, "on_fit_end", state)
    return state.history


class BestEpoch:
    """The epoch with the highest val accuracy (strictly better: ties keep the earlier epoch), and a snapshot taken
    then (`snapshot()`, e.g. copies of the weights that training changes)."""

    def __init__(self, snapshot: Callable[[], Any] | None = None):
        self.snapshot = snapshot
        self.record: EpochRecord | None = None
        self.kept: Any = None

    @property
    def epoch(self) -> int | None:
        return None if self.record is None else self.record.epoch

    def on_epoch_end(self, record: EpochRecord, state: FitState) -> None:
        if self.record is None or record.val_acc > self.record.val_acc:
            self.record = record
            self.kept = self.snapshot() if self.snapshot is not None else None
