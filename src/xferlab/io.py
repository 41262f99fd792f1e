"""Atomic file output: every result is written under a temporary name and renamed, so a kill at any moment leaves
the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from xferlab.errors import XferlabError


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise XferlabError(f"cannot write {path} ({err.strerror or err}); free disk space or choose another --out") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    _atomic(Path(path), lambda p: torch.save(obj, p))


def save_npz(path: str | os.PathLike, **arrays) -> None:
    import numpy as np

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: np.savez would append '.npz' to a bare temporary name
            np.savez_compressed(f, **arrays)

    _atomic(Path(path), write)


def save_figure(path: str | os.PathLike, fig) -> None:
    _atomic(Path(path), lambda p: fig.savefig(p, format=Path(path).suffix.lstrip("."), dpi=110, bbox_inches="tight"))


@contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder beside `out`; on success it becomes `out` in one rename.

    An interrupted run leaves only `.NAME.partial`, which the next attempt removes: a run folder that exists is
    always complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise XferlabError(f"{out} already exists; choose another --out or pass --overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = out.parent / f".{out.name}.partial"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as err:
        raise XferlabError(f"cannot create {out} ({err.strerror or err}); choose a writable --out") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)
