"""Shared fixtures: every test runs offline with an empty, private TORCH_HOME, and tiny generated datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinydata import write_tiny_npy

LEGACY = Path(__file__).parent / "golden" / "legacy"  # run and study folders written by an earlier version


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path_factory, monkeypatch) -> Path:
    """No test may download weights or read the user's cache: an empty TORCH_HOME and the offline switch."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("XFERLAB_OFFLINE", "1")
    return home


@pytest.fixture
def tiny_npy(tmp_path) -> Path:
    return write_tiny_npy(tmp_path / "tiny")


@pytest.fixture(scope="session")
def legacy_report(tmp_path_factory) -> tuple[Path, object, Path]:
    """A copy of the legacy study folder (tests/golden/legacy/study) with its results and report rebuilt once per
    session: (the copy, its StudyResults, report.html). Tests only read it."""
    import shutil

    from xferlab.report import build_outputs

    copy = tmp_path_factory.mktemp("legacy") / "study"
    shutil.copytree(LEGACY / "study", copy)
    results, report = build_outputs(copy)
    return copy, results, report
