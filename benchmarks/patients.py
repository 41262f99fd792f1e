"""Patients, not images, measured: phantoms with several images per patient (docs/patients.md has the table).

    PYTHONPATH=src python benchmarks/patients.py [--reps 500] [--shift-reps 200] [--images-per-patient 4]
                                                 [--out patients.json]

One set of phantoms (32 px; K images per patient: one anatomy, repositioned and re-imaged, `xferlab phantoms
--images-per-patient K`) is rendered and embedded once with the audit's fixed backbone (EfficientNet-Lite0, ImageNet
weights). Everything below works on those frozen features, computed once: that is what makes hundreds of seeded
repetitions affordable on 2 CPU cores.

A. Val carved by image or by patient (the train pool's patients, 20 % to val, `carve_val` random), a linear head
   trained by the audit's fit loop (Adam, 30 epochs, best epoch on val) on each: val accuracy against test accuracy
   on new patients, over seeds; the same for a 1-nearest-neighbour classifier on the features (a model that
   recognises patients by construction); and the audit's re-split experiment by patient and by image side by side.
B. Confidence intervals: a logistic-regression head on the pool's features (the cheap classifier of the issue),
   applied to disjoint test sets of new patients, one per repetition; 95 % intervals of the image bootstrap and of the
   cluster bootstrap (xferlab.evaluation.bootstrap); coverage of the true values, measured on a large held-out set of
   further patients from the same generator, and mean width.
C. Shift tests without a shift: train+val (patients of the pool) against a repetition's test patients, with folds and
   permutations by image and by patient; false alarms of the within-class decision at alpha, against the bound
   alpha + 2 SE (the SE of a rate of alpha at this many repetitions). And their power: the same with test patients
   imaged at another site (`shift='acquisition'`, the same pool).

Prints progress to stderr, the numbers as JSON (also to --out) and a markdown table for docs/patients.md. Not run by
the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from xferlab.audit.embed import embed_dataset
from xferlab.audit.resplit import _factory, fit_split, resplit_experiment
from xferlab.audit.shift import shift_tests
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.phantoms import generate_phantoms
from xferlab.data.sources import load_dataset
from xferlab.data.splits import carve_val
from xferlab.engine.accel import num_threads
from xferlab.evaluation.bootstrap import metric_intervals
from xferlab.evaluation.metrics import point_metrics

SIZE = 32
METRICS = ("accuracy", "balanced_accuracy", "auroc")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images-per-patient", type=int, default=4)
    p.add_argument("--pool-patients", type=int, default=300, help="train pool patients per class")
    p.add_argument("--truth-patients", type=int, default=2000, help="held-out patients per class for the truth")
    p.add_argument("--test-patients", type=int, default=20, help="test patients per class in each repetition")
    p.add_argument("--reps", type=int, default=500, help="repetitions of the coverage experiment (B)")
    p.add_argument("--shift-reps", type=int, default=200, help="repetitions of the shift-test experiment (C)")
    p.add_argument("--power-reps", type=int, default=50, help="repetitions with an acquisition shift (C)")
    p.add_argument("--parts", default="ABC", help="which experiments to run, e.g. B")
    p.add_argument("--seeds", type=int, default=10, help="val carvings per unit (A)")
    p.add_argument("--resplits", type=int, default=50, help="re-splits per unit (A)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (the study's default)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def held_out_patients(args) -> int:
    """Held-out patients per class: the truth, A's test set, and one block per repetition of the parts run."""
    reps = max(args.reps if "B" in args.parts else 0, args.shift_reps if "C" in args.parts else 0)
    return args.truth_patients + 100 + reps * args.test_patients


def phantoms(args, folder: Path, held_out: int, shift: str | None = None) -> tuple[ImageDataset, np.ndarray]:
    """The pool (split 'train'/'val' of the npy layout) and `held_out` patients per class ('test'), with their
    features; `shift` renders the held-out patients at another site (the pool is the same)."""
    k = args.images_per_patient
    generate_phantoms(folder, size=SIZE, n_per_class=args.pool_patients * k, n_test_per_class=held_out * k,
                      images_per_patient=k, seed=args.seed, shift=shift)
    data = load_dataset(DataConfig(path=folder))
    log(f"{len(data.labels)} phantoms rendered; embedding them")
    with num_threads(1):  # one thread: measured 5-10x faster than two on a busy 2-core machine (tests/audit)
        features = embed_dataset(data, AuditConfig(device="cpu"), progress=False)
    return data, features


def held_out_blocks(data: ImageDataset, args, truth: int) -> dict[str, np.ndarray]:
    """Row indices of the held-out parts, by patient: `truth` patients per class, the test set of A, and one block
    per repetition."""
    test = np.flatnonzero(data.splits == "test")
    number = np.array([int(g.rsplit("-", 1)[1]) for g in data.groups[test]])  # patient number within its class
    t, n = truth, args.test_patients
    blocks = {"truth": test[number < t], "a_test": test[(number >= t) & (number < t + 100)]}
    for r in range((number.max() + 1 - t - 100) // n):
        lo = t + 100 + r * n
        blocks[r] = test[(number >= lo) & (number < lo + n)]
    return blocks


# ---- A: val by image vs by patient, re-splits both ways ----------------------------------------------------------


def val_carving(data: ImageDataset, features: np.ndarray, blocks: dict, args) -> dict:
    pool = np.flatnonzero(data.splits != "test")
    rows = np.concatenate([pool, blocks["a_test"]])
    labels, groups = data.labels[rows], data.groups[rows]
    cfg = AuditConfig(device="cpu", epochs=30)
    inputs, make = _factory(data, features[rows], cfg, torch.device("cpu"))
    out = {}
    for unit in ("image", "patient"):
        runs = []
        for seed in range(args.seeds):
            splits = np.full(len(rows), "test", dtype=object)
            val = carve_val(labels[:len(pool)], None if unit == "image" else groups[:len(pool)], 0.2, "random", seed)
            splits[:len(pool)] = np.where(val, "val", "train")
            leaked = len(set(groups[splits == "val"]) & set(groups[splits == "train"]))
            result = fit_split(inputs, labels, splits, make, cfg, seed, torch.device("cpu"))
            nn = _nearest_neighbour(features[rows], labels, splits)
            runs.append({"val": result["val"], "test": result["test"], "gap": result["gap"],
                         "nn_val": nn["val"], "nn_test": nn["test"], "nn_gap": nn["val"] - nn["test"],
                         "val_patients_also_in_train": leaked})
        out[unit] = {key: _mean_sd([r[key] for r in runs]) for key in runs[0]}
        log(f"A: val carved by {unit}: val {out[unit]['val']['mean']:.3f}, test {out[unit]['test']['mean']:.3f}")
    splits = np.full(len(rows), "test", dtype=object)
    splits[:len(pool)] = np.where(carve_val(labels[:len(pool)], groups[:len(pool)], 0.2, "random", 0), "val", "train")
    original = ImageDataset(images=np.zeros((len(rows), 1, 1), np.uint8), labels=labels,
                            class_names=data.class_names, splits=splits, groups=groups)
    resplit = resplit_experiment(original, features[rows], AuditConfig(device="cpu", resplits=args.resplits),
                                 progress=False)
    out["resplit"] = {"original_gap": resplit["original"]["gap"], "resplits": args.resplits,
                      **{unit: {"test": _summary(way["test_accuracy"]), "gap": _summary(way["gap"])}
                         for unit, way in (("patient", resplit), ("image", resplit["by_image"]))}}
    log(f"A: re-split gap by patient {out['resplit']['patient']['gap']['mean']:+.3f}, by image "
        f"{out['resplit']['image']['gap']['mean']:+.3f}")
    return out


def _nearest_neighbour(features: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> dict:
    """Val and test accuracy of the 1-nearest-neighbour classifier (cosine) fitted on the train rows."""
    from sklearn.neighbors import KNeighborsClassifier

    train = splits == "train"
    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(features[train], labels[train])
    return {s: float(knn.score(features[splits == s], labels[splits == s])) for s in ("val", "test")}


def _mean_sd(values) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))}


def _summary(place: dict) -> dict:
    return {"mean": place["resplit_mean"], "sd": place["resplit_sd"]}


# ---- B: coverage of image and cluster bootstrap intervals ---------------------------------------------------------


def coverage(data: ImageDataset, features: np.ndarray, blocks: dict, args) -> dict:
    pool = np.flatnonzero(data.splits != "test")
    features = features.astype(np.float64)  # float32 probabilities sum to 1 only within 1e-7: scikit-learn warns
    scaler = StandardScaler().fit(features[pool])
    head = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(features[pool]), data.labels[pool])
    test = np.flatnonzero(data.splits == "test")
    probs = np.zeros((len(data.labels), 2))
    probs[test] = head.predict_proba(scaler.transform(features[test]))
    truth_rows = blocks["truth"]
    truth = point_metrics(data.labels[truth_rows], probs[truth_rows])
    log(f"B: true accuracy {truth['accuracy']:.4f} on {len(truth_rows)} held-out images")
    hits = {u: {m: 0 for m in METRICS} for u in ("image", "patient")}
    widths = {u: {m: [] for m in METRICS} for u in ("image", "patient")}
    points = []
    for r in range(args.reps):
        rows = blocks[r]
        y, p = data.labels[rows], probs[rows]
        points.append(point_metrics(y, p)["accuracy"])
        for unit, groups in (("image", None), ("patient", data.groups[rows])):
            ci = metric_intervals(y, p, groups, resamples=args.resamples, seed=r)
            for m in METRICS:
                hits[unit][m] += ci[m][0] <= truth[m] <= ci[m][1]
                widths[unit][m].append(ci[m][1] - ci[m][0])
        if (r + 1) % 100 == 0:
            log(f"B: {r + 1} repetitions, coverage of accuracy by image {hits['image']['accuracy'] / (r + 1):.3f}, "
                f"by patient {hits['patient']['accuracy'] / (r + 1):.3f}")
    reps = args.reps
    return {"truth": {m: truth[m] for m in METRICS}, "truth_images": int(len(truth_rows)),
            "test_images": int(len(blocks[0])), "test_patients": int(len(np.unique(data.groups[blocks[0]]))),
            "reps": reps, "resamples": args.resamples,
            "accuracy_sd_across_reps": float(np.std(points, ddof=1)),
            **{unit: {m: {"coverage": hits[unit][m] / reps,
                          "se": float(np.sqrt(hits[unit][m] / reps * (1 - hits[unit][m] / reps) / reps)),
                          "mean_width": float(np.mean(widths[unit][m]))} for m in METRICS}
               for unit in ("image", "patient")}}


# ---- C: shift-test false alarms -----------------------------------------------------------------------------------


def false_alarms(data: ImageDataset, features: np.ndarray, blocks: dict, args, reps: int, what: str) -> dict:
    """Rejections of the within-class decision over `reps` repetitions (false alarms, or power with shifted test
    patients)."""
    pool = np.flatnonzero(data.splits != "test")
    cfg = AuditConfig(permutations=199, alpha=args.alpha)
    alarms = {"image": 0, "patient": 0}
    for r in range(reps):
        rng = np.random.default_rng(10_000 + r)
        reference = []
        for c in (0, 1):  # 60 patients per class of the pool: 50 train, 10 val
            patients = rng.choice(np.unique(data.groups[pool][data.labels[pool] == c]), 60, replace=False)
            reference.append((pool[np.isin(data.groups[pool], patients[:50])], "train"))
            reference.append((pool[np.isin(data.groups[pool], patients[50:])], "val"))
        rows = np.concatenate([idx for idx, _ in reference] + [blocks[r]])
        splits = np.concatenate([np.full(len(idx), s, dtype=object) for idx, s in reference]
                                + [np.full(len(blocks[r]), "test", dtype=object)])
        for unit in ("image", "patient"):
            subset = ImageDataset(images=np.zeros((len(rows), 1, 1), np.uint8), labels=data.labels[rows],
                                  class_names=data.class_names, splits=splits,
                                  groups=None if unit == "image" else data.groups[rows])
            result, _ = shift_tests(subset, features[rows], cfg.model_copy(update={"seed": r}))
            alarms[unit] += bool(result["within_class"]["reject"])
        if (r + 1) % 50 == 0:
            log(f"C: {r + 1} repetitions, {what} by image {alarms['image']}, by patient {alarms['patient']}")
    bound = args.alpha + 2 * np.sqrt(args.alpha * (1 - args.alpha) / reps)
    return {"reps": reps, "alpha": args.alpha, "bound": float(bound), "permutations": cfg.permutations,
            **{unit: {"alarms": n, "rate": n / reps, "se": float(np.sqrt(n / reps * (1 - n / reps) / reps))}
               for unit, n in alarms.items()}}


# ---- report ------------------------------------------------------------------------------------------------------


def table(result: dict) -> str:
    lines = ["| measure | by image | by patient |", "|---|---|---|"]
    if "val" in result:
        lines += _table_a(result["val"])
    if "coverage" in result:
        lines += _table_b(result["coverage"])
    if "shift" in result:
        lines += _table_c(result["shift"], result.get("power"))
    return "\n".join(lines)


def _table_a(a: dict) -> list[str]:
    lines = []
    for prefix, model in (("", "linear head"), ("nn_", "1-nearest neighbour")):
        for key, name in (("val", "val accuracy"), ("test", "test accuracy (new patients)"), ("gap", "val − test")):
            image, patient = a["image"][prefix + key], a["patient"][prefix + key]
            lines.append(f"| A. {model}: {name}, val carved | {image['mean']:.3f} ± {image['sd']:.3f} | "
                         f"{patient['mean']:.3f} ± {patient['sd']:.3f} |")
    r = a["resplit"]
    lines.append(f"| A. re-split val − test gap (original {r['original_gap']:+.3f}, R = {r['resplits']}) | "
                 f"{r['image']['gap']['mean']:+.3f} ± {r['image']['gap']['sd']:.3f} | "
                 f"{r['patient']['gap']['mean']:+.3f} ± {r['patient']['gap']['sd']:.3f} |")
    return lines


def _table_b(b: dict) -> list[str]:
    lines = []
    patients = f"{b['test_patients']} patients ({b['test_images']} images)"
    for m in METRICS:
        cells = [f"{b[u][m]['coverage']:.3f} ± {b[u][m]['se']:.3f} (width {b[u][m]['mean_width']:.3f})"
                 for u in ("image", "patient")]
        lines.append(f"| B. 95 % CI coverage of {m}, {patients} per test set (mean width) | {cells[0]} | "
                     f"{cells[1]} |")
    return lines


def _table_c(c: dict, power: dict | None) -> list[str]:
    cells = [f"{c[u]['alarms']}/{c['reps']} = {c[u]['rate']:.3f} ± {c[u]['se']:.3f}" for u in ("image", "patient")]
    lines = [f"| C. shift-test false alarms at alpha {c['alpha']} (bound {c['bound']:.3f}) | {cells[0]} | {cells[1]} |"]
    if power:
        cells = [f"{power[u]['alarms']}/{power['reps']} = {power[u]['rate']:.3f}" for u in ("image", "patient")]
        lines.append(f"| C. power against an acquisition shift | {cells[0]} | {cells[1]} |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        data, features = phantoms(args, Path(tmp) / "phantoms", held_out_patients(args))
        blocks = held_out_blocks(data, args, args.truth_patients)
        result = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
                  "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "images": int(len(data.labels)), "seconds_setup": time.perf_counter() - start}
        if "A" in args.parts:
            result["val"] = val_carving(data, features, blocks, args)
        if "B" in args.parts:
            result["coverage"] = coverage(data, features, blocks, args)
        if "C" in args.parts:
            result["shift"] = false_alarms(data, features, blocks, args, args.shift_reps, "false alarms")
            del data, features, blocks
            shifted, features = phantoms(args, Path(tmp) / "shifted", 100 + args.power_reps * args.test_patients,
                                         shift="acquisition")
            blocks = held_out_blocks(shifted, args, 0)
            result["power"] = false_alarms(shifted, features, blocks, args, args.power_reps, "detections")
    result["seconds"] = time.perf_counter() - start
    text = json.dumps(result, indent=2)
    print(text)
    print(table(result))
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
