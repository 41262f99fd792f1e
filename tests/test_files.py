"""Atomic result files (xferlab.files): the usual permissions, flushed before the rename, nothing left on failure."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from xferlab import files as io
from xferlab.errors import XferlabError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_write_text_gives_the_usual_permissions_not_mkstemps_0600(tmp_path):
    io.write_text(tmp_path / "a.txt", "hello\n")
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert _mode(tmp_path / "a.txt") == 0o666 & ~_umask()


def test_permissions_follow_the_umask(tmp_path, umask_027):
    io.write_json(tmp_path / "a.json", {"x": 1})
    io.save_npz(tmp_path / "a.npz", x=np.arange(3))
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "a.npz") == 0o640


def test_write_file_writes_through_a_handle_and_replaces(tmp_path):
    path = tmp_path / "a.npy"
    io.write_file(path, lambda handle: np.save(handle, np.arange(4)))
    io.write_file(path, lambda handle: np.save(handle, np.arange(2)))  # np.save on a name would add '.npy'
    assert np.load(path).tolist() == [0, 1]
    io.write_file(tmp_path / "b.txt", lambda handle: handle.write("text"), mode="w")
    assert (tmp_path / "b.txt").read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.txt"]


def test_the_file_is_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(io.os, "fsync", lambda fd: events.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    io.write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync", "replace"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    io.write_text(path, "old")

    def full_disk(handle):
        handle.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(XferlabError, match=r"cannot write .*a\.txt \(No space left on device\)"):
        io.write_file(path, full_disk, mode="w")
    with pytest.raises(KeyboardInterrupt):
        io.write_file(path, lambda handle: (_ for _ in ()).throw(KeyboardInterrupt))
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
