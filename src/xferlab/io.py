"""Atomic file output: every result is written under a temporary name, flushed to disk and renamed, so a kill or a
crash at any moment leaves the old file or the new one, never half of one. Files get the usual permissions (0o666
less the umask), as if written directly."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

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
