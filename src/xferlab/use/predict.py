"""`xferlab predict RUN INPUT... --out predictions.csv`: class probabilities for new images with a run's own
preprocessing, one CSV row per image, and, where labels are known, accuracy, balanced accuracy and AUROC with
bootstrap confidence intervals (the evaluation code the reports use).
"""

from __future__ import annotations

import csv
import io
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from xferlab import files
from xferlab.errors import XferlabError
from xferlab.evaluation.evaluate import BootstrapSettings, evaluate_split
from xferlab.use.inputs import Decoder, InputItem, collect_inputs
from xferlab.use.model import LoadedRun, check_test_bn

DECISION_RULE = "argmax"  # the class with the highest probability: what every metric of the run was computed with
SHOWN_METRICS = ("accuracy", "balanced_accuracy", "auroc")
TRANSDUCTIVE = "adapt (transductive)"  # the CSV's test_bn column with --test-bn adapt
T = TypeVar("T")


@dataclass
class Predictions:
    """What predict produced: the items kept (in input order), their probabilities, the files skipped, the metrics
    on the labelled items (None when no label is known) and the seconds spent."""

    items: list[InputItem]
    probs: np.ndarray  # N×K, columns in class_names order
    class_names: list[str]
    skipped: list[InputItem]
    evaluation: dict | None
    seconds: float
    test_bn: str = "off"  # "adapt": BatchNorm statistics of these inputs (transductive)
    runtime: dict | None = None  # what ran the predictions (xferlab.engine.runtime.RuntimeRecord.as_dict)

    @property
    def images_per_s(self) -> float:
        return len(self.items) / self.seconds if self.seconds > 0 else float("nan")


def predict_inputs(run: LoadedRun, inputs: Sequence[str | os.PathLike], batch_size: int = 64,
                   skip_unreadable: bool = False, progress: bool = True, test_bn: str = "off") -> Predictions:
    """Decode, preprocess and classify every INPUT (files, folders, manifests, .npy stacks) in batches.

    test_bn="adapt": every input is decoded first and the run's BatchNorm statistics re-estimated on them all
    (LoadedRun.adapted; refused below the run's test_bn_min_images), so the inputs are held in memory at the run's
    image size, and each prediction depends on the other inputs (transductive)."""
    if batch_size < 1:
        raise XferlabError(f"--batch-size must be at least 1, got {batch_size}")
    check_test_bn(test_bn)
    items = collect_inputs(inputs, run.class_names)
    decoder = Decoder(skip_unreadable, run.preprocessing.image_size)
    kept: list[InputItem] = []
    probs: list[np.ndarray] = []
    start = time.perf_counter()
    with tqdm(total=len(items), unit="image", desc="predict", disable=None if progress else True,
              leave=False, dynamic_ncols=True) as bar:  # disable=None: a bar on a terminal only
        batches = ahead((batch_items, run.prepare(images, str(batch_items[0].path)))
                        for batch_items, images in decoder.batches(items, batch_size))
        if test_bn == "adapt":
            batches = list(batches)  # every input before any prediction: the statistics come from them all
            if batches:
                run = run.adapted(np.concatenate([b for _, b in batches]), batch_size)
        for batch_items, batch in batches:
            if not probs:  # the runtime is chosen once, on the first batch, for all the inputs
                run.use_runtime(batch, len(items))
            probs.append(run.predict_batch(batch))
            kept += batch_items
            bar.update(len(batch_items))
    seconds = time.perf_counter() - start
    decoder.report_skipped()
    if not kept:
        raise XferlabError("no readable images among the inputs; check the paths")
    all_probs = np.concatenate(probs)
    return Predictions(kept, all_probs, run.class_names, decoder.skipped, _evaluate(kept, all_probs), seconds,
                       test_bn, run.runtime_record.as_dict())


def ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, each produced on a worker thread while the caller works on the one before: the next batch decodes
    (Pillow and libjpeg release the GIL) while the model runs on this one. Errors surface where the item would."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xferlab-decode") as pool:
        future = pool.submit(next, items, _DONE)
        while (item := future.result()) is not _DONE:
            future = pool.submit(next, items, _DONE)
            yield item


_DONE = object()


def _evaluate(items: Sequence[InputItem], probs: np.ndarray) -> dict | None:
    labelled = np.array([i.label is not None for i in items])
    if not labelled.any():
        return None
    labels = np.array([i.label for i in items if i.label is not None], dtype=np.int64)
    with warnings.catch_warnings():  # one class among the labels: scikit-learn warns, the summary says "undefined"
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return {"n_labelled": int(labelled.sum()), **evaluate_split(labels, probs[labelled], BootstrapSettings())}


def predictions_csv(pred: Predictions) -> str:
    """path, index (npy stacks), label (when known), predicted, one probability column per class, decision_rule, and
    with test-time BatchNorm a test_bn column marking every row transductive."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    adapted = pred.test_bn != "off"
    writer.writerow(["path", "index", "label", "predicted", *[f"p_{c}" for c in pred.class_names], "decision_rule",
                     *(["test_bn"] if adapted else [])])
    predicted = pred.probs.argmax(1)
    for item, p, k in zip(pred.items, pred.probs, predicted, strict=True):
        writer.writerow([str(item.path), "" if item.index is None else item.index,
                         "" if item.label is None else pred.class_names[item.label], pred.class_names[k],
                         *(f"{v:.6g}" for v in p), DECISION_RULE, *([TRANSDUCTIVE] if adapted else [])])
    return buf.getvalue()


def check_out(out: str | os.PathLike) -> Path:
    """The CSV path, refused when it is a folder or its folder does not exist."""
    out = Path(out)
    if out.is_dir():
        raise XferlabError(f"--out {out} is a folder; give a file name such as {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        raise XferlabError(f"--out {out}: folder {out.parent} does not exist; create it first")
    return out


def write_predictions(pred: Predictions, out: str | os.PathLike) -> Path:
    """Write predictions_csv atomically (temporary name, then rename)."""
    out = check_out(out)
    files.write_text(out, predictions_csv(pred))
    return out


def summary_lines(pred: Predictions) -> list[str]:
    """What the CLI prints: counts, throughput and, with labels, the metrics with their CIs."""
    counts = np.bincount(pred.probs.argmax(1), minlength=len(pred.class_names))
    lines = [f"{len(pred.items)} images in {pred.seconds:.1f} s ({pred.images_per_s:.1f} images/s, decoding "
             f"included); predicted: " + ", ".join(f"{c} {n}" for c, n in zip(pred.class_names, counts, strict=True))]
    if pred.runtime is not None:
        lines.append(f"runtime: {pred.runtime['path']} ({pred.runtime['reason']})")
    if pred.skipped:
        lines.append(f"skipped {len(pred.skipped)} unreadable file(s)")
    if pred.test_bn != "off":
        lines.append(f"test-time BatchNorm: statistics re-estimated on these {len(pred.items)} inputs (transductive: "
                     "each prediction depends on the other inputs; not the run's own evaluation)")
    ev = pred.evaluation
    if ev is not None:
        level = int(BootstrapSettings().confidence * 100)
        lines.append(f"labels known for {ev['n_labelled']} of {len(pred.items)} images:")
        for name in SHOWN_METRICS:
            m = ev["metrics"][name]
            if m["value"] is None:
                lines.append(f"  {name}: undefined (needs every class among the labels)")
                continue
            ci = f" ({level}% CI {m['low']:.3f}-{m['high']:.3f})" if m["low"] is not None else ""
            lines.append(f"  {name}: {m['value']:.3f}{ci}")
    return lines
