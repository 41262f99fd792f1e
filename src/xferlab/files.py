"""Files in and out, below every other module: YAML read safely (with the line of every key, for error messages), and
atomic output: every result is written under a temporary name, flushed to disk and renamed, so a kill or a crash at
any moment leaves the old file or the new one, never half of one. Files get the usual permissions (0o666 less the
umask), as if written directly. (Formerly xferlab.io, a name that shadowed the standard library's.)"""

from __future__ import annotations

import contextlib
import errno
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


def _write_fix(err: OSError) -> str:
    """What to do about a failed write, by its cause."""
    if err.errno == errno.ENOENT:
        return "its folder was removed while the command ran; rerun the command"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable (read-only?); make it writable or choose another --out, then rerun"
    return "free disk space or choose another --out, then rerun"


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
    try:
        tmp = _create_temp(path)
    except OSError as err:
        raise XferlabError(f"cannot write {path} ({err.strerror or err}); {_write_fix(err)}") from None
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise XferlabError(f"cannot write {path} ({err.strerror or err}); {_write_fix(err)}") from None
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
def _exclusive(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out` (flock) for the block, so two processes writing the same folder never mix:
    the second is refused at once. The lock file is removed on release; a lock taken on a file that its holder
    removed meanwhile is dropped and taken again on the new file."""
    import fcntl

    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _NEW_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise XferlabError(f"{out} is being written by another xferlab process (it holds {lock}); wait for it "
                               "to finish, or choose another --out") from None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _exists_error(out: Path) -> XferlabError:
    return XferlabError(f"{out} already exists; choose another --out or pass --overwrite")


@contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder beside `out`; on success it becomes `out` in one rename.

    An interrupted run leaves only `.NAME.partial`, which the next attempt removes: a run folder that exists is
    always complete. While the block runs, `.NAME.lock` (_exclusive) keeps a second process from staging the same
    folder.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise _exists_error(out)
    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_exclusive(out))
            if out.exists() and not overwrite:  # another process finished it while this one waited to start
                raise _exists_error(out)
            stage = out.parent / f".{out.name}.partial"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
        except OSError as err:
            raise XferlabError(f"cannot create {out} ({err.strerror or err}); choose a writable --out") from None
        try:
            yield stage
            _publish(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def _publish(stage: Path, out: Path) -> None:
    """Rename the finished stage to `out` (replacing an old `out` when overwriting)."""
    if not stage.is_dir():
        raise XferlabError(f"{stage} was removed while the command ran, so nothing was saved to {out}; rerun it")
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except OSError as err:
        raise XferlabError(f"cannot move {stage} to {out} ({err.strerror or err}); {_write_fix(err)}") from None


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


# A config is a few hundred lines; anything far larger is not one (and a YAML alias "billion laughs" expands a few
# lines into billions of nodes: the expanded size is counted on the composed graph before anything is built).
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def _children(node) -> list:
    return [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
        node.value if isinstance(node, yaml.SequenceNode) else []


def _expanded_nodes(node, memo: dict[int, int]) -> int:
    """Nodes the document has once every alias is expanded, counted in time linear in the composed graph."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once instead of looping
    memo[id(node)] = 1 + sum(_expanded_nodes(c, memo) for c in _children(node))
    return memo[id(node)]


def _duplicate_key(node, seen: set[int]) -> tuple[str, int] | None:
    """(key, line) of the first key repeated within one mapping (YAML's loaders silently keep the last one)."""
    if id(node) in seen:
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    return key.value, key.start_mark.line + 1
                keys.add(key.value)
    return next((d for c in _children(node) if (d := _duplicate_key(c, seen))), None)


def _check_yaml_shape(text: str, path: Path) -> None:
    """Refuse oversized files, alias bombs and repeated keys before the document is built."""
    if len(text) > MAX_YAML_BYTES:
        raise XferlabError(f"{path}: {len(text):,} characters, more than a config ({MAX_YAML_BYTES:,} at most); "
                           "check that this is the config file")
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return
    if (n := _expanded_nodes(node, {})) > MAX_YAML_NODES:
        raise XferlabError(f"{path}: the document expands to {n:,} values through its aliases (&anchor / *alias), "
                           f"more than {MAX_YAML_NODES:,}; write the values out or remove the nested aliases")
    if duplicate := _duplicate_key(node, set()):
        raise XferlabError(f"{path} line {duplicate[1]}: key '{duplicate[0]}' is repeated in the same mapping; "
                           "keep one of them")


def read_yaml(path: str | os.PathLike) -> YamlValues:
    """Load a YAML mapping with the safe loader (no Python object tags); errors name the file and line."""
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO or a device would be read forever
            raise XferlabError(f"{path}: cannot read config (missing, or a folder, FIFO or device rather than a file); "
                               "check the path")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise XferlabError(f"{path}: {path.stat().st_size:,} bytes, more than a config ({MAX_YAML_BYTES:,} at "
                               "most); check that this is the config file")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise XferlabError(f"{path}: cannot read config ({getattr(err, 'strerror', None) or err}); check the path "
                           "and save it as UTF-8") from None
    try:
        _check_yaml_shape(text, path)
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
