"""The tracker interface, and the wrappers that keep tracking from ever changing or stopping a run.

A tracker is one run in one tool (MLflow, TensorBoard), behind the small interface Lightning's loggers made familiar:
log_params, log_metrics(step=), set_tags, log_artifacts, finish, plus child() for a study's nested runs and
done()/mark_done() so that a resumed study logs each finished run once.

The fit loop (xferlab.engine.fit) sees only an EpochMetrics hook around a FanOut: its calls are queued and carried
out on one background thread per tool, so a slow or unreachable tracking server never holds up an epoch. The first
exception a tool raises is logged once as a warning and turns that tool off for the rest of the process; training,
the run folder and every other tool go on.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# How long closing waits for a tool's queued calls (a study's last artifacts, a slow server) before leaving them:
# tracking must not hold the command open for long, and the run folder already holds everything.
CLOSE_TIMEOUT_S = 120.0


class Tracker:
    """One run in one tracking tool. Adapters override every method; the base class does nothing (the null tracker).

    `log_metrics(metrics, step=None)` with no step logs final values (MLflow step 0, TensorBoard hparams metrics).
    `status` of finish: FINISHED, FAILED or KILLED (MLflow's run states).
    """

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_artifacts(self, files: Sequence[Path], subdir: str = "") -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def discard(self) -> None:
        """The run ended on bad input before producing anything: remove what it logged (nothing half-written); a
        run reopened from an earlier session (a resumed study) is only marked FAILED."""

    def child(self, name: str) -> Tracker:
        """A nested run (a grid cell of a study), started fresh: an earlier unfinished attempt is closed or removed."""
        return self

    def done(self, key: str) -> bool:
        """Whether mark_done(key) was called on this run, in this process or an earlier one."""
        return False

    def mark_done(self, key: str) -> None:
        pass


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of `metrics` as floats (None, text and NaN left out: trackers take numbers only)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class _Worker:
    """One background thread that runs a tool's calls in order; the first failure warns once and stops the rest."""

    def __init__(self, name: str):
        self.name = name
        self.failed = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"xferlab-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        if not self.failed:
            self._queue.put(job)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.failed:
                continue
            try:
                job()
            except Exception as err:  # any failure of the tool: warn once, keep training
                self.failed = True
                log.warning("%s tracking failed and is off for the rest of this run (%s: %s); training goes on and "
                            "the run folder stays the record", self.name, type(err).__name__, err)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s tracking still busy after %.0f s; leaving its remaining calls (the run folder holds "
                        "everything)", self.name, timeout)


class _Box:
    """The adapter object of one run, created on the worker thread by the first job of its queue."""

    target: Tracker | None = None


class Handle(Tracker):
    """A run of one tool as the caller sees it: every call is queued on the tool's worker and returns at once.
    Questions that need an answer (done) are asked of the adapter itself, inside a job queued with run()."""

    def __init__(self, worker: _Worker, box: _Box):
        self.worker, self._box = worker, box

    @classmethod
    def start(cls, worker: _Worker, open_run: Callable[[], Tracker]) -> Handle:
        box = _Box()
        worker.submit(lambda: setattr(box, "target", open_run()))
        return cls(worker, box)

    def run(self, job: Callable[[Tracker], None]) -> None:
        """Queue `job(adapter)`; it is skipped if the adapter could not be opened (the worker has failed)."""
        self.worker.submit(lambda: job(self._box.target) if self._box.target is not None else None)

    def log_params(self, params):
        params = dict(params)
        self.run(lambda t: t.log_params(params))

    def log_metrics(self, metrics, step=None):
        values = numeric(metrics)
        self.run(lambda t: t.log_metrics(values, step))

    def set_tags(self, tags):
        tags = {k: str(v) for k, v in tags.items()}
        self.run(lambda t: t.set_tags(tags))

    def log_artifacts(self, files, subdir=""):
        files = [Path(f) for f in files]
        self.run(lambda t: t.log_artifacts(files, subdir))

    def finish(self, status="FINISHED"):
        self.run(lambda t: t.finish(status))

    def child(self, name):
        box = _Box()
        self.worker.submit(lambda: setattr(box, "target", self._box.target.child(name))
                           if self._box.target is not None else None)
        return Handle(self.worker, box)

    def mark_done(self, key):
        self.run(lambda t: t.mark_done(key))


class FanOut(Tracker):
    """Every requested tool's run behind one Tracker: what the training loop, the study and the audit call.

    With no tools it does nothing and costs nothing. `run(job)` queues `job(adapter)` on every tool, for work that
    reads files (a finished run folder, the audit) on the worker threads rather than the caller's.
    """

    def __init__(self, handles: Sequence[Handle] = (), owns_workers: bool = False):
        self.handles = list(handles)
        self._owns_workers = owns_workers

    def __bool__(self) -> bool:
        return bool(self.handles)

    def run(self, job: Callable[[Tracker], None]) -> None:
        for h in self.handles:
            h.run(job)

    def log_params(self, params):
        for h in self.handles:
            h.log_params(params)

    def log_metrics(self, metrics, step=None):
        for h in self.handles:
            h.log_metrics(metrics, step)

    def set_tags(self, tags):
        for h in self.handles:
            h.set_tags(tags)

    def log_artifacts(self, files, subdir=""):
        for h in self.handles:
            h.log_artifacts(files, subdir)

    def finish(self, status="FINISHED"):
        for h in self.handles:
            h.finish(status)

    def child(self, name):
        return FanOut([h.child(name) for h in self.handles])

    def mark_done(self, key):
        for h in self.handles:
            h.mark_done(key)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Wait (at most `timeout` s per tool) for the queued calls; only the top-level run owns the workers."""
        if self._owns_workers:
            for worker in {id(h.worker): h.worker for h in self.handles}.values():
                worker.close(timeout)


NULL = FanOut()  # no tracking: what a command gets when it asks for no tracker


class EpochMetrics:
    """The fit-loop hook (xferlab.engine.fit: `on_epoch_end(record, state)`) that hands each epoch's history row to
    a tracker, with the epoch as its step. The call is queued and returns at once: the loop never waits for a tool."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_epoch_end(self, record, state) -> None:
        self.tracker.log_metrics(record.row(), step=record.epoch)


def epoch_hooks(tracker: Tracker) -> list[EpochMetrics]:
    """The hooks to pass to engine.run.train(hooks=...) for `tracker`: none when nothing is tracked."""
    return [EpochMetrics(tracker)] if tracker else []
