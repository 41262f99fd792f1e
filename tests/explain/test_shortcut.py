"""The shortcut check: its paired p-value is uniform when zone and reference changes are exchangeable; it names a
model that reads a corner marker, and stays quiet for one that reads the lungs, for one that reads the chest wall in
the zone but the lungs more (the first design's false alarm), and for maps that point at a corner the model ignores;
and the audit runs it on a given run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xferlab.cli import main
from xferlab.engine.accel import num_threads
from xferlab.explain.shortcut import paired_p_value, references, salient_centres, shortcut_check, zones

SIZE = 32
LUNGS = ((slice(8, 24), slice(6, 14)), (slice(8, 24), slice(18, 26)))  # two lung fields, inside the border band
LESION = (slice(12, 18), slice(8, 12))  # in the left lung
WALL = (slice(8, 24), slice(0, 4))  # the left chest wall: in the border band, outside the lungs


def test_paired_p_value_is_uniform_under_an_exchangeable_null_and_small_when_the_zone_wins() -> None:
    rng = np.random.default_rng(0)
    p = np.array([paired_p_value(rng.random(40), rng.random(40)) for _ in range(400)])
    assert 0.02 < (p < 0.05).mean() < 0.09  # 400 draws: SE 0.011 around 0.05
    assert 0.4 < np.median(p) < 0.6
    roi = rng.random(40)
    assert paired_p_value(roi + 0.5, roi) < 1e-6  # the zone matters more in every image
    assert paired_p_value(roi, roi + 0.5) > 0.99  # the reference does
    assert paired_p_value(np.zeros(40), np.zeros(40)) == 1.0  # nothing matters anywhere: no evidence either way


def _roi(n: int) -> np.ndarray:
    roi = np.zeros((n, SIZE, SIZE), dtype=bool)
    for ys, xs in LUNGS:
        roi[:, ys, xs] = True
    return roi


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise, a bright corner marker on half the images and a bright lesion in the left lung on an independent half."""
    images = rng.integers(60, 120, size=(n, SIZE, SIZE)).astype(np.uint8)
    images[rng.random(n) < 0.5, 1:6, 1:6] = 250
    lesion = rng.random(n) < 0.5
    images[lesion, LESION[0], LESION[1]] = 200
    return images


def _probs(z: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def _mean(images: np.ndarray, where: tuple[slice, slice]) -> np.ndarray:
    return images[:, where[0], where[1]].astype(float).mean(axis=(1, 2))


def _corner_model(images: np.ndarray) -> np.ndarray:
    """P(class 1) from the brightness of the top-left corner alone: a pure shortcut."""
    return _probs((_mean(images, (slice(0, 7), slice(0, 7))) - 120) / 20)


def _lung_model(images: np.ndarray) -> np.ndarray:
    """P(class 1) from the lesion site alone: sound."""
    return _probs((_mean(images, LESION) - 130) / 20)


def _wall_and_lung_model(images: np.ndarray) -> np.ndarray:
    """Sound, and reading the chest wall in the zone too (as the frozen features do on the phantoms), less than the
    lungs: salient zone windows beat random zone windows, which lie in air (the first design alarmed on this)."""
    return _probs((_mean(images, WALL) - 90) / 4 + (_mean(images, LESION) - 130) / 20)


def _cams(n: int, *where: tuple[slice, slice]) -> np.ndarray:
    cams = np.full((n, SIZE, SIZE), 0.05, dtype=np.float32)
    for ys, xs in where:
        cams[:, ys, xs] = 1.0
    return cams


def test_names_a_corner_shortcut_and_not_a_lung_reader() -> None:
    images, roi, n = _images(np.random.default_rng(1), 40), _roi(40), 40
    corner = shortcut_check(images, _cams(n, (slice(0, 7), slice(0, 7))), _corner_model, roi=roi)
    assert corner.alarm and corner.p_value < 1e-6 and corner.zone_change > corner.roi_change
    assert corner.zone_share > corner.zone_area and corner.zone_wins > 0.75 and corner.n_windows == 4
    lungs = shortcut_check(images, _cams(n, LESION), _lung_model, roi=roi)
    assert not lungs.alarm and lungs.p_value > 0.5 and lungs.zone_share < lungs.zone_area
    # the chest wall in the zone matters, the lungs more: no alarm although the maps sit mostly in the zone
    wall = shortcut_check(images, _cams(n, WALL, LESION), _wall_and_lung_model, roi=roi)
    assert wall.zone_change > 0.02 and wall.zone_share > wall.zone_area
    assert not wall.alarm and wall.p_value > 0.05 and wall.roi_change > wall.zone_change
    # maps that point at the corner while the model reads the lungs: occlusion does not confirm
    misleading = shortcut_check(images, _cams(n, (slice(0, 7), slice(0, 7))), _lung_model, roi=roi)
    assert not misleading.alarm and misleading.p_value > 0.05 and misleading.zone_change == 0.0


def test_without_a_region_of_interest_the_centre_is_the_reference() -> None:
    images = _images(np.random.default_rng(2), 40)
    corner = shortcut_check(images, _cams(40, (slice(0, 7), slice(0, 7))), _corner_model)
    assert corner.alarm and corner.zone_area == float(zones((1, SIZE, SIZE)).mean())
    lungs = shortcut_check(images, _cams(40, LESION), _lung_model)
    assert not lungs.alarm and lungs.roi_change > lungs.zone_change


def test_region_of_interest_is_taken_out_of_the_zone_and_is_the_reference() -> None:
    roi = np.zeros((2, SIZE, SIZE), dtype=bool)
    roi[0, :, :SIZE // 2] = True  # the second image has none: its reference is the centre
    zone = zones((2, SIZE, SIZE), roi)
    assert not zone[0, :, :SIZE // 2].any() and zone[0, 0, -1] and not zone[0, 16, 16]
    ref = references((2, SIZE, SIZE), roi)
    assert np.array_equal(ref[0], roi[0]) and ref[1, 16, 16] and not ref[1, 0, 0]
    assert np.array_equal(references((1, SIZE, SIZE))[0], ~zones((1, SIZE, SIZE))[0])
    inner = references((2, SIZE, SIZE), roi, side=8)  # without a region of interest, windows lie inside the band
    assert np.array_equal(inner[0], roi[0]) and inner[1, 8, 8] and inner[1, 24, 24]
    assert not inner[1, 7, 16] and not inner[1, 25, 16] and not inner[1, 16, 7]


def test_salient_centres_are_apart_and_fill_up_in_a_small_region() -> None:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cam = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 8) + 0.5 * np.exp(-((yy - 10) ** 2 + (xx - 24) ** 2) / 8)
    centres = salient_centres(cam, np.ones((SIZE, SIZE), dtype=bool), 8, 4)
    assert len(centres) == 4 and abs(centres[0][0] - 10) <= 1 and abs(centres[0][1] - 10) <= 1  # an 8-window
    assert any(abs(y - 10) <= 1 and abs(x - 24) <= 1 for y, x in centres)  # has no middle pixel
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 4 for i, a in enumerate(centres) for b in centres[:i])
    small = np.zeros((SIZE, SIZE), dtype=bool)
    small[10:12, 10:12] = True  # four pixels, all within half a window: the best, then the next by mass
    assert sorted(salient_centres(cam, small, 8, 4)) == [(10, 10), (10, 11), (11, 10), (11, 11)]
    assert salient_centres(cam, np.zeros((SIZE, SIZE), dtype=bool), 8, 4) == []


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
    assert "Shortcut check" in html and "4/200" in html and check["cam_layer"] in html
    assert check["reference"] == "region of interest" and check["n_windows"] == 4 and "random_change" not in check
    assert "Wilcoxon" in html and "random windows" not in html
    # an audit.json of the first design (salient zone window against random ones) still renders, marked as such
    first = {k: v for k, v in check.items() if k not in ("zone_change", "roi_change", "zone_wins", "n_windows")}
    first.update(salient_change=0.2, random_change=0.1, n_random=8)
    (out / "audit.json").write_text(json.dumps({**audit, "shortcut": first}))
    html = render_audit_section(out)
    assert "first design" in html and "8 random windows" in html and "0.141" in html


def test_audit_refuses_a_run_of_other_data(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from xferlab.data.phantoms import generate_phantoms

    other = generate_phantoms(tmp_path / "p48", size=48, n_per_class=30, n_test_per_class=4)
    status = main(["audit", "--data", str(other), "--out", str(tmp_path / "a"), "--resplits", "0",
                   "--permutations", "20", "--weights", "none", "--device", "cpu", "--shortcut-run", str(tiny_run)])
    err = capsys.readouterr().err
    assert status == 2 and "shortcut_run" in err and "(32, 32)" in err
    assert not (tmp_path / "a").exists()
