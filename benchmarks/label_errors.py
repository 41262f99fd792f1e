"""The audit's label check (issue 28) measured: planted label flips in the test split of the phantoms, and the seconds
the check adds to the audit. Not run by the tests; docs/labels.md holds the numbers.

    python benchmarks/label_errors.py flips --work /tmp/label_errors            # the detection table
    python benchmarks/label_errors.py flips --embeddings-only                    # the probe on embeddings alone
    python benchmarks/label_errors.py clean --seeds 10 --work /tmp/label_errors  # no flips, other phantom seeds
    python benchmarks/label_errors.py seconds --n 2400 --work /tmp/label_errors  # the audit with and without it
    python benchmarks/label_errors.py seconds --n 58000 --size 32 --work /tmp/label_errors
    python benchmarks/label_errors.py probes --work /tmp/label_errors            # other probes on the same draws

`flips`: phantoms at 64 px, 2,000 train-pool + 400 test images (1,000 + 200 per class), EfficientNet-Lite0 embeddings
(the audit's default backbone) and spectral descriptors computed once; then, per condition and draw, the test labels
are flipped at random (1 %, 5 %, 10 % of the test split, or 5 % all taken from one class) and the check's own function
(xferlab.audit.labels.label_audit) runs on the flipped labels. Reported per condition (mean and worst over the
draws): precision at k (k = flips planted: the share of the k lowest-ranked test images that are flips), recall of the
flagged test set, its size against k, and the verdict's level. The "hard" condition first replaces 20 test pneumonia
images by ambiguous but correctly labelled ones (the same patient rendered with and without its lesions, averaged:
lesions at half contrast), then plants 5 % flips elsewhere and counts the hard images among the k lowest ranked.

`clean`: the same phantoms drawn with other seeds and no flips: the verdict's level and the share flagged per seed
(what the check says about clean labels).

`probes`: at 5 % flips, the same draws with other probes on the same features in place of the check's logistic
regression (its C, a small MLP): precision at k, recall, the flagged count and the seconds per draw (the choice of
probe, measured).

`seconds`: the whole audit (benchmarks/audit_scale.py's `one`: --resplits 5 --permutations 200, CPU, one thread) with
the label check and with it removed from the registry, alternating, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SIZE, PER_CLASS, TEST_PER_CLASS = 64, 1000, 200
HARD = 20  # ambiguous, correctly labelled test images in the "hard" condition
CONDITIONS = {"no flips": 0.0, "1 %": 0.01, "5 %": 0.05, "10 %": 0.10, "5 %, one class": 0.05, "5 % + hard": 0.05}


def _dataset(work: Path, seed: int = 0):
    from xferlab.config import DataConfig
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.data.sources import load_dataset

    path = work / ("phantoms64" if seed == 0 else f"phantoms64-seed{seed}")
    if not (path / "phantoms.json").exists():
        generate_phantoms(path, size=SIZE, n_per_class=PER_CLASS, n_test_per_class=TEST_PER_CLASS, seed=seed)
    return load_dataset(DataConfig(path=path))


def _hard_images(count: int) -> np.ndarray:
    """`count` pneumonia phantoms with their lesions at half contrast: each patient rendered with and without its
    lesions (the same anatomy and noise) and averaged."""
    from xferlab.data.phantoms import render_phantom

    out = []
    for i in range(count):
        seed = 10_000 + i
        with_lesions, without = (render_phantom(np.random.default_rng(seed), SIZE, lesions,
                                                noise_rng=np.random.default_rng(seed + 1)) for lesions in (True, False))
        out.append(np.round((with_lesions.astype(np.float32) + without) / 2).astype(np.uint8))
    return np.stack(out)


def _features(data):
    from xferlab.audit.embed import embed_dataset
    from xferlab.audit.nearcopy import spectral_descriptors
    from xferlab.config import AuditConfig
    from xferlab.engine.accel import num_threads

    with num_threads(1):
        embeddings = embed_dataset(data, AuditConfig(device="cpu"), progress=False)
    return embeddings, spectral_descriptors(data.images)


def _plant(data, share: float, one_class: bool, rng: np.random.Generator, avoid: np.ndarray):
    test = np.setdiff1d(np.flatnonzero(data.splits == "test"), avoid)
    pool = test[data.labels[test] == 0] if one_class else test
    k = int(round(share * np.count_nonzero(data.splits == "test")))
    planted = np.sort(rng.choice(pool, k, replace=False))
    labels = data.labels.copy()
    labels[planted] = (labels[planted] + 1) % data.num_classes
    return replace(data, labels=labels), planted


def _measure(data, embeddings, descriptors, planted: np.ndarray, hard: np.ndarray) -> dict:
    from xferlab.audit.labels import finding, label_audit

    t = time.perf_counter()
    record, arrays = label_audit(data, embeddings, descriptors, folds=5, seed=0, alpha=0.05)
    seconds = time.perf_counter() - t
    test = np.flatnonzero(data.splits == "test")
    ranked = test[np.argsort(arrays["label_quality"][test], kind="stable")]
    flagged = test[arrays["label_issue"][test]]
    k = len(planted)
    audit = {"dataset": {"class_names": data.class_names}}
    return {"k": k, "precision_at_k": float(np.isin(ranked[:k], planted).mean()) if k else None,
            "recall": float(np.isin(planted, flagged).mean()) if k else None,
            "flagged": len(flagged), "flagged_share": len(flagged) / len(test),
            "hard_in_top_k": int(np.isin(ranked[:max(k, 1)], hard).sum()) if len(hard) else None,
            "level": finding(record, audit)[0], "probe_accuracy": record["probe"]["accuracy"],
            "train_val_share": record["comparison"]["train_val"] / int(np.count_nonzero(data.splits != "test")),
            "p": record["comparison"]["p"], "seconds": seconds}


def flips(args: argparse.Namespace) -> None:
    data = _dataset(args.work)
    embeddings, descriptors = _features(data)
    descriptors = None if args.embeddings_only else descriptors
    hard = np.flatnonzero((data.splits == "test") & (data.labels == 1))[:HARD]
    hard_data = None
    rows = {}
    for name, share in CONDITIONS.items():
        base, feats, avoid = data, (embeddings, descriptors), np.empty(0, dtype=np.int64)
        if "hard" in name:
            if hard_data is None:
                images = np.array(data.images)
                images[hard] = _hard_images(len(hard))
                hard_data = replace(data, images=images)
                hard_features = _features(hard_data)
                hard_features = (hard_features[0], None if args.embeddings_only else hard_features[1])
            base, feats, avoid = hard_data, hard_features, hard
        draws = []
        for draw in range(args.draws):
            planted_data, planted = _plant(base, share, "one class" in name, np.random.default_rng(draw), avoid)
            draws.append(_measure(planted_data, *feats, planted, avoid))
        rows[name] = draws
        print(json.dumps({"condition": name, **_summary(draws)}), flush=True)
    print(json.dumps({"cpu": _cpu(), "draws": args.draws, "rows": {k: _summary(v) for k, v in rows.items()}}))


def clean(args: argparse.Namespace) -> None:
    rows = []
    for seed in range(1, args.seeds + 1):
        data = _dataset(args.work, seed)
        row = {"seed": seed, **_measure(data, *_features(data), np.empty(0, dtype=np.int64), np.empty(0))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    levels = [r["level"] for r in rows]
    print(json.dumps({"cpu": _cpu(), "seeds": args.seeds, "levels": {k: levels.count(k) for k in set(levels)},
                      "flagged_share": _summary(rows)["flagged_share"], "train_val_share":
                      _summary(rows)["train_val_share"]}))


def _summary(draws: list[dict]) -> dict:
    out = {}
    for key in draws[0]:
        values = [d[key] for d in draws]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
        else:  # the verdict's levels, or None where a measure does not apply: how often each
            out[key] = {str(v): values.count(v) for v in dict.fromkeys(values)}
    return out


def _cpu() -> str:
    from xferlab.hardware import cpu_model

    return cpu_model()


def one(args: argparse.Namespace) -> None:
    """One audit (audit_scale.one) with or without the label check; its JSON line on stdout."""
    sys.path.insert(0, str(Path(__file__).parent))
    import audit_scale

    import xferlab.audit.checks as checks

    if args.without:
        checks.CHECKS.pop("labels")
    result = audit_scale.one(args.n, args.work, given_embeddings=False, threads=1, size=args.size)
    print(json.dumps({"labels": not args.without, **result}))


def seconds(args: argparse.Namespace) -> None:
    rows = []
    for repeat in range(args.repeats):
        for without in (False, True):
            cmd = [sys.executable, __file__, "one", "--n", str(args.n), "--size", str(args.size), "--work",
                   str(args.work)] + (["--without"] if without else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(json.dumps({"repeat": repeat, "labels": r["labels"], "wall_s": r["wall_s"],
                              "labels_s": r["steps_s"].get("labels"), "resplit_s": r["steps_s"].get("resplit"),
                              "steps_s": r["steps_s"]}), flush=True)
    with_, without_ = ([r["wall_s"] for r in rows if r["labels"] is flag] for flag in (True, False))
    print(json.dumps({"cpu": _cpu(), "n": args.n, "with_s": with_, "without_s": without_,
                      "ratio_of_medians": float(np.median(with_) / np.median(without_))}))


def probes(args: argparse.Namespace) -> None:
    """The check's pipeline (label_audit) at 5 % flips with its probe swapped for others on the same features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    import xferlab.audit.labels as labels

    data = _dataset(args.work)
    embeddings, descriptors = _features(data)
    candidates = {f"logistic regression, C = {c}": (lambda c=c: LogisticRegression(C=c, max_iter=1000))
                  for c in (0.003, 0.01, 0.03, 0.1)}
    candidates["MLP, 64 hidden units, alpha 1"] = lambda: MLPClassifier((64,), alpha=1.0, max_iter=300,
                                                                        random_state=0)
    planted = [_plant(data, 0.05, False, np.random.default_rng(draw), np.empty(0, dtype=np.int64))
               for draw in range(args.draws)]
    original = labels.LogisticRegression
    try:
        for name, make in candidates.items():
            labels.LogisticRegression = lambda make=make, **kwargs: make()  # the check builds its probe by this name
            draws = [_measure(flipped, embeddings, descriptors, flips, np.empty(0)) for flipped, flips in planted]
            print(json.dumps({"probe": name, **_summary(draws)}), flush=True)
    finally:
        labels.LogisticRegression = original
    print(json.dumps({"cpu": _cpu(), "draws": args.draws}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("flips")
    p.add_argument("--work", type=Path, default=Path("/tmp/label_errors"))
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--embeddings-only", action="store_true", help="the probe without the spectral descriptors")
    p.set_defaults(fn=flips)
    p = sub.add_parser("probes")
    p.add_argument("--work", type=Path, default=Path("/tmp/label_errors"))
    p.add_argument("--draws", type=int, default=5)
    p.set_defaults(fn=probes)
    p = sub.add_parser("clean")
    p.add_argument("--work", type=Path, default=Path("/tmp/label_errors"))
    p.add_argument("--seeds", type=int, default=10)
    p.set_defaults(fn=clean)
    for name, fn in (("seconds", seconds), ("one", one)):
        p = sub.add_parser(name)
        p.add_argument("--n", type=int, default=2400)
        p.add_argument("--size", type=int, default=64)
        p.add_argument("--work", type=Path, default=Path("/tmp/label_errors"))
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--without", action="store_true")
        p.set_defaults(fn=fn)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.fn(args)


if __name__ == "__main__":
    main()
