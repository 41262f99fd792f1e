"""Progress of a training run, one report per epoch: a tqdm bar on a terminal, one plain line per epoch otherwise
(logs, CI), nothing under `--quiet`. The time left is the mean of the epochs measured so far times the epochs left.

EpochProgress is a fit-loop hook (xferlab.engine.fit): `on_fit_start` starts the clock (and the bar),
`on_epoch_end(record, state)` reports the epoch, `on_fit_end` closes the bar; nothing in the loop knows how progress
is shown. It is the one progress implementation of the fit loop.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from tqdm.auto import tqdm

from xferlab.evaluation.timing import format_seconds

if TYPE_CHECKING:
    from xferlab.engine.fit import BestEpoch, EpochRecord, FitState

_QUIET = False  # set once by the CLI's --quiet; a library caller passes progress=False instead


def set_quiet(quiet: bool) -> None:
    """Silence every progress report of this process (the CLI's --quiet)."""
    global _QUIET
    _QUIET = bool(quiet)


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m' (seconds that fit a progress line)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class EpochProgress:
    """Per-epoch progress of one run, as a fit-loop hook. `best` (a BestEpoch hook placed before this one) adds the
    best epoch so far to the report. `stream` defaults to stderr; `interactive` (default: whether the stream is a
    terminal) chooses the bar over plain lines."""

    def __init__(self, label: str, best: BestEpoch | None = None, enabled: bool = True,
                 stream: TextIO | None = None, interactive: bool | None = None, clock=time.perf_counter):
        self.label, self.best, self.clock = label, best, clock
        self.stream = stream or sys.stderr
        self.enabled = enabled and not _QUIET
        self.interactive = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) \
            if interactive is None else bool(interactive)
        self.epochs = 0
        self.bar = None
        self._last = 0.0
        self.seconds: list[float] = []  # wall seconds of each finished epoch (training + evaluation)

    def on_fit_start(self, state: FitState) -> None:
        self.epochs, self.seconds = state.epochs, []
        if self.enabled and self.interactive:
            self.bar = tqdm(total=state.epochs, desc=self.label, unit="epoch", file=self.stream, leave=False,
                            dynamic_ncols=True)
        self._last = self.clock()

    def time_left(self, epoch: int) -> float:
        """Mean measured epoch seconds × epochs still to run."""
        return sum(self.seconds) / len(self.seconds) * (self.epochs - epoch) if self.seconds else float("nan")

    def _best(self) -> str:
        epoch = None if self.best is None else self.best.epoch
        return "" if epoch is None else f" (best epoch {epoch})"

    def line(self, record: EpochRecord) -> str:
        """'resnet18 finetune epoch 3/30: loss 0.412 acc 0.861 val acc 0.845 (best epoch 2) 3.1s, about 1m24s
        left'."""
        return (f"{self.label} epoch {record.epoch}/{self.epochs}: loss {_fmt(record.train_loss)} "
                f"acc {_fmt(record.train_acc)} val acc {_fmt(record.val_acc)}{self._best()} "
                f"{format_seconds(self.seconds[-1])}s, about {format_duration(self.time_left(record.epoch))} left")

    def on_epoch_end(self, record: EpochRecord, state: FitState) -> None:
        now = self.clock()
        self.seconds.append(now - self._last)
        self._last = now
        if not self.enabled:
            return
        if self.bar is not None:
            best = {} if self.best is None or self.best.epoch is None else {"best": self.best.epoch}
            self.bar.set_postfix(loss=_fmt(record.train_loss), acc=_fmt(record.train_acc),
                                 val_acc=_fmt(record.val_acc), **best, refresh=False)
            self.bar.update(1)
        else:
            print(self.line(record), file=self.stream, flush=True)

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
