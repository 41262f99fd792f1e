"""One streaming pass over the dataset's images for everything the audit needs per image: content hashes,
perceptual hashes, spectral descriptors, pixel statistics and (unless given) backbone embeddings. Images are read a
chunk at a time (streamed sets are decoded per chunk), so the audit honours data.memory_budget_mb as training does."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from xferlab.audit.embed import Embedder
from xferlab.audit.leakage import content_hashes, perceptual_hashes
from xferlab.audit.nearcopy import spectral_descriptors
from xferlab.audit.pixels import image_statistics
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

# Images decoded at once: 1024 images at 256 px are 64 MiB of uint8 (and four times that as float32 statistics).
CHUNK = 1024


@dataclass
class ImageScan:
    """Per-image arrays, dataset order."""

    embeddings: np.ndarray  # N × D float32
    hashes: np.ndarray  # N content hashes (hex strings)
    phashes: np.ndarray  # N × 256 bool perceptual hashes
    descriptors: np.ndarray  # N × D float32 spectral descriptors (nearcopy)
    pixel_stats: np.ndarray  # N × len(pixels.STATS)
    runtime: str  # what computed the embeddings: a runtime path (xferlab.engine.runtime) or given
    runtime_record: dict | None = None  # the runtime's choice, reason and check (None for given embeddings)


def load_embeddings(source: np.ndarray | str | Path, n: int) -> np.ndarray:
    """Precomputed embeddings: an N × D array or a .npy file of one, one row per image in dataset order."""
    where = str(source) if not isinstance(source, np.ndarray) else "embeddings"
    if isinstance(source, np.ndarray):
        array = source
    else:
        try:
            array = np.load(source, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise XferlabError(f"{where}: cannot load the embeddings ({err}); save an N × D float array with "
                               "np.save, one row per image in dataset order") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise XferlabError(f"{where}: embeddings must be a 2-D numeric array (N images × D features), got "
                           f"{getattr(array, 'shape', type(array).__name__)}")
    if len(array) != n:
        raise XferlabError(f"{where}: {len(array)} embedding rows for {n} images; give one row per image in dataset "
                           "order (the order `xferlab audit` loads the data in)")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise XferlabError(f"{where}: embeddings contain NaN or infinity; recompute them")
    return array


def scan_dataset(data: ImageDataset, cfg: AuditConfig, embeddings: np.ndarray | None = None,
                 progress: bool = True) -> ImageScan:
    """Every per-image array the audit uses, from one pass over the images a chunk at a time. A chunk's embedding
    runs on a second thread while this one hashes and measures the same chunk (the backbone runtime and most of the
    NumPy and Pillow work release the GIL), so the two halves of the pass overlap instead of adding up."""
    embedder = None if embeddings is not None else Embedder(data, cfg)
    n = len(data.labels)
    arrays: dict[str, np.ndarray] = {}  # allocated at the first chunk, filled in place: no second copy at the end

    def put(name: str, start: int, values: np.ndarray) -> None:
        if name not in arrays:
            arrays[name] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
        arrays[name][start:start + len(values)] = values

    with ThreadPoolExecutor(max_workers=1) as pool:
        for start in tqdm(range(0, n, CHUNK), desc="scanning images", unit="chunk", disable=not progress,
                          leave=False):
            images = data.images[start:start + CHUNK]
            embedded = pool.submit(embedder, images) if embedder is not None else None
            put("hashes", start, content_hashes(images))
            put("phashes", start, perceptual_hashes(images))
            put("descriptors", start, spectral_descriptors(images))
            put("pixel_stats", start, image_statistics(images))
            if embedded is not None:
                put("embeddings", start, embedded.result())
    if embedder is not None:
        embedder.check(arrays["embeddings"])
    else:
        arrays["embeddings"] = embeddings
    if embedder is None:
        return ImageScan(runtime="given", **arrays)
    return ImageScan(runtime=embedder.runtime, runtime_record=embedder.features.record.as_dict(), **arrays)
