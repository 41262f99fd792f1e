"""Files in and out, below every other module: YAML read safely (with the line of every key, for error messages), and
atomic output: every result is written under a temporary name, flushed to disk and renamed, so a kill or a crash at
any moment leaves the old file or the new one, never half of one. Files get the usual permissions (0o666 less the
umask), as if written directly. (Formerly xferlab.io, a name that shadowed the standard library's.)"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from xferlab.errors import XferlabError

_NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask off, as for any file the user creates
_TEMP_TRIES = 100  # random 32-bit names: a clash is already unlikely once


def _create_temp(path: Path) -> Path:
    """Create an empty hidden file beside `path` and return its name.

    Not tempfile.mkstemp: its files are 0600, so every result would be unreadable to the group and others. Opening
    with 0o666 lets the kernel apply the umask (and any default ACL) without reading or changing the process-wide
    umask, which would race with other threads.
    """
    for _ in range(_TEMP_TRIES):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name} after {_TEMP_TRIES} tries")


def _fsync(path: Path) -> None:
    """Flush the file's data to disk, so the rename never publishes a name whose contents are still in flight."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(temporary path)`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = _create_temp(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise XferlabError(
            f"cannot write {path} ({err.strerror or err}); free disk space or choose another --out"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Write `path` atomically through `write(file object)`, the file opened with `mode` ('wb' or 'w').

    For writers that take a file object, e.g. np.save / np.savez, which add a suffix to a bare file name.
    """

    def through_handle(p: Path) -> None:
        with open(p, mode) as handle:
            write(handle)

    _atomic(Path(path), through_handle)


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    _atomic(Path(path), lambda p: torch.save(obj, p))


def save_npz(path: str | os.PathLike, **arrays) -> None:
    import numpy as np

    # a file object: np.savez would append '.npz' to a bare temporary name
    write_file(path, lambda handle: np.savez_compressed(handle, **arrays))


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


class YamlValues(dict):
    """A mapping read from a YAML file that remembers the line of every key, for error messages."""

    key_lines: dict[tuple[str, ...], int]


def _key_lines(node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                lines.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines[prefix + (str(i),)] = value.start_mark.line + 1
            lines.update(_key_lines(value, prefix + (str(i),)))
    return lines


def read_yaml(path: str | os.PathLike) -> YamlValues:
    """Load a YAML mapping with the safe loader (no Python object tags); errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise XferlabError(f"{path}: cannot read config ({err.strerror}); check the path") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise XferlabError(f"{path}: YAML syntax error{line}: {problem}; fix the file") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise XferlabError(f"{path}: a config must be a mapping of keys to values, got {type(values).__name__}")
    out = YamlValues(values)
    out.key_lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader)) if values else {}
    return out
