"""Nearest neighbours for the leakage search without an all-pairs matrix: candidates from a faiss HNSW graph
(hierarchical navigable small world: O(n log n) to build, about O(log n) per query), then exact distances on
those candidates only.

A `NeighbourSearch` holds one feature matrix in one metric and a graph per named group of rows (the audit's splits),
built once and searched by every query of that group: each image's nearest other image of its own split (the
calibration sample) and each val/test image's nearest image of the splits it is compared with. Perceptual-hash bits
are searched in Hamming space as packed bytes (faiss's binary HNSW: exact Hamming distances, no float form). Float
features (cosine embeddings as unit vectors, Euclidean descriptors) are projected on their PROJECTED_DIMS leading
principal directions for the graph, and the candidates it returns (SEARCH) are re-ranked by the exact distance in the
full space. HNSW is approximate: `benchmarks/audit_scale.py recall` measures how often it returns the exact nearest
neighbour, and `exact=True` (scikit-learn's brute search) is the all-pairs reference the tests compare it with.

Each graph is built on one thread (the groups' graphs side by side): faiss inserts one graph's points in parallel in
an order that changes from run to run, and the audit's findings must not; searches use every thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

METRICS = ("hamming", "cosine", "euclidean")
# Per metric: graph links per point (faiss's M), the candidate-list size while searching (efSearch) and the
# candidates kept (re-ranked exactly for float features; for Hamming the graph's distances are exact already); the
# candidate-list size while building (efConstruction) is BUILD_CANDIDATES for all. Chosen from recall@1 against the
# all-pairs search (`python benchmarks/audit_scale.py recall`, docs/audit-at-scale.md): efConstruction 40 recalled as
# 80 did at 28,000 phantoms (hashes, descriptors, embeddings 0.9987 / 0.9957 / 0.9999 against 0.9986 / 0.9948 /
# 0.9999) and built the 58,000-image train graphs in 0.64-0.73 of the time; at 58,000 images (24,560 queries per
# measure) the spectral descriptors (whose intrinsic dimension is high: 95 principal directions hold 95 % of their
# variance) recalled 0.9877 with M 32 and efSearch 128, 0.9974 with M 48 and efSearch 256.
BUILD_CANDIDATES = 40
SEARCH = {"hamming": (32, 64, 16), "cosine": (32, 64, 32), "euclidean": (48, 256, 64)}  # (M, efSearch, candidates)
# Float features are searched on this many leading principal directions, then re-ranked in full.
PROJECTED_DIMS = 64
# Rows the projection is fitted on, and power iterations: the leading directions of a few thousand rows are those of
# the whole set, and the projection only proposes candidates (the exact re-ranking decides).
PCA_SAMPLE, PCA_ITERATIONS = 4096, 3
# Query rows re-ranked at once: 128 × 32 candidates × 1280 float32 features is 21 MB (a 1,024-row block with 64
# candidates measured 2.5× slower: the gather, not the arithmetic, is the cost).
_RERANK_CHUNK = 128
_PROJECT_CHUNK = 8192  # rows projected at once: bounds the float64 temporaries of PCA.transform (84 MB at 1280 columns)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


class NeighbourSearch:
    """Nearest neighbours among the rows of `features` (N × D; bool bits for Hamming) in `metric`, between named
    groups of rows (`groups`: name -> row indices). Distances are in scikit-learn's units (Hamming: the fraction of
    bits that differ; cosine: 1 - cos; Euclidean: the L2 norm)."""

    def __init__(self, features: np.ndarray, metric: str, groups: Mapping[str, np.ndarray], exact: bool = False,
                 seed: int = 0):
        _check_metric(metric)
        self.metric, self.exact, self.seed = metric, exact, seed
        self.groups = {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
        self.features = features
        self._graphs: dict[str, object] = {}
        if exact:
            return
        if metric == "hamming":
            self.codes = np.packbits(np.asarray(features, dtype=bool), axis=1)  # zero-padded: Hamming unchanged
            self.bits = features.shape[1]
        else:
            self.x = np.asarray(features, dtype=np.float32)
            # cosine: unit rows without a unit copy of the matrix (N × 1280 float32 is 1.2 GB at 230,000 images)
            self.norms = np.sqrt(np.einsum("ij,ij->i", self.x, self.x)) if metric == "cosine" else None
            self.projected = self._project()

    def nearest(self, query_rows: np.ndarray, groups: Sequence[str], exclude_self: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """For each query row, the distance to and row index of its nearest row among `groups` (the query row itself
        left out with `exclude_self`)."""
        query_rows = np.asarray(query_rows, dtype=np.int64)
        best_d = np.full(len(query_rows), np.inf)
        best_i = np.full(len(query_rows), -1, dtype=np.int64)  # -1 (and an infinite distance): none found
        for name in groups:
            rows = self.groups[name]
            if len(rows) == 0:
                continue
            d, i = (self._exact(query_rows, rows, exclude_self) if self.exact
                    else self._indexed(query_rows, name, exclude_self))
            better = d < best_d  # ties keep the earlier group
            best_d[better], best_i[better] = d[better], i[better]
        return best_d, best_i

    # -- all pairs (the reference) --------------------------------------------------------------------------------

    def _exact(self, query_rows: np.ndarray, rows: np.ndarray, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
        k = min(len(rows), 2 if exclude_self else 1)
        nn = NearestNeighbors(n_neighbors=k, metric=self.metric, algorithm="brute").fit(self.features[rows])
        dist, idx = nn.kneighbors(self.features[query_rows], n_neighbors=k)
        found = rows[idx]
        if exclude_self:
            dist = np.where(found == query_rows[:, None], np.inf, dist)
        pick = dist.argmin(axis=1)
        n = np.arange(len(query_rows))
        return dist[n, pick], found[n, pick]

    # -- indexed ---------------------------------------------------------------------------------------------------

    def _project(self) -> np.ndarray:
        """The float rows (unit rows for cosine) on their PROJECTED_DIMS leading principal directions, a chunk at a
        time; the rows themselves when they have no more dimensions than that, or too few rows to fit directions."""
        def unit(rows: slice | np.ndarray) -> np.ndarray:
            x = self.x[rows]
            return x / np.maximum(self.norms[rows], 1e-12)[:, None] if self.norms is not None else x

        n, d = self.x.shape
        if d <= PROJECTED_DIMS or n <= 2 * PROJECTED_DIMS:
            return np.ascontiguousarray(unit(slice(None)), dtype=np.float32)
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(n, PCA_SAMPLE, replace=False)) if n > PCA_SAMPLE else np.arange(n)
        pca = PCA(PROJECTED_DIMS, svd_solver="randomized", iterated_power=PCA_ITERATIONS,
                  random_state=self.seed).fit(unit(sample))
        out = np.empty((n, PROJECTED_DIMS), dtype=np.float32)
        for start in range(0, n, _PROJECT_CHUNK):
            out[start:start + _PROJECT_CHUNK] = pca.transform(unit(slice(start, start + _PROJECT_CHUNK)))
        return out

    def build(self, names: Sequence[str]) -> None:
        """The graphs of the groups `names`, built side by side, each on one thread (so each is the same in every
        run; faiss releases the GIL while it builds)."""
        todo = [n for n in names if n not in self._graphs and len(self.groups[n])]
        workers = max(1, min(faiss.omp_get_max_threads(), len(todo)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, graph in zip(todo, pool.map(self._new_graph, todo), strict=True):
                self._graphs[name] = graph

    def _new_graph(self, name: str):
        faiss.omp_set_num_threads(1)  # OpenMP's thread count is per thread: this worker's inserts run serially
        rows = self.groups[name]
        links, search, _ = SEARCH[self.metric]
        if self.metric == "hamming":
            graph, points = faiss.IndexBinaryHNSW(8 * self.codes.shape[1], links), self.codes[rows]
        else:
            graph, points = faiss.IndexHNSWFlat(self.projected.shape[1], links), self.projected[rows]
        graph.hnsw.efConstruction = BUILD_CANDIDATES
        graph.add(points)
        graph.hnsw.efSearch = search
        return graph

    def _graph(self, name: str):
        if name not in self._graphs:
            self.build(list(self.groups))
        return self._graphs[name]

    def _indexed(self, query_rows: np.ndarray, name: str, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
        rows = self.groups[name]
        k = min(len(rows), SEARCH[self.metric][2] + exclude_self)
        graph = self._graph(name)
        if self.metric == "hamming":
            dist, local = graph.search(self.codes[query_rows], k)
            found = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
            dist = dist.astype(np.float64) / self.bits
        else:
            _, local = graph.search(self.projected[query_rows], k)
            found = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
            dist = self._rerank(query_rows, found)
        dist = np.where(found < 0, np.inf, dist)
        if exclude_self:
            dist = np.where(found == query_rows[:, None], np.inf, dist)
        pick = dist.argmin(axis=1)  # first minimum: ties go to the candidate the graph ranked first
        n = np.arange(len(query_rows))
        return dist[n, pick], found[n, pick]

    def _rerank(self, query_rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Exact distances (Q × K) between each query row and its candidate rows (-1: none), in the metric's unit."""
        out = np.empty(cand.shape)
        for start in range(0, len(query_rows), _RERANK_CHUNK):
            q, c = query_rows[start:start + _RERANK_CHUNK], np.maximum(cand[start:start + _RERANK_CHUNK], 0)
            xq, xc = self.x[q], self.x[c]
            if self.metric == "cosine":
                dots = np.einsum("qkd,qd->qk", xc, xq)
                scale = np.maximum(self.norms[c], 1e-12) * np.maximum(self.norms[q], 1e-12)[:, None]
                out[start:start + len(q)] = np.clip(1.0 - dots / scale, 0.0, 2.0)
            else:
                out[start:start + len(q)] = np.linalg.norm(xc - xq[:, None, :], axis=2)
        return out


def nearest(ref: np.ndarray, metric: str, query: np.ndarray | None = None, exact: bool = False,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index (into `ref`) of the nearest row of `ref` for each query row; without `query`, each
    row's nearest *other* row of `ref`. A one-off NeighbourSearch (the audit keeps one per measure)."""
    _check_metric(metric)
    if query is None:
        search = NeighbourSearch(ref, metric, {"ref": np.arange(len(ref))}, exact, seed)
        return search.nearest(np.arange(len(ref)), ["ref"], exclude_self=True)
    both = np.concatenate([ref, query])
    search = NeighbourSearch(both, metric, {"ref": np.arange(len(ref))}, exact, seed)
    return search.nearest(np.arange(len(ref), len(both)), ["ref"])
