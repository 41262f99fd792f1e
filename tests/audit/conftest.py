"""Audit fixtures: phantoms at the default counts (32 px to stay cheap) with and without the acquisition shift, and
their EfficientNet-Lite0 embeddings, computed once per session."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from xferlab.audit.embed import embed_dataset
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.phantoms import generate_phantoms
from xferlab.data.sources import load_dataset
from xferlab.engine.accel import num_threads as torch_threads

PHANTOM_SIZE = 32


@pytest.fixture(scope="session")
def phantom_embeddings(tmp_path_factory) -> dict[str, tuple[ImageDataset, np.ndarray]]:
    """{'clean': (data, embeddings), 'shifted': (data, embeddings)}: the default phantom counts per class."""
    root = tmp_path_factory.mktemp("audit_phantoms")
    out = {}
    for name, shift in (("clean", "none"), ("shifted", "acquisition")):
        path = generate_phantoms(root / name, size=PHANTOM_SIZE, shift=shift, seed=0)
        data = load_dataset(DataConfig(path=path))
        with torch_threads(1):  # one thread: measured 5-10x faster than two on a busy 2-core machine
            out[name] = (data, embed_dataset(data, AuditConfig(device="cpu"), progress=False))
    return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every audit test trains and embeds on one torch thread: on a busy 2-core machine two threads were measured
    5-10x slower than one, and the caller's setting is restored afterwards."""
    with torch_threads(1):
        yield


@pytest.fixture
def single_blas_thread():
    """The audit runs its statistics on one BLAS thread (see audit/run.py); tests calling them directly do too."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _with_splits(data: ImageDataset, splits: np.ndarray, keep: np.ndarray | None = None) -> ImageDataset:
    keep = np.arange(len(data.labels)) if keep is None else keep
    return replace(data, images=data.images[keep], labels=data.labels[keep], splits=splits,
                   groups=None if data.groups is None else data.groups[keep])


@pytest.fixture
def with_splits():
    """with_splits(data, splits, keep=None): the same images (optionally a subset) under another split assignment."""
    return _with_splits
