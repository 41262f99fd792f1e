"""The data source registry: format name -> loader (DataConfig -> ImageDataset). The loaders register themselves in
xferlab.data.sources, which xferlab.data imports, so the registry is full once the package is imported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SourceFn = Callable[[Any], Any]  # DataConfig -> ImageDataset (not named here: this module sits below both)
SOURCES: dict[str, SourceFn] = {}


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    """Decorator: make `fn` the loader for data format `name`."""

    def register(fn: SourceFn) -> SourceFn:
        if name in SOURCES:
            raise ValueError(f"data source '{name}' is already registered (by {SOURCES[name].__qualname__})")
        SOURCES[name] = fn
        return fn

    return register
