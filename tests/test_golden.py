"""Golden runs: one seeded tiny run per regime must reproduce, on CPU, the history.csv (wall-clock columns left out)
and predictions.npz written by the version before the architecture change (tests/golden/make_golden.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from xferlab.engine.accel import num_threads
from xferlab.engine.run import train

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import REGIMES, golden_config, golden_data, regime_dir, untimed_history  # noqa: E402


@pytest.fixture(scope="module")
def golden_phantoms(tmp_path_factory) -> Path:
    return golden_data(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("regime", REGIMES)
def test_a_seeded_run_reproduces_its_golden_files(golden_phantoms, tmp_path, regime):
    with num_threads(1):
        train(golden_config(golden_phantoms, regime), tmp_path / "run", progress=False)
    expected = GOLDEN / regime_dir(regime)
    got, want = untimed_history(tmp_path / "run").splitlines(), (expected / "history.csv").read_text().splitlines()
    assert got[0] == want[0] and len(got) == len(want)
    for g, w in zip(got[1:], want[1:]):  # same epochs; losses and accuracies to float32 round-off across machines
        np.testing.assert_allclose([float(v) for v in g.split(",")], [float(v) for v in w.split(",")], rtol=1e-5)
    with np.load(tmp_path / "run" / "predictions.npz") as new, np.load(expected / "predictions.npz") as old:
        assert sorted(new.files) == sorted(old.files)
        for key in old.files:
            np.testing.assert_allclose(new[key], old[key], rtol=1e-5, atol=1e-6, err_msg=key)
