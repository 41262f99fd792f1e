"""Tracking overhead per epoch on the demo's phantoms: an EfficientNet-Lite0 fine-tune trained without tracking and
with MLflow + TensorBoard, alternately; prints the epoch times, the time the per-epoch call takes in the training
thread and the time the trackers' worker threads spend per epoch (what competes with training for the CPU).

usage: PYTHONPATH=src python benchmarks/tracking_overhead.py [--epochs 3] [--repeats 1] [--out /tmp/xferlab-tracking]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from xferlab.config import DataConfig, TrainConfig
from xferlab.data.phantoms import generate_phantoms
from xferlab.engine.run import train
from xferlab.tracking import session
from xferlab.tracking.base import FanOut, epoch_hooks


class TimedFanOut(FanOut):
    """The tracker the fit loop's hook gets, timing its per-epoch call in the training thread."""

    def __init__(self, inner: FanOut):
        super().__init__(inner.handles)
        self.seconds: list[float] = []

    def log_metrics(self, metrics, step=None):
        t = time.perf_counter()
        super().log_metrics(metrics, step)
        self.seconds.append(time.perf_counter() - t)


def _time_workers(tracker: FanOut, spent: dict) -> None:
    """Wrap each adapter's log_metrics (on its worker thread) to add up the seconds it takes per tool."""
    for handle in tracker.handles:
        def wrap(adapter, name=handle.worker.name):
            original = adapter.log_metrics

            def timed(metrics, step=None):
                t = time.perf_counter()
                original(metrics, step)
                if step is not None:
                    spent.setdefault(name, []).append(time.perf_counter() - t)

            adapter.log_metrics = timed
        handle.run(wrap)


def _epoch_seconds(result) -> list[float]:
    return [r["train_seconds"] + r["eval_seconds"] for r in result.history]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/xferlab-tracking"))
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    data = generate_phantoms(args.out / "phantoms", shift="acquisition", seed=0)  # the demo's phantoms
    base = TrainConfig(data=DataConfig(path=data), backbone="efficientnet_lite0", weights="imagenet", regime="finetune",
                       epochs=args.epochs, batch_size=32, device="cpu", num_threads=1)
    plain, tracked, call_s, worker_s = [], [], [], {}
    for i in range(args.repeats):
        plain += _epoch_seconds(train(base, args.out / f"plain{i}", progress=False))[1:]  # epoch 1 warms up
        cfg = base.model_copy(update={"track": ["mlflow", "tensorboard"]})
        with session.train_run(cfg, args.out / "runs" / f"tracked{i}") as tracker:
            timed = TimedFanOut(tracker)
            _time_workers(tracker, worker_s)
            result = train(cfg, args.out / "runs" / f"tracked{i}", progress=False, hooks=epoch_hooks(timed))
            session.finished_run(tracker, result.out)
        tracked += _epoch_seconds(result)[1:]
        call_s += timed.seconds
    mean_plain, mean_tracked = statistics.fmean(plain), statistics.fmean(tracked)
    print(f"fine-tune epoch (epochs 2..{args.epochs}, {args.repeats} repeat(s)): untracked {mean_plain:.2f} s, "
          f"tracked {mean_tracked:.2f} s ({100 * (mean_tracked / mean_plain - 1):+.1f} %)")
    print(f"per-epoch call in the training thread: {1e6 * statistics.fmean(call_s):.0f} us "
          f"({100 * statistics.fmean(call_s) / mean_plain:.4f} % of an epoch)")
    for name, spent in worker_s.items():
        print(f"{name} worker per epoch: {1e3 * statistics.fmean(spent):.1f} ms "
              f"({100 * statistics.fmean(spent) / mean_plain:.2f} % of an epoch; on another thread)")


if __name__ == "__main__":
    main()
