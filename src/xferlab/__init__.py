"""xferlab: which pretrained backbone, frozen or fine-tuned, and can the test split be trusted?

The public Python API is what `__all__` names; everything else is internal. Heavy modules (torch, the backbones) are
imported on first use, so `import xferlab` stays quick.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from xferlab.errors import XferlabError

if TYPE_CHECKING:
    from xferlab.use.model import LoadedRun

__version__ = "0.1.0"
__all__ = ["LoadedRun", "XferlabError", "__version__", "list_backbones", "load_run"]


def list_backbones() -> list[str]:
    """Names of the built-in backbones (importing xferlab.backbones fills the registry, on first call). The timm:NAME
    and xrv:WEIGHTS families are open-ended and not listed here: `xferlab backbones --all` lists their members."""
    from xferlab.backbones.registry import list_backbones as registered

    return registered()


def load_run(path: str | os.PathLike, device: str = "cpu") -> LoadedRun:
    """Load a run folder written by `xferlab train` (or one run of a study): its config, metrics, class_names,
    model (eval mode) and predict(x) -> N×K class probabilities with the run's own preprocessing."""
    from xferlab.use.model import load_run as _load_run

    return _load_run(path, device)


def __getattr__(name: str):
    if name == "LoadedRun":  # the class, for type hints and isinstance, without importing torch at `import xferlab`
        from xferlab.use.model import LoadedRun

        return LoadedRun
    raise AttributeError(f"module 'xferlab' has no attribute {name!r}")
