"""`xferlab explain`: a run folder in; explain.json, overlays and contact sheets out; bad input is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xferlab.cli import main
from xferlab.engine.accel import num_threads


@pytest.fixture(scope="module")
def explained(tiny_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("explained") / "ex"
    with num_threads(1):
        assert main(["explain", str(tiny_run), "--out", str(out), "--layer", "layer2", "--max-errors", "3",
                     "--per-class", "2"]) == 0
    return out, json.loads((out / "explain.json").read_text())


def test_explain_json_has_shares_per_image_split_and_class(explained) -> None:
    out, result = explained
    assert result["backbone"] == "resnet18" and result["cam_layer"] == "layer2"
    assert set(result["splits"]) == {"val", "test"}
    val = result["splits"]["val"]
    assert val["summary"]["all"]["n"] == 24 == len(val["images"])  # 20% of 60 per class
    for split in result["splits"].values():
        for record in split["images"]:
            for key in ("border_share", "roi_share"):
                assert 0.0 <= record[key] <= 1.0
        for name in ("normal", "pneumonia"):
            assert 0.0 <= split["summary"][name]["border_share"] <= 1.0
    # the marker share exists where markers exist: val has them, test does not
    assert any(r["marker_share"] is not None for r in val["images"])
    assert all(r["marker_share"] is None for r in result["splits"]["test"]["images"])
    # per-class means are the means of the per-image shares
    border = [r["border_share"] for r in val["images"] if r["label"] == 1]
    assert val["summary"]["pneumonia"]["border_share"] == pytest.approx(np.mean(border), abs=1e-3)


def test_overlays_are_errors_capped_and_correct_per_class(explained) -> None:
    out, result = explained
    for name, split in result["splits"].items():
        drawn = [r for r in split["images"] if r["overlay"]]
        errors = [r for r in drawn if r["pred"] != r["label"]]
        all_errors = [r for r in split["images"] if r["pred"] != r["label"]]
        assert len(errors) == min(3, len(all_errors))
        for c in (0, 1):
            correct = [r for r in split["images"] if r["pred"] == r["label"] == c]
            assert len([r for r in drawn if r["pred"] == r["label"] == c]) == min(2, len(correct))
        for r in drawn:
            assert (out / r["overlay"]).stat().st_size > 0
        assert (out / f"contact_{name}.png").is_file()


def test_explain_inputs_files(tiny_run: Path, shortcut_phantoms: Path, tmp_path: Path) -> None:
    from PIL import Image

    images = np.load(shortcut_phantoms / "test_normal.npy")[:2]
    Image.fromarray(images[0]).resize((48, 48)).save(tmp_path / "a.png")  # another size: resized to the run's
    np.save(tmp_path / "b.npy", images)
    with num_threads(1):
        assert main(["explain", str(tiny_run), str(tmp_path / "a.png"), str(tmp_path / "b.npy"), "--layer", "layer2",
                     "--out", str(tmp_path / "ex")]) == 0
    result = json.loads((tmp_path / "ex" / "explain.json").read_text())
    records = result["splits"]["inputs"]["images"]
    assert [r["name"] for r in records] == ["a.png", "b.npy[0]", "b.npy[1]"]
    assert all(r["label"] is None and 0 <= r["border_share"] <= 1 for r in records)


@pytest.mark.parametrize("case", ["no_run", "bad_layer", "bad_input", "pickle"])
def test_bad_input_is_one_error_line(case: str, tiny_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    import torch

    run, extra = tiny_run, []
    if case == "no_run":
        run = tmp_path
    elif case == "bad_layer":
        extra = ["--layer", "layer9"]
    elif case == "bad_input":
        (tmp_path / "x.npy").write_bytes(b"not an array")
        extra = [str(tmp_path / "x.npy")]
    else:  # a model.pt that would run code when unpickled is refused
        run = tmp_path / "run"
        shutil.copytree(tiny_run, run)
        torch.save({"state_dict": {}, "class_names": ["a", "b"], "evil": shutil.rmtree}, run / "model.pt")
    status = main(["explain", str(run), *extra, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_explain_writes_only_under_its_out(tiny_run: Path, tmp_path: Path, capsys) -> None:
    """#17: an --out with `..` lands where it resolves to, nothing else is touched, and an existing --out is refused."""
    (tmp_path / "a").mkdir()
    before = {p for p in tmp_path.rglob("*")}
    run_before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    with num_threads(1):
        assert main(["explain", str(tiny_run), "--out", str(tmp_path / "a" / ".." / "ex"), "--layer", "layer2",
                     "--max-errors", "1", "--per-class", "1", "--max-images", "8"]) == 0
    added = {p for p in tmp_path.rglob("*")} - before
    assert added and all(p.is_relative_to(tmp_path / "ex") for p in added), added
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == run_before  # the run folder is only read
    capsys.readouterr()
    assert main(["explain", str(tiny_run), "--out", str(tmp_path / "ex")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ex" in err and len(err.strip().splitlines()) == 1
