"""The frozen re-split experiment's training (issue 20): the original split and R re-splits trained one split at a
time through the fit loop (fit_split, the path before) against all heads trained together as one batched model
(fit_heads_together, xferlab.engine.stacked), in the same process on the same splits. Not run by the tests.

    OMP_NUM_THREADS=1 python benchmarks/resplit_speed.py --images 9332 --resplits 5
    OMP_NUM_THREADS=1 python benchmarks/resplit_speed.py --images 58000 --together-only   # the issue's scale

Random 1280-column features (EfficientNet-Lite0's width) with a weak class signal, two classes, the audit's
default training (AuditConfig: 30 epochs, batch 32, Adam 1e-3), one torch thread on CPU as the audit uses for a
linear head. Prints both times, the ratio and how many per-split results differ (argmax near-ties aside, none).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from xferlab.audit.resplit import _factory, fit_heads_together, fit_split
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.splits import draw_splits, split_counts
from xferlab.engine.accel import num_threads

DIM = 1280  # EfficientNet-Lite0's pooled features


def _data(images: int) -> tuple[ImageDataset, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, images)
    features = rng.normal(size=(images, DIM)).astype(np.float32)
    features[:, :8] += 0.3 * (2 * labels[:, None] - 1)  # weak signal: accuracies move over the epochs
    splits = draw_splits(labels, None, {"val": 0.15, "test": 0.15}, seed=0)
    data = ImageDataset(images=np.zeros((images, 2, 2), np.uint8), labels=labels, class_names=["a", "b"],
                        splits=splits)
    return data, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=9332)
    parser.add_argument("--resplits", type=int, default=5)
    parser.add_argument("--together-only", action="store_true", help="time the batched path alone (large sizes)")
    args = parser.parse_args()
    data, features = _data(args.images)
    cfg = AuditConfig(resplits=args.resplits, device="cpu")
    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(cfg.resplits + 1)]
    assignments = [data.splits] + [draw_splits(data.labels, None, split_counts(data.splits), s) for s in seeds[1:]]
    cpu = torch.device("cpu")
    inputs, make = _factory(data, features, cfg, cpu)
    steps = cfg.epochs * -(-split_counts(data.splits)["train"] // cfg.batch_size)
    row = {"images": args.images, "splits": len(seeds), "steps_per_split": steps}
    with num_threads(1):
        if not args.together_only:
            start = time.perf_counter()
            alone = [fit_split(inputs, data.labels, a, make, cfg, s, cpu) for a, s in zip(assignments, seeds)]
            row["one_at_a_time_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        together = fit_heads_together(inputs, data.labels, assignments, make, cfg, seeds)
        row["together_s"] = round(time.perf_counter() - start, 2)
    if not args.together_only:
        row |= {"speedup": round(row["one_at_a_time_s"] / row["together_s"], 2),
                "results_differing": sum(a != b for a, b in zip(alone, together)),
                "max_test_acc_difference": max(abs(a["test"] - b["test"]) for a, b in zip(alone, together))}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
