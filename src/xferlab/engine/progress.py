"""Progress of a training run, one report per epoch: a tqdm bar on a terminal, one plain line per epoch otherwise
(logs, CI), nothing under `--quiet`. The time left is the mean of the epochs measured so far times the epochs left.

The fit loop calls `on_epoch_end(epoch, row)` at one point per epoch (row: the history.csv row) and `close()` at the
end; nothing else in the loop knows how progress is shown.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

_QUIET = False  # set once by the CLI's --quiet; a library caller passes progress=False instead


def set_quiet(quiet: bool) -> None:
    """Silence every progress report of this process (the CLI's --quiet)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def format_seconds(seconds: float) -> str:
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
    """Per-epoch progress of one run. `stream` defaults to stderr; `interactive` (default: whether the stream is a
    terminal) chooses the bar over plain lines."""

    def __init__(self, epochs: int, label: str, enabled: bool = True, stream: TextIO | None = None,
                 interactive: bool | None = None, clock=time.perf_counter):
        self.epochs, self.label, self.clock = epochs, label, clock
        self.stream = stream or sys.stderr
        self.enabled = enabled and not _QUIET
        tty = self.stream.isatty() if interactive is None and hasattr(self.stream, "isatty") else bool(interactive)
        self.bar = tqdm(total=epochs, desc=label, unit="epoch", file=self.stream, leave=False, dynamic_ncols=True) \
            if self.enabled and tty else None
        self.started = self._last = clock()
        self.seconds: list[float] = []  # wall seconds of each finished epoch (training + evaluation)

    def time_left(self, epoch: int) -> float:
        """Mean measured epoch seconds × epochs still to run."""
        return sum(self.seconds) / len(self.seconds) * (self.epochs - epoch) if self.seconds else float("nan")

    def line(self, epoch: int, row: dict) -> str:
        """'resnet18 finetune epoch 3/30: loss 0.412 acc 0.861 val acc 0.845 3.1s, about 1m24s left'."""
        return (f"{self.label} epoch {epoch}/{self.epochs}: loss {_fmt(row.get('train_loss'))} "
                f"acc {_fmt(row.get('train_acc'))} val acc {_fmt(row.get('val_acc'))} {self.seconds[-1]:.1f}s, "
                f"about {format_seconds(self.time_left(epoch))} left")

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        now = self.clock()
        self.seconds.append(now - self._last)
        self._last = now
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=_fmt(row.get("train_loss")), acc=_fmt(row.get("train_acc")),
                                 val_acc=_fmt(row.get("val_acc")), refresh=False)
            self.bar.update(1)
        else:
            print(self.line(epoch, row), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
