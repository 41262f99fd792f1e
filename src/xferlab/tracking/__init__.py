"""Experiment tracking: xferlab's runs, studies and audits mirrored into MLflow and TensorBoard (`--track`).

  base.py                 the Tracker interface; FanOut, which queues calls on one background thread per tool and
                          turns a failing tool off with one warning (tracking never changes or stops a run)
  mlflow_tracker.py       MLflow adapter (MlflowClient): runs, nested runs of a study, params, metrics, artifacts
  tensorboard_tracker.py  TensorBoard adapter: scalars per epoch, PNG figures as images, HParams
  records.py              what is logged, read from configs and saved folders (params, tags, final metrics with
                          CIs, confusion matrices, the audit)
  session.py              opening and finishing the tracked runs of train, study and audit; where each tool writes

The fit loop (xferlab.engine.fit) reaches a tracker only through the EpochMetrics hook passed to
engine.run.train(hooks=...); the engine never imports this package. Only base.py is imported eagerly; mlflow and
tensorboard are imported on the worker threads, and only when asked for.
"""

from xferlab.tracking.base import NULL, EpochMetrics, FanOut, Tracker, epoch_hooks

__all__ = ["NULL", "EpochMetrics", "FanOut", "Tracker", "epoch_hooks"]
