"""Data: sources (npy, folder, csv, medmnist) -> ImageDataset (in memory, or streamed from disk beyond a memory
budget), pixel helpers and stratified, group-aware splits."""

from xferlab.data.dataset import ImageDataset
from xferlab.data.sources import load_dataset

__all__ = ["ImageDataset", "load_dataset"]
