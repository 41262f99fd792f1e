"""Image sets larger than memory: FileImages decodes image files when indexed, stream_batches decodes whole batches
in torch DataLoader workers. Pixels are exactly those in-memory loading (sources._read_images) produces.

sources.py scans a folder or manifest with scan_image_files / find_colour (headers only, where it can) and, when the
decoded images would exceed data.memory_budget_mb, hands out FileImages instead of an array.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xferlab.data.images import check_same_size, read_each, read_image_file, read_image_header, resize_image
from xferlab.errors import XferlabError

MIB = 2**20


def decoded_nbytes(n: int, size: tuple[int, int], rgb: bool) -> int:
    """Bytes that n decoded uint8 images of H×W `size` take: N×H×W, times 3 when RGB."""
    return n * size[0] * size[1] * (3 if rgb else 1)


# ---- deciding: what the files hold, from their headers --------------------------------------------------------------


@dataclass(frozen=True)
class FileScan:
    """The readable files of a folder or manifest, found from their headers (indices into the scanned paths)."""

    kept: list[int]
    skipped: list[int]  # unreadable, left out (only with skip_unreadable)
    size: tuple[int, int]  # decoded H×W: image_size, or the files' common size
    maybe_colour: list[bool]  # per kept file: only decoding tells whether it is colour


def scan_image_files(
    paths: Sequence[Path], where: str, image_size: int | None, skip_unreadable: bool
) -> FileScan:
    """Read every file's header (read_image_header), refusing or skipping unreadable files as loading does.

    With `skip_unreadable` every file is decoded once (and dropped): a header check misses damage such as a truncated
    JPEG, and a file loading would skip must be skipped here too, or the streamed dataset would hold other images
    than the loaded one. Without `image_size` the files must share one size, as for loading.
    """
    skipped: list[int] = []
    headers = dict(read_each(paths, _decoded_header if skip_unreadable else read_image_header, skip_unreadable,
                             skipped))
    kept = list(headers)
    sizes = [headers[i][0] for i in kept]
    if image_size is not None:
        size = (image_size, image_size)
    else:
        check_same_size(sizes, where, [str(paths[i]) for i in kept])
        size = sizes[0] if sizes else (0, 0)
    return FileScan(kept, skipped, size, [headers[i][1] for i in kept])


def _decoded_header(path: Path) -> tuple[tuple[int, int], bool]:
    """read_image_header's answer, from decoding the whole file (XferlabError when it cannot be decoded)."""
    pixels = read_image_file(path)
    return (int(pixels.shape[-2]), int(pixels.shape[-1])), pixels.ndim == 3


def find_colour(paths: Sequence[Path], scan: FileScan, skip_unreadable: bool) -> tuple[bool, FileScan]:
    """Whether any kept file decodes to colour (which makes the whole set RGB, as stack_images does), and the scan
    less any file that failed to decode.

    Gray content saved as RGB decodes gray, so the files whose mode may be colour are decoded, one at a time and
    nothing kept, until the first colour one: a colour set stops early, an all-gray RGB-mode set is decoded once.
    """
    candidates = [i for i, maybe in zip(scan.kept, scan.maybe_colour) if maybe]
    failed: list[int] = []
    decoded = read_each([paths[i] for i in candidates], read_image_file, skip_unreadable, failed)
    rgb = any(image.ndim == 3 for _, image in decoded)  # any() stops at the first colour image
    if not failed:
        return rgb, scan
    bad = {candidates[j] for j in failed}
    keep = [k for k, i in enumerate(scan.kept) if i not in bad]
    return rgb, replace(
        scan,
        kept=[scan.kept[k] for k in keep],
        skipped=sorted(scan.skipped + list(bad)),
        maybe_colour=[scan.maybe_colour[k] for k in keep],
    )


# ---- FileImages: an array-like decoded on demand --------------------------------------------------------------------


class FileImages:
    """An N×H×W or N×3×H×W uint8 array-like whose images are decoded from their files when indexed.

    Each image is read_image_file, resize_image to `size` when `resize` (sources' image_size), then, when `rgb`,
    a gray image is broadcast to 3 channels: the steps and order of in-memory loading, so pixels are identical.
    `images[i]` gives one image, `images[idx]` (slice, integer array or list, boolean mask) a stacked batch, both
    numpy uint8 in fresh memory. Converting the whole set with np.asarray is refused: that is what streaming avoids.
    Plain attributes only, so it pickles for DataLoader workers.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: Sequence[str | os.PathLike], size: tuple[int, int], rgb: bool, resize: bool = False):
        self.paths = tuple(os.fspath(p) for p in paths)  # str: a fraction of Path's memory for 10^6 files
        self.size = (int(size[0]), int(size[1]))
        self.rgb = bool(rgb)
        self.resize = bool(resize)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (3, *self.size) if self.rgb else self.size

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), *self.image_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """What the decoded images would take in memory."""
        return decoded_nbytes(len(self.paths), self.size, self.rgb)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        shape = "×".join(map(str, self.shape))
        return f"FileImages({shape} uint8 decoded from files, {self.nbytes / MIB:.1f} MiB when decoded)"

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, (slice, tuple)) and np.ndim(index) == 0:
            out = np.empty(self.image_shape, dtype=np.uint8)
            out[...] = self._read(self._position(operator.index(index)))  # gray broadcasts into RGB
            return out
        positions = self._positions(index)
        out = np.empty((len(positions), *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(positions):
            out[j] = self._read(i)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f"{self!r} is streamed from disk; decoding all of it into one array is what streaming avoids: index a "
            "batch (images[idx]) or use xferlab.data.streaming.stream_batches, or raise data.memory_budget_mb"
        )

    def subset(self, index) -> FileImages:
        """The files at `index` (as for indexing), keeping this set's H×W and channels, as images[idx] would."""
        return FileImages([self.paths[i] for i in self._positions(index)], self.size, self.rgb, self.resize)

    def _position(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} is out of range for {n} images")
        return i % n

    def _positions(self, index) -> np.ndarray:
        """Indices of the images `index` selects, as numpy's one-axis indexing would."""
        if isinstance(index, tuple):
            raise TypeError("FileImages takes one index per image (int, slice, integer array or boolean mask); "
                            "index pixels after decoding: images[i][...]")
        if isinstance(index, slice):
            return np.arange(*index.indices(len(self)))
        index = np.asarray(index)
        if index.size == 0:
            return np.empty(0, dtype=np.int64)
        if index.dtype == np.bool_:
            if index.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {index.shape} does not match {len(self)} images")
            return np.flatnonzero(index)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"index images with ints, a slice or a 1-D integer or boolean array, got {index.dtype} "
                            f"of shape {index.shape}")
        n = len(self)
        bad = index[(index < -n) | (index >= n)]
        if len(bad):
            raise IndexError(f"image index {bad[0]} is out of range for {n} images")
        return index % n

    def _read(self, i: int) -> np.ndarray:
        """Image i as H×W or 3×H×W (gray not yet broadcast), checked against the shape the set was built with."""
        path = self.paths[i]
        image = read_image_file(path, self.size if self.resize else None)
        if self.resize:
            image = resize_image(image, self.size)
        if tuple(image.shape[-2:]) != self.size or (image.ndim == 3 and not self.rgb):
            got = "×".join(map(str, image.shape))
            raise XferlabError(
                f"{path}: decodes to {got}, not {'×'.join(map(str, self.image_shape))} as when the data was loaded; "
                "the file changed on disk: load the data again"
            )
        return image


# ---- streaming batches through DataLoader workers -------------------------------------------------------------------


class FileImageDataset(Dataset):
    """Map-style torch Dataset over FileImages: item i is image i as a uint8 tensor."""

    def __init__(self, images: FileImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i])


def _index_list(batch) -> list[int]:
    # DataLoader hands each index to Dataset.__getitem__ on its own; plain ints avoid one 0-d tensor per image.
    return batch.tolist() if hasattr(batch, "tolist") else [int(i) for i in batch]


def stream_batches(
    images: FileImages, batches: Iterable, workers: int, pin_memory: bool = False
) -> Iterator[torch.Tensor]:
    """uint8 B×H×W or B×3×H×W tensors, one per index batch in `batches` and in its order, decoded ahead of use by
    `workers` DataLoader processes (0: in this process, when each batch is asked for).

    Index batches may be tensors (on any device), arrays or lists. Workers start now and stop when the iterator is
    exhausted or dropped: one iterator per epoch. An error in a worker (a file damaged since loading) is re-raised
    here as XferlabError, its message naming the file after the worker's traceback.
    """
    loader = DataLoader(
        FileImageDataset(images),
        batch_sampler=(_index_list(b) for b in batches),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        # DataLoader draws its workers' base seed from this generator, else from (and advancing) the global RNG,
        # which would make a streamed run's dropout and augmentation differ from an in-memory one's.
        generator=torch.Generator(),
    )
    return iter(loader)
