"""Two-sample shift tests between train+val and test on backbone embeddings, pooled and within every class, plus
the class-balance difference on its own (chi-square).

Each scope (all images, or one class) is reduced to whitened PCA components fitted on that scope's images without
looking at the split labels, so every test below stays an exact permutation (or rank) test:
- classifier two-sample test: a ridge domain classifier, k-fold out-of-fold scores, AUC, permutation p-value;
- MMD² (unbiased) with an RBF kernel at the median-heuristic bandwidth, permutation p-value;
- Kolmogorov-Smirnov on each of the leading components, Bonferroni over components.
The image-shift decision uses only the within-class tests (a different class balance is not an image shift):
Bonferroni over the tested classes per test, then over the three tests, so its false-positive rate is at most alpha.

With patient groups the unit is the patient: the classifier's folds keep each patient's images together (GroupKFold),
permutations move whole patients between the sides (a patient's images on one side are one block), KS gets a
permutation p-value from the same block permutations, and the class balance is counted in patients. Images of one
patient resemble each other, so image-level folds let the classifier recognise patients and image-level permutations
build a null that is too narrow: both raise false alarms that no shift explains (docs/patients.md measures them).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import GroupKFold, KFold

from xferlab.audit.common import bonferroni, domain_masks, permutation_p, size_problem, skipped
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.groups import patients_of
from xferlab.evaluation.metrics import mann_whitney_auc

METHODS = ("classifier", "mmd", "ks")

# Whitened components have unit variance, so a ridge penalty of 1 is negligible against n ≥ 20 images per fold: the
# classifier is essentially least-squares LDA, regularised only enough to stay stable when a component is degenerate.
RIDGE_ALPHA = 1.0

# Above this many images in a scope the tests run on a random subsample (both sides in proportion): the kernel matrix
# and the N × (B+1) permutation products grow as N², and 3000 images already detect shifts far smaller than a site
# change. Subsampling images independently of their content keeps the tests exact.
MAX_SCOPE_IMAGES = 3000


def representation(embeddings: np.ndarray, components: int, seed: int) -> np.ndarray:
    """Whitened PCA components of one scope, fitted on all its images (label-free, so permutation-invariant)."""
    k = int(min(components, embeddings.shape[1], embeddings.shape[0] - 1))
    return PCA(n_components=k, whiten=True, random_state=seed).fit_transform(embeddings.astype(np.float64))


def label_matrix(is_target: np.ndarray, permutations: int, rng: np.random.Generator,
                 blocks: np.ndarray | None = None) -> np.ndarray:
    """N × (B+1) 0/1 matrix: column 0 the observed test indicator, columns 1..B independent permutations of it.

    With `blocks` (each image's block: a patient's images on one side, `patient_blocks`), whole blocks are permuted,
    so every column keeps each patient's images together; the number of test images then varies by column."""
    y = is_target.astype(np.float64)
    if blocks is None:
        permuted = rng.permuted(np.tile(y, (permutations, 1)), axis=1)
        return np.column_stack([y, permuted.T])
    block_side = np.zeros(int(blocks.max()) + 1)
    block_side[blocks] = y
    permuted = rng.permuted(np.tile(block_side, (permutations, 1)), axis=1)
    return np.column_stack([y, permuted[:, blocks].T])


def patient_blocks(groups: np.ndarray, is_target: np.ndarray) -> np.ndarray:
    """Each image's block, numbered 0..: the images of one patient on one side (a patient with images on both sides,
    a leak, is two blocks)."""
    patient = np.unique(groups, return_inverse=True)[1].ravel()
    return np.unique(patient * 2 + is_target.astype(np.int64), return_inverse=True)[1].ravel()


def out_of_fold_scores(z: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold ridge-regression scores for every label column at once (N × columns); with `groups`, folds of
    whole patients (GroupKFold, shuffled with `seed`).

    scikit-learn would refit the classifier for each of the B permutations (B × folds fits, ~10 ms each). With a
    ridge classifier and folds drawn without the labels, the held-out predictions are a fixed linear map of the
    training labels, so all B permutations cost one matrix product per fold. Column by column the result equals
    `cross_val_predict(Ridge(alpha=RIDGE_ALPHA), z, y, cv=KFold(folds, shuffle=True, random_state=seed))`.
    """
    scores = np.empty(labels.shape)
    eye = RIDGE_ALPHA * np.eye(z.shape[1])
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed) if groups is None else \
        GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(z, groups=groups):
        mean = z[train].mean(axis=0)
        centred = z[train] - mean
        hat = (z[test] - mean) @ np.linalg.solve(centred.T @ centred + eye, centred.T)  # n_test × n_train
        # the intercept is the training mean of y: prediction = hat @ (y - ȳ) + ȳ
        hat += (1.0 - hat.sum(axis=1, keepdims=True)) / len(train)
        scores[test] = hat @ labels[train]
    return scores


def classifier_test(z: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                    groups: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Classifier two-sample test: cross-validated domain-classifier AUC and its permutation p-value (folds of whole
    patients with `groups`).

    Returns the result and the observed out-of-fold scores (how test-like each image looks).
    """
    units = len(z) if groups is None else len(np.unique(groups))
    folds = int(min(folds, units // 2 if groups is None else units))
    scores = out_of_fold_scores(z, labels, folds, seed, groups)
    aucs = mann_whitney_auc(scores, labels.astype(bool), axis=0)  # per column: its own (permuted) labels
    null = aucs[1:]
    result = {"statistic": "AUC", "auc": float(aucs[0]), "p": permutation_p(aucs[0], null),
              "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)), "folds": folds,
              "permutations": len(null)}
    return result, scores[:, 0]


def median_bandwidth(sq_dist: np.ndarray) -> float:
    """Median heuristic (Gretton et al. 2012): sigma = median distance between distinct points."""
    off_diagonal = sq_dist[~np.eye(len(sq_dist), dtype=bool)]
    return float(np.sqrt(max(np.median(off_diagonal), 1e-12)))


def mmd_test(z: np.ndarray, labels: np.ndarray) -> dict:
    """Unbiased MMD² between the two sides of every label column, RBF kernel at the median-heuristic bandwidth.

    Written here rather than imported: the maintained MMD tests (hyppo, alibi-detect) bring numba or a deep-learning
    backend of their own for twenty lines of numpy. Every permutation reuses the one kernel matrix: the block sums
    are quadratic forms in the 0/1 label column, so all B columns cost one matrix product.
    """
    sq = euclidean_distances(z, squared=True)
    sigma = median_bandwidth(sq)
    kernel = np.exp(-sq / (2.0 * sigma**2))
    row_sums = kernel.sum(axis=1)
    total = row_sums.sum()
    s = labels  # 1 = test (x), 0 = reference (y)
    sks = (s * (kernel @ s)).sum(axis=0)  # sum of k over test-test pairs, diagonal included
    sk1 = s.T @ row_sums  # sum of k over test-anything pairs
    m = s.sum(axis=0)  # per column: block permutations move whole patients
    n = len(s) - m
    diag = 1.0  # k(x, x) of an RBF kernel
    kxx = (sks - m * diag) / (m * (m - 1))
    kyy = (total - 2 * sk1 + sks - n * diag) / (n * (n - 1))
    kxy = (sk1 - sks) / (m * n)
    mmd2 = kxx + kyy - 2 * kxy
    null = mmd2[1:]
    return {"statistic": "MMD² (unbiased)", "mmd2": float(mmd2[0]), "p": permutation_p(mmd2[0], null),
            "bandwidth": sigma, "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "permutations": len(null)}


def ks_test(z: np.ndarray, is_target: np.ndarray, components: int) -> dict:
    """Two-sample KS on each leading component; the scope's p-value is Bonferroni over the components tested."""
    k = min(components, z.shape[1])
    results = [stats.ks_2samp(z[is_target, j], z[~is_target, j]) for j in range(k)]
    pvalues = [float(r.pvalue) for r in results]
    return {"statistic": "KS D per component", "d": [float(r.statistic) for r in results], "p_per_component": pvalues,
            "p": bonferroni(pvalues), "components": k}


def ks_permutation_test(z: np.ndarray, labels: np.ndarray, components: int) -> dict:
    """Two-sample KS statistic D on each leading component with a permutation p-value from the columns of `labels`
    (block permutations keep patients whole, where scipy's KS p-value assumes independent images); Bonferroni over
    the components tested. All columns at once: one sort per component, cumulative counts per column."""
    k = min(components, z.shape[1])
    n1 = labels.sum(axis=0)
    n0 = len(labels) - n1
    d_observed, pvalues = [], []
    for j in range(k):
        order = np.argsort(z[:, j], kind="stable")
        values = z[order, j]
        last = np.r_[values[1:] != values[:-1], True]  # the empirical CDFs step at the end of each run of ties
        ones = np.cumsum(labels[order], axis=0)[last]
        zeros = np.arange(1, len(z) + 1)[last, None] - ones
        d = np.abs(ones / n1 - zeros / n0).max(axis=0)
        d_observed.append(float(d[0]))
        pvalues.append(permutation_p(d[0], d[1:]))
    return {"statistic": "KS D per component", "d": d_observed, "p_per_component": pvalues, "p": bonferroni(pvalues),
            "components": k, "permutations": labels.shape[1] - 1}


def _subsample(is_target: np.ndarray, rng: np.random.Generator, blocks: np.ndarray | None = None) -> np.ndarray:
    """Indices of the scope's images to test: all of them, or a proportional random subsample above the cap (of
    whole blocks, a patient's images on one side, with `blocks`)."""
    idx = np.arange(len(is_target))
    if len(idx) <= MAX_SCOPE_IMAGES:
        return idx
    fraction = MAX_SCOPE_IMAGES / len(idx)
    if blocks is None:
        parts = [rng.choice(idx[side], size=max(1, round(fraction * side.sum())), replace=False)
                 for side in (is_target, ~is_target)]
        return np.sort(np.concatenate(parts))
    sizes = np.bincount(blocks)
    parts = []
    for side in (is_target, ~is_target):
        order = rng.permutation(np.unique(blocks[side]))
        count = int(np.searchsorted(np.cumsum(sizes[order]), fraction * side.sum())) + 1
        parts.append(idx[side & np.isin(blocks, order[:count])])
    return np.sort(np.concatenate(parts))


def scope_tests(embeddings: np.ndarray, rows: np.ndarray, is_target: np.ndarray, cfg: AuditConfig, seed: int,
                where: str, groups: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """All three tests on one scope, the embeddings' `rows` (is_target: which of them are test images; `groups`:
    their patients, which makes folds and permutations patient-wise). Returns the result and per-image out-of-fold
    domain scores (NaN if skipped). Only the tested rows are gathered: a copy of a scope's embeddings is 1.2 GB at
    230,000 images."""
    n_target = int(is_target.sum())
    n_ref = len(is_target) - n_target
    scores = np.full(len(is_target), np.nan)
    problem = size_problem(n_ref, n_target, where)
    if not problem and groups is not None:  # block permutations move patients: count them
        problem = size_problem(len(np.unique(groups[~is_target])), len(np.unique(groups[is_target])), where,
                               unit="patient")
    if problem:
        return skipped(problem, n_ref=n_ref, n_test=n_target), scores
    rng = np.random.default_rng(seed)
    blocks = None if groups is None else patient_blocks(groups, is_target)
    keep = _subsample(is_target, rng, blocks)
    z = representation(embeddings[rows[keep]], cfg.components, seed)
    if blocks is not None:
        blocks = np.unique(blocks[keep], return_inverse=True)[1].ravel()  # renumbered among the tested images
    labels = label_matrix(is_target[keep], cfg.permutations, rng, blocks)
    patients = None if groups is None else groups[keep]
    classifier, oof = classifier_test(z, labels, cfg.folds, seed, patients)
    scores[keep] = oof
    ks = ks_test(z, is_target[keep], cfg.ks_components) if groups is None else \
        ks_permutation_test(z, labels, cfg.ks_components)
    result = {"status": "ok", "n_ref": n_ref, "n_test": n_target, "n_tested": len(keep), "components": z.shape[1],
              "unit": "image" if groups is None else "patient",
              "patients": None if groups is None else int(len(np.unique(patients))),
              "classifier": classifier, "mmd": mmd_test(z, labels), "ks": ks}
    return result, scores


def _decision(per_class: dict[str, dict], cfg: AuditConfig) -> dict:
    """Within-class evidence of an image shift: Bonferroni over classes per test, then over the tests."""
    tested = [name for name, r in per_class.items() if r["status"] == "ok"]
    untested = {name: r["reason"] for name, r in per_class.items() if r["status"] != "ok"}
    if not tested:
        unit = "patients" if any("patient" in r for r in untested.values()) else "images"
        return {"status": "skipped", "reason": f"no class has enough {unit} on both sides to test",
                "untested_classes": untested, "reject": None}
    methods = {m: bonferroni([per_class[c][m]["p"] for c in tested]) for m in METHODS}
    p = bonferroni(list(methods.values()))
    smallest = len(METHODS) * len(tested) / (cfg.permutations + 1)
    unit = per_class[tested[0]].get("unit", "image")
    who = "only the KS test can reject" if unit == "image" else "no test can reject (KS is a permutation test too)"
    note = (f"with {cfg.permutations} permutations the smallest adjusted permutation p-value is {smallest:.3g}, "
            f"above alpha {cfg.alpha}; {who}" if smallest > cfg.alpha else None)
    return {"status": "ok", "p": p, "reject": bool(p <= cfg.alpha), "alpha": cfg.alpha, "method_p": methods,
            "tested_classes": tested, "untested_classes": untested, "note": note, "unit": unit}


def shift_tests(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig) -> tuple[dict, np.ndarray]:
    """Pooled and per-class tests between train+val and test. Returns the results and per-image domain scores
    from the within-class classifiers (how test-like each image looks among its own class)."""
    ref, target = domain_masks(data)
    in_scope = ref | target
    seeds = np.random.SeedSequence(cfg.seed).generate_state(data.num_classes + 1)
    groups = data.groups
    pooled, _ = scope_tests(embeddings, np.flatnonzero(in_scope), target[in_scope], cfg, int(seeds[0]),
                            "all classes", None if groups is None else groups[in_scope])
    per_class, scores = {}, np.full(len(data.labels), np.nan)
    for c, name in enumerate(data.class_names):
        members = in_scope & (data.labels == c)
        per_class[name], class_scores = scope_tests(embeddings, np.flatnonzero(members), target[members], cfg,
                                                    int(seeds[c + 1]), f"class '{name}'",
                                                    None if groups is None else groups[members])
        scores[members] = class_scores
    result = {"comparison": "train+val vs test", "pooled": pooled, "per_class": per_class,
              "within_class": _decision(per_class, cfg)}
    return result, scores


def _class_counts(data: ImageDataset, mask: np.ndarray) -> np.ndarray:
    """Images per class on one side, or with groups patients per class (each by its majority label on that side)."""
    labels = data.labels[mask]
    if data.groups is not None and len(labels):
        labels = patients_of(data.groups[mask], labels).label
    return np.bincount(labels, minlength=data.num_classes)


def class_balance(data: ImageDataset, cfg: AuditConfig) -> dict:
    """Class proportions per split and the chi-square test of train+val against test (scipy's chi2_contingency);
    with patient groups the test counts patients (`unit`), the proportions stay images."""
    ref, target = domain_masks(data)
    counts = {s: np.bincount(data.labels[data.splits == s], minlength=data.num_classes).tolist()
              for s in ("train", "val", "test")}
    fractions = {s: (np.asarray(c) / max(1, sum(c))).tolist() for s, c in counts.items()}
    if not target.any():
        return skipped("the dataset has no test split", counts=counts, fractions=fractions)
    table = np.stack([_class_counts(data, m) for m in (ref, target)], axis=1)
    table = table[table.sum(axis=1) > 0]
    if len(table) < 2:
        return {"status": "ok", "counts": counts, "fractions": fractions, "chi2": 0.0, "p": 1.0, "dof": 0,
                "reject": False, "note": "a single class: nothing to compare"}
    res = stats.chi2_contingency(table)
    small = float(res.expected_freq.min()) < 5
    note = "an expected count is below 5, so the chi-square p-value is approximate" if small else None
    if small and table.shape == (2, 2):
        p = float(stats.fisher_exact(table).pvalue)
        note = "an expected count is below 5: Fisher's exact test instead of chi-square"
    else:
        p = float(res.pvalue)
    ref_frac = table[:, 0] / table[:, 0].sum()
    test_frac = table[:, 1] / table[:, 1].sum()
    return {"status": "ok", "counts": counts, "fractions": fractions, "chi2": float(res.statistic), "dof": int(res.dof),
            "p": p, "reject": bool(p <= cfg.alpha), "unit": "image" if data.groups is None else "patient",
            "max_fraction_difference": float(np.abs(test_frac - ref_frac).max()),
            "note": note}
