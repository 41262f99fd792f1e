"""The shortcut check: its rank p-value is uniform under exchangeable windows, it names a model that reads a corner
patch and stays quiet for one that reads the centre, and the audit runs it on a given run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xferlab.cli import main
from xferlab.engine.accel import num_threads
from xferlab.explain.shortcut import rank_p_value, shortcut_check

SIZE = 32


def test_rank_p_value_is_uniform_under_the_null_and_small_when_salient_wins() -> None:
    rng = np.random.default_rng(0)
    p = np.array([rank_p_value(rng.random((40, 9)), rng) for _ in range(400)])
    assert 0.02 < (p < 0.05).mean() < 0.09  # 400 draws: SE 0.011 around 0.05
    assert 0.4 < np.median(p) < 0.6
    changes = rng.random((40, 9))
    changes[:, 0] += 1.0  # the salient window always matters most
    assert rank_p_value(changes, rng) < 1e-6
    zeros = np.zeros((40, 9))  # nothing matters anywhere: ties broken at random, no alarm
    assert rank_p_value(zeros, rng) > 0.001


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    images = rng.integers(60, 120, size=(n, SIZE, SIZE)).astype(np.uint8)
    marked = rng.random(n) < 0.5
    images[marked, 1:6, 1:6] = 250  # a bright corner marker on half of them
    return images


def _corner_model(images: np.ndarray) -> np.ndarray:
    """P(class 1) from the brightness of the top-left corner alone: a pure shortcut."""
    z = (images[:, :7, :7].astype(float).mean(axis=(1, 2)) - 120) / 20
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def _centre_model(images: np.ndarray) -> np.ndarray:
    z = (images[:, 12:20, 12:20].astype(float).mean(axis=(1, 2)) - 90) / 5
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def _cams(n: int, y: slice, x: slice) -> np.ndarray:
    cams = np.full((n, SIZE, SIZE), 0.05, dtype=np.float32)
    cams[:, y, x] = 1.0
    return cams


def test_names_a_corner_shortcut_and_not_a_centre_reader() -> None:
    rng = np.random.default_rng(1)
    images = _images(rng, 40)
    corner = shortcut_check(images, _cams(40, slice(0, 7), slice(0, 7)), _corner_model, seed=0)
    assert corner.alarm and corner.p_value < 0.001 and corner.salient_change > corner.random_change
    assert corner.zone_share > corner.zone_area
    centre = shortcut_check(images, _cams(40, slice(12, 20), slice(12, 20)), _centre_model, seed=0)
    assert not centre.alarm and centre.zone_share < centre.zone_area
    # maps that point at the corner while the model reads the centre: occlusion does not confirm
    misleading = shortcut_check(images, _cams(40, slice(0, 7), slice(0, 7)), _centre_model, seed=0)
    assert not misleading.alarm and misleading.p_value > 0.05


def test_region_of_interest_is_taken_out_of_the_zone() -> None:
    from xferlab.explain.shortcut import zones

    roi = np.zeros((1, SIZE, SIZE), dtype=bool)
    roi[0, :, :SIZE // 2] = True
    zone = zones((1, SIZE, SIZE), roi)
    assert not zone[0, :, :SIZE // 2].any() and zone[0, 0, -1] and not zone[0, 16, 16]


def test_audit_runs_the_check_on_a_given_run(tiny_run: Path, shortcut_phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    with num_threads(1):
        status = main(["audit", "--data", str(shortcut_phantoms), "--out", str(out), "--resplits", "0",
                       "--permutations", "20", "--weights", "none", "--device", "cpu", "--shortcut-run",
                       str(tiny_run)])
    assert status == 0
    audit = json.loads((out / "audit.json").read_text())
    check = audit["shortcut"]
    assert 0.0 <= check["p_value"] <= 1.0 and check["n_images"] == 24 and check["split"] == "val"
    assert check["zone"] == "border band less the region of interest" and 0 <= check["marker_share"] <= 1
    assert any(f["topic"] == "shortcut" for f in audit["verdict"]["findings"])
    from xferlab.report.audit import render_audit_section

    html = render_audit_section(out)  # the report's audit section shows the check's record
    assert "Shortcut check" in html and "0.141" in html and check["cam_layer"] in html


def test_audit_refuses_a_run_of_other_data(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from xferlab.data.phantoms import generate_phantoms

    other = generate_phantoms(tmp_path / "p48", size=48, n_per_class=30, n_test_per_class=4)
    status = main(["audit", "--data", str(other), "--out", str(tmp_path / "a"), "--resplits", "0",
                   "--permutations", "20", "--weights", "none", "--device", "cpu", "--shortcut-run", str(tiny_run)])
    err = capsys.readouterr().err
    assert status == 2 and "shortcut_run" in err and "(32, 32)" in err
    assert not (tmp_path / "a").exists()
