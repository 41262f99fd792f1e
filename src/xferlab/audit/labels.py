"""Label errors: which images' given labels the data contradicts, found with cleanlab's confident learning (Northcutt,
Jiang and Chuang 2021) on out-of-fold class probabilities of a linear probe, per split and class, ranked.

Every image gets class probabilities from a logistic regression that never saw it: K folds over all splits (by
patient when the data names patients, so that a patient's other images cannot vouch for a label), trained on the
audit's own per-image arrays, namely the backbone embeddings reduced to PROBE_COMPONENTS whitened principal components
(fitted without the labels) beside the scan's spectral descriptors (xferlab.audit.nearcopy). cleanlab then flags the
images whose given label the probabilities contradict more than the per-class confident thresholds allow
(`find_label_issues`, pruning by the estimated noise rate), and each image's label quality is its self-confidence, the
out-of-fold probability of its given label (`get_label_quality_scores`). The list ranks by it, lowest first, so
confident contradictions (the probe is sure of another class) come before hard images (the probe hesitates between
classes): a hard but correctly labelled image sits near 1 / classes, a flipped easy one near 0.

The probe is the audit's, not a study's model; what it flags is a list to look at, never a reason to report accuracy
without those images (`--exclude` re-runs a study without them, which the report names)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from scipy.stats import fisher_exact, mannwhitneyu
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler

import xferlab.audit.blocks as blocks
import xferlab.audit.verdict as verdict
from xferlab import artifacts, extras
from xferlab.audit.common import REFERENCE, TARGET, check_stop, skipped
from xferlab.audit.entry import AuditInputs, Computed, Finding
from xferlab.audit.figures import label_figure
from xferlab.audit.leakage import describe, split_positions
from xferlab.data.dataset import SPLITS, ImageDataset

# Measured on 2,400 phantoms at 64 px with 5 % of the test labels flipped (benchmarks/label_errors.py,
# docs/labels.md): a probe on the 1280 embedding dimensions alone reached 84 % test accuracy and put 10 of the 20
# flips among the 20 lowest-ranked test images; 64 whitened components beside the spectral descriptors reached 91 %
# and 15-16 of 20, at a fraction of the fitting time (the components also keep 58,000 images cheap).
PROBE_COMPONENTS = 64
# Logistic regression's inverse L2 penalty on those unit-variance features: strong enough that 60 features on a few
# hundred images per fold do not fit the noise (C = 0.1 and 1 ranked fewer flips first in the same measurement).
PROBE_C = 0.01
# The components are fitted on at most this many images (a seeded sample), then applied to all: at 58,000 images the
# PCA of every embedding was most of the check's time (docs/labels.md), and 64 components of 1280 settle long before.
PCA_SAMPLE = 10_000
# Each fold's probe trains on at most this many images of the other folds (a seeded sample; all of them below about
# 12,500 images): the check runs beside the statistics on the same cores, and at 58,000 images fitting on all ~46,000
# doubled its share of them (docs/labels.md).
FIT_SAMPLE = 10_000
MAX_LISTED = 200  # flagged images listed per split in audit.json; label_issues.csv holds all of them
FIGURE_ROWS = 2  # rows of the most doubtful test images in labels.png (cfg.thumbnails per row)


def probe_features(embeddings: np.ndarray, descriptors: np.ndarray | None, seed: int) -> np.ndarray:
    """Whitened principal components of the standardised embeddings, and the standardised descriptors beside them;
    fitted without the labels (the components on a seeded sample of PCA_SAMPLE images, applied to every image)."""
    n, d = embeddings.shape
    k = int(min(PROBE_COMPONENTS, d, n - 1))
    sample = np.random.default_rng(seed).permutation(n)[:PCA_SAMPLE] if n > PCA_SAMPLE else slice(None)
    scaler = StandardScaler().fit(embeddings[sample])
    pca = PCA(n_components=k, whiten=True, random_state=seed).fit(scaler.transform(embeddings[sample]))
    parts = [pca.transform(scaler.transform(embeddings))]
    if descriptors is not None:
        parts.append(StandardScaler().fit_transform(descriptors.astype(np.float32)))
    return np.hstack(parts).astype(np.float64)


# The fewest images (patients, with patient ids) a class may have: with fewer, a fold's probe trains on one or two of
# them and flags the class's other images wholesale (a class of 2 patients, of 1 and 19 images, had 19 of its 20
# images flagged).
MIN_PER_CLASS = 5


def smallest_class(labels: np.ndarray, groups: np.ndarray | None) -> int:
    """Images (patients with `groups`) of the smallest class."""
    if groups is None:
        return int(np.bincount(labels).min())
    return min(len(np.unique(groups[labels == c])) for c in np.unique(labels))


def fold_count(labels: np.ndarray, groups: np.ndarray | None, folds: int) -> int:
    """At most `folds`, and no more than the smallest class has images (patients with `groups`)."""
    return int(min(folds, smallest_class(labels, groups)))


def stratified_sample(rows: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """About `size` of `rows`, each class's share kept and every class present (at least one image): a rare class
    drawn at random could vanish from a probe's training sample and get probability 0 everywhere. (scikit-learn's
    train_test_split(stratify=) refuses classes of one image and samples too close to the whole.)"""
    picked = []
    for c in np.unique(labels):
        members = rows[labels == c]
        take = min(len(members), max(1, round(size * len(members) / len(rows))))
        picked.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(picked))


class Inconclusive(Exception):
    """The probe cannot say anything about the labels (a class missing from a fold, or no better than chance)."""


def chance_level(labels: np.ndarray, probs: np.ndarray, alpha: float) -> str | None:
    """Why the probe's disagreements say nothing about the labels, or None: for some class, the probe's probability
    of that class does not rank its images above the others' (one-sided Mann-Whitney test at alpha, every class
    required: an intersection-union test needs no adjustment). Ranking, not accuracy against the majority share: a
    strongly penalised probe on imbalanced classes rarely predicts the minority class yet ranks it well. Without
    this, features that carry no class signal had half of a 2,000-image dataset 'look mislabelled'. (With patient
    ids images are not independent, so the test is somewhat liberal.)"""
    tests = {}
    for c in np.unique(labels):
        mine = labels == c
        res = mannwhitneyu(probs[mine, c], probs[~mine, c], alternative="greater")
        tests[c] = (float(res.statistic / (mine.sum() * (~mine).sum())), float(res.pvalue))  # (AUROC, p)
    worst = max(tests, key=lambda c: tests[c][1])
    auc, p = tests[worst]
    if p <= alpha:
        return None
    return (f"inconclusive: the probe's out-of-fold probabilities do not separate class {int(worst)} from the others "
            f"(AUROC {auc:.3f}; one-sided Mann-Whitney p = {p:.3g}), so its disagreements with those labels say "
            "nothing about them")


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, classes: int, folds: int, seed: int,
                              groups: np.ndarray | None = None,
                              stop: threading.Event | None = None) -> np.ndarray:
    """N × classes probabilities, each row from a probe fitted on the other folds (StratifiedKFold; with `groups`,
    StratifiedGroupKFold, so a patient's images share a fold). `stop` (set by another thread, audit/run.py) ends it
    with Stopped before the next fold."""
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed) if groups is None else \
        StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(labels), classes))
    rng = np.random.default_rng(seed)
    for train, held in splitter.split(features, labels, groups):
        check_stop(stop, "the label check")
        if len(np.unique(labels[train])) < classes:  # that fold's probe could not give a class any probability
            raise Inconclusive("a fold's training side holds no image of a class (its patients are too few)")
        if len(train) > FIT_SAMPLE:  # a seeded sample of the other folds trains the probe; every held image is scored
            train = stratified_sample(train, labels[train], FIT_SAMPLE, rng)
        probe = LogisticRegression(C=PROBE_C, max_iter=1000).fit(features[train], labels[train])
        probs[np.ix_(held, probe.classes_)] = probe.predict_proba(features[held])
    return probs


def find_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged: N bool, label quality: N self-confidence scores) by cleanlab."""
    cleanlab_filter = extras.require("cleanlab.filter", "labels", "the audit's label check")
    cleanlab_rank = extras.require("cleanlab.rank", "labels", "the audit's label check")
    # n_jobs=1: the check runs on a thread beside others, where forking worker processes is unsafe
    flagged = cleanlab_filter.find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    return np.asarray(flagged, dtype=bool), cleanlab_rank.get_label_quality_scores(labels, probs,
                                                                                   method="self_confidence")


def image_ids(data: ImageDataset) -> list[str] | None:
    """Each image's id as `--exclude` takes it (data.meta['ids'], set by the sources), or None."""
    ids = data.meta.get("ids")
    return list(ids) if ids is not None and len(ids) == len(data.labels) else None


def _split_summary(data: ImageDataset, flagged: np.ndarray, split: str) -> dict:
    mask = data.splits == split
    per_class = {}
    for k, name in enumerate(data.class_names):
        m = mask & (data.labels == k)
        per_class[name] = {"images": int(m.sum()), "count": int(flagged[m].sum()),
                           "share": float(flagged[m].mean()) if m.any() else None}
    return {"images": int(mask.sum()), "count": int(flagged[mask].sum()),
            "share": float(flagged[mask].mean()) if mask.any() else None, "per_class": per_class}


def _listed(data: ImageDataset, flagged: np.ndarray, quality: np.ndarray, probs: np.ndarray, split: str,
            positions: np.ndarray, ids: list[str] | None) -> list[dict]:
    rows = np.flatnonzero(flagged & (data.splits == split))
    rows = rows[np.argsort(quality[rows], kind="stable")][:MAX_LISTED]
    out = []
    for i in rows:
        suggested = int(probs[i].argmax())
        entry = {**describe(data, i, positions), "given": data.class_names[data.labels[i]],
                 "suggested": data.class_names[suggested], "score": float(quality[i]),
                 "suggested_probability": float(probs[i, suggested])}
        if ids is not None:
            entry["id"] = ids[i]
        out.append(entry)
    return out


def _comparison(flagged: np.ndarray, splits: np.ndarray, alpha: float) -> dict:
    """Test's flagged share against train+val's: one-sided Fisher exact test (is test's share larger?)."""
    test, ref = splits == TARGET, np.isin(splits, REFERENCE)
    a, b = int(flagged[test].sum()), int(flagged[ref].sum())
    p = float(fisher_exact([[a, int(test.sum()) - a], [b, int(ref.sum()) - b]], alternative="greater")[1])
    return {"test": a, "train_val": b, "p": p, "alpha": alpha, "test_higher": bool(p <= alpha and a > 0)}


def label_audit(data: ImageDataset, embeddings: np.ndarray, descriptors: np.ndarray | None, folds: int, seed: int,
                alpha: float, stop: threading.Event | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The label check's record (per split and class: count, share, ranked list) and per-image arrays
    (label_quality, label_issue, suggested_label)."""
    counts = np.bincount(data.labels, minlength=data.num_classes)
    if (counts == 0).any() or data.num_classes < 2:
        return skipped("every class needs images for the probe"), {}
    if smallest_class(data.labels, data.groups) < MIN_PER_CLASS:
        unit = "patients" if data.groups is not None else "images"
        return skipped(f"a class has fewer than {MIN_PER_CLASS} {unit}, too few for out-of-fold probabilities"), {}
    k = fold_count(data.labels, data.groups, folds)
    features = probe_features(embeddings, descriptors, seed)
    try:
        probs = out_of_fold_probabilities(features, data.labels, data.num_classes, k, seed, data.groups, stop)
    except Inconclusive as why:
        return skipped(f"inconclusive: {why}"), {}
    useless = chance_level(data.labels, probs, alpha)
    if useless:
        return skipped(useless, probe_accuracy=float(np.mean(probs.argmax(1) == data.labels))), {}
    flagged, quality = find_issues(data.labels, probs)
    positions, ids = split_positions(data.splits), image_ids(data)
    present = [s for s in SPLITS if (data.splits == s).any()]
    components = features.shape[1] - (0 if descriptors is None else descriptors.shape[1])
    described = "" if descriptors is None else f" + {descriptors.shape[1]} spectral descriptors"
    record = {"status": "ok", "method": "cleanlab find_label_issues (prune_by_noise_rate); ranked by self-confidence",
              "probe": {"features": f"{components} whitened embedding components{described}",
                        "model": f"logistic regression, C = {PROBE_C}", "folds": k,
                        "accuracy": float(np.mean(probs.argmax(1) == data.labels))},
              "unit": "image" if data.groups is None else "patient",
              "per_split": {s: _split_summary(data, flagged, s) for s in present},
              "listed": {s: _listed(data, flagged, quality, probs, s, positions, ids) for s in present},
              "file": artifacts.LABEL_ISSUES_CSV}
    if (data.splits == TARGET).any():
        record["comparison"] = _comparison(flagged, data.splits, alpha)
    arrays = {"label_quality": quality.astype(np.float32), "label_issue": flagged,
              "suggested_label": probs.argmax(1).astype(np.int64)}
    return record, arrays


def compute(inputs: AuditInputs) -> Computed:
    record, arrays = label_audit(inputs.data, inputs.scan.embeddings, inputs.scan.descriptors, inputs.cfg.folds,
                                 inputs.cfg.seed, inputs.cfg.alpha, inputs.stop)
    return Computed(record, arrays)


# ------------------------------------------------------------------------------------------- verdict and report

HEADLINE = ("Read small test-accuracy differences with care: more of the test split's labels look wrong than the "
            "rest of the data's.")


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def finding(record: dict, audit: dict) -> Finding:
    """problem: test's flagged share above train+val's (one-sided Fisher exact test at alpha), unless the test images
    differ from train+val's (then a caution: the shift alone raises the share); ok otherwise: a share no larger than
    the rest of the data's, within chance, is what the probe's own errors reach on clean labels too (docs/labels.md).
    The count is said at every level."""
    if record.get("status") != "ok":
        return "caution", f"Labels: not checked ({record['reason']})."
    test = record["per_split"].get(TARGET)
    if not test:
        return "ok", "Labels: no test split to check."
    comparison = record["comparison"]
    ref = sum(record["per_split"][s]["count"] for s in REFERENCE if s in record["per_split"])
    ref_images = sum(record["per_split"][s]["images"] for s in REFERENCE if s in record["per_split"])
    by_patient = ", folds by patient" if record.get("unit") == "patient" else ""
    numbers = (f"against {_pct(ref / max(1, ref_images))} of train+val (one-sided Fisher exact p = "
               f"{comparison['p']:.3g}); cleanlab on the audit's own out-of-fold linear probe (accuracy "
               f"{record['probe']['accuracy']:.3f}{by_patient})")
    n = test["count"]
    plural = ("s", "") if n != 1 else ("", "s")
    head = f"Labels: {n} test image{plural[0]} ({_pct(test['share'])}) look{plural[1]} mislabelled"
    where = f"; listed in {record['file']}, most doubtful first" if n else ""
    if comparison["test_higher"] and verdict.shift_detected(audit):
        return "caution", (f"{head}, more than elsewhere ({numbers}){where}; but the test images differ from "
                           "train+val's (image shift), and a probe flags more of the images it fits worse, so this "
                           "is not told apart from the shift.")
    if comparison["test_higher"]:
        return "problem", f"{head}, more than elsewhere ({numbers}){where}."
    if n:
        return "ok", (f"{head} ({numbers}), not significantly more than elsewhere: the probe's own errors flag a "
                      f"few correctly labelled images at such rates on clean labels{where}.")
    return "ok", f"{head} ({numbers})."


def block(record: dict, audit: dict) -> blocks.Block:
    if record.get("status") != "ok":
        return blocks.Block("Label errors", [blocks.Text(f"Not run: {record['reason']}.")])
    rows = []
    for split, s in record["per_split"].items():
        rows.append([split, s["images"], s["count"], s["share"]])
        rows += [[f"{split}: {name}", c["images"], c["count"], c["share"]] for name, c in s["per_class"].items()]
    parts: list[blocks.Part] = [blocks.Table(["split / class", "images", "flagged", "share"], rows)]
    listed = record["listed"].get(TARGET, [])[:blocks.LISTED]
    if listed:
        parts.append(blocks.Items([f"test #{e['split_index']} ({e.get('file', e.get('id', e['index']))}): given "
                                   f"{e['given']}, suggested {e['suggested']} (probability of the given label "
                                   f"{e['score']:.2f})" for e in listed]))
    parts.append(blocks.Figure((audit.get("figures") or {}).get("labels"),
                               "the most doubtful test images with their given and suggested labels"))
    probe = record["probe"]
    parts.append(blocks.Text(
        f"Out-of-fold probabilities from a {probe['model']} on {probe['features']} ({probe['folds']} folds"
        f"{' by patient' if record.get('unit') == 'patient' else ''}), then cleanlab's confident learning; ranked by "
        f"the probability of the given label, lowest first, so confident contradictions precede hard images. Every "
        f"flagged image is in {record['file']} (an --exclude file for a re-run); the probe is the audit's, so "
        "accuracy without those images is not a result.", muted=True))
    return blocks.Block("Label errors", parts)


def _thumbnail_rows(data: ImageDataset, arrays: dict[str, np.ndarray], count: int) -> np.ndarray:
    rows = np.flatnonzero(arrays["label_issue"] & (data.splits == TARGET))
    return rows[np.argsort(arrays["label_quality"][rows], kind="stable")][:count]


def figures(inputs: AuditInputs, record: dict, arrays: dict, out: Path) -> dict:
    """label_issues.csv (every flagged image, ids as --exclude takes them) and labels.png (the most doubtful test
    images with both labels)."""
    if record.get("status") != "ok":
        return {"labels": None}
    data = inputs.data
    positions, ids = split_positions(data.splits), image_ids(data)
    rows = np.flatnonzero(arrays["label_issue"])
    rows = rows[np.lexsort((arrays["label_quality"][rows], [SPLITS.index(s) for s in data.splits[rows]]))]
    artifacts.write_label_issues(out, [
        {"id": ids[i] if ids is not None else "", "split": data.splits[i], "split_index": int(positions[i]),
         "index": int(i), "given": data.class_names[data.labels[i]],
         "suggested": data.class_names[arrays["suggested_label"][i]],
         "score": float(arrays["label_quality"][i])} for i in rows])
    shown = _thumbnail_rows(data, arrays, FIGURE_ROWS * inputs.cfg.thumbnails)
    return {"labels": label_figure(data, shown, arrays["suggested_label"], positions, inputs.cfg.thumbnails,
                                   out / "labels.png") if len(shown) else None}
