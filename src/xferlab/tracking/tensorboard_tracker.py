"""The TensorBoard adapter: one log folder per run (a study's runs under DIR/tb/<run>), per-epoch scalars, PNG
figures as images, and the run's params with its final metrics in TensorBoard's HParams view.

TensorBoard has no artifact store: of the files given to log_artifacts only the PNG figures (curves, confusion
matrices, the audit's figures) are shown, as images; the run folder keeps the rest.
Imported only when `--track tensorboard` is asked for.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from xferlab.tracking.base import Tracker

DONE_MARKER = ".xferlab-done-{}"  # in a parent's log folder: that nested run (or the audit) is fully logged
HPARAM_TYPES = (int, float, str, bool)


class TensorBoardTracker(Tracker):
    """One run's log folder. `with_hparams`: write the HParams summary at finish (training runs, not a study's root)."""

    def __init__(self, logdir: Path, with_hparams: bool = True, fresh: bool = True):
        self.logdir, self.fresh = Path(logdir), fresh
        self.with_hparams = with_hparams
        self._writer: SummaryWriter | None = None
        self.params: dict[str, Any] = {}
        self.final: dict[str, float] = {}

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:  # on first use: a run that fails on bad input before its first epoch touches nothing
            if self.fresh:  # a rerun replaces an earlier (possibly killed) attempt rather than doubling its curves
                shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.logdir))
        return self._writer

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update({k: v if isinstance(v, HPARAM_TYPES) else str(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.params.update({f"tag.{k}": str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step or 0)
        if step is None:
            self.final.update(metrics)

    def log_artifacts(self, files: Sequence[Path], subdir: str = "") -> None:
        for f in files:
            if f.suffix.lower() == ".png":
                with Image.open(f) as im:
                    pixels = np.asarray(im.convert("RGB"))
                self.writer.add_image(f"{subdir}/{f.stem}" if subdir else f.stem, pixels, dataformats="HWC")

    def finish(self, status: str = "FINISHED") -> None:
        if self.with_hparams and self.final:
            # The HParams view reads the session's hparams and, by tag, the final metric scalars written above.
            for summary in hparams(self.params, self.final):
                self.writer.file_writer.add_summary(summary)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self.fresh:
                shutil.rmtree(self.logdir, ignore_errors=True)

    def child(self, name: str) -> TensorBoardTracker:
        return TensorBoardTracker(self.logdir / name)

    def done(self, key: str) -> bool:
        return (self.logdir / DONE_MARKER.format(key)).exists()

    def mark_done(self, key: str) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        (self.logdir / DONE_MARKER.format(key)).touch()
