"""Nearest neighbours for the leakage search without an all-pairs matrix: candidates from a KD-tree over a low-
dimensional orthonormal projection, then exact distances on those candidates only.

An orthonormal projection never lengthens a difference vector, so the projected distance is a lower bound of the
true one: the true nearest neighbour is missed only when more than CANDIDATES other points project closer. Every
metric is mapped to a Euclidean one first (Hamming on bits b: |(2b-1)-(2c-1)|² = 4·Hamming; cosine on unit vectors:
|a-c|² = 2(1-cos)). `exact=True` is the all-pairs reference (scikit-learn's brute search, computed in chunks).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

METRICS = ("hamming", "cosine", "euclidean")
# Projected dimensions and candidates: raised from 16 / 16 after a measurement on 6,000 phantoms at 32 px, where the
# within-split nearest neighbour by spectral descriptor was the exact one for 36 % of images at 16 / 16 and 71 % at
# 24 / 32 (planted copies, far closer than any neighbour, were found either way). `benchmarks/audit_scale.py recall`
# measures recall against the all-pairs search.
PROJECTED_DIMS = 24
# Projected neighbours re-ranked exactly per query.
CANDIDATES = 32
# Rows the projection is fitted on: the leading directions of a few thousand rows are those of the whole set.
PCA_SAMPLE = 20_000
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _euclidean_form(features: np.ndarray, metric: str) -> np.ndarray:
    if metric == "hamming":
        return np.where(features, 1.0, -1.0).astype(np.float32)
    x = np.asarray(features, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


# Query rows whose candidates are gathered at once: 2048 × 16 candidates × 1280 float32 features is 168 MB.
_EXACT_CHUNK = 2048


def _exact_rows(ref: np.ndarray, query: np.ndarray, metric: str, cand: np.ndarray) -> np.ndarray:
    """Exact distances between each query row and its candidate rows of `ref` (Q × K), in the metric's unit
    (Hamming: a fraction of the bits, as scikit-learn reports it), a block of queries at a time."""
    return np.concatenate([_exact_block(ref, query[i:i + _EXACT_CHUNK], metric, cand[i:i + _EXACT_CHUNK])
                           for i in range(0, len(cand), _EXACT_CHUNK)] or [np.empty((0, cand.shape[1]))])


def _exact_block(ref: np.ndarray, query: np.ndarray, metric: str, cand: np.ndarray) -> np.ndarray:
    if metric == "hamming":
        differ = np.packbits(ref[cand], axis=2) ^ np.packbits(query, axis=1)[:, None, :]
        return _POPCOUNT[differ].sum(axis=2, dtype=np.int64) / ref.shape[1]
    r, q = _euclidean_form(ref[cand.ravel()], metric), _euclidean_form(query, metric)
    r = r.reshape(*cand.shape, -1)
    if metric == "cosine":
        return np.clip(1.0 - np.einsum("qkd,qd->qk", r, q), 0.0, 2.0)
    return np.linalg.norm(r - q[:, None, :], axis=2)


def _projection(x: np.ndarray, seed: int) -> np.ndarray:
    """x projected on its leading PROJECTED_DIMS principal directions (orthonormal), fitted on a sample."""
    if x.shape[1] <= PROJECTED_DIMS:
        return x
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), PCA_SAMPLE, replace=False)] if len(x) > PCA_SAMPLE else x
    pca = PCA(PROJECTED_DIMS, svd_solver="randomized", random_state=seed).fit(sample)
    return pca.transform(x).astype(np.float32)


def nearest(ref: np.ndarray, metric: str, query: np.ndarray | None = None, exact: bool = False,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index (into `ref`) of the nearest point of `ref` for each query row; without `query`, each
    point's nearest *other* point of `ref`. Distances in scikit-learn's units for the metric."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if exact or len(ref) <= CANDIDATES + 1:
        nn = NearestNeighbors(n_neighbors=1, metric=metric, algorithm="brute").fit(ref)
        dist, idx = nn.kneighbors(query, n_neighbors=1)
        return dist[:, 0], idx[:, 0]
    x_ref = _euclidean_form(ref, metric)
    x_query = None if query is None else _euclidean_form(query, metric)
    stacked = x_ref if x_query is None else np.concatenate([x_ref, x_query])
    projected = _projection(stacked, seed)
    p_ref, p_query = projected[:len(ref)], (None if query is None else projected[len(ref):])
    k = min(CANDIDATES, len(ref) - (query is None))
    tree = NearestNeighbors(n_neighbors=k, algorithm="kd_tree").fit(p_ref)
    cand = tree.kneighbors(p_query, n_neighbors=k, return_distance=False)
    dist = _exact_rows(ref, ref if query is None else query, metric, cand)
    best = np.argmin(dist, axis=1)  # first minimum: ties go to the projected-nearer candidate
    rows = np.arange(len(cand))
    return dist[rows, best], cand[rows, best]
