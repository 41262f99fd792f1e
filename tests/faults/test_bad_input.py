"""Fault injection at the command line: every bad input is one `error:` line naming the file or field and the fix,
exit status 2, and nothing written."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinydata import write_tiny_npy
from xferlab.cli import main


def _npy(tmp_path: Path) -> Path:
    return write_tiny_npy(tmp_path / "data", n=10, n_test=4, size=16)


def _png_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for name in ("NORMAL", "PNEUMONIA"):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _truncated_npy(tmp_path):
    root = _npy(tmp_path)
    data = (root / "normal.npy").read_bytes()
    (root / "normal.npy").write_bytes(data[: len(data) // 2])
    return ["--data", str(root)], "normal.npy"


def _garbage_npy(tmp_path):
    root = _npy(tmp_path)
    (root / "pneumonia.npy").write_bytes(b"not a numpy file at all")
    return ["--data", str(root)], "pneumonia.npy"


def _pickled_npy(tmp_path):
    root = _npy(tmp_path)
    np.save(root / "normal.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    return ["--data", str(root)], "normal.npy"


def _mixed_sizes(tmp_path):
    root = _npy(tmp_path)
    np.save(root / "normal.npy", np.zeros((10, 20, 20), np.uint8))
    return ["--data", str(root)], "--image-size"


def _nan_pixels(tmp_path):
    root = _npy(tmp_path)
    x = np.random.default_rng(0).random((10, 16, 16))
    x[3, 4, 5] = np.nan
    np.save(root / "normal.npy", x)
    return ["--data", str(root)], "NaN"


def _floats_out_of_range(tmp_path):
    root = _npy(tmp_path)
    np.save(root / "normal.npy", np.random.default_rng(0).random((10, 16, 16)) * 1000)
    return ["--data", str(root)], "normal.npy"


def _string_pixels(tmp_path):
    root = _npy(tmp_path)
    np.save(root / "normal.npy", np.full((10, 16, 16), "x"))
    return ["--data", str(root)], "normal.npy"


def _empty_test_class(tmp_path):
    root = _npy(tmp_path)
    np.save(root / "test_normal.npy", np.zeros((0, 16, 16), np.uint8))
    return ["--data", str(root)], "normal"


def _corrupt_png(tmp_path):
    root = _png_folder(tmp_path)
    (root / "train" / "NORMAL" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return ["--data", str(root), "--format", "folder"], "3.png"


def _duplicated_class_names(tmp_path):
    root = _png_folder(tmp_path)
    (root / "train" / "PNEUMONIA").rename(root / "train" / "normal")
    (root / "test" / "PNEUMONIA").rename(root / "test" / "normal")
    return ["--data", str(root), "--format", "folder"], "class"


def _empty_csv(tmp_path):
    (tmp_path / "m.csv").write_text("")
    return ["--data", str(tmp_path / "m.csv"), "--format", "csv"], "m.csv"


def _csv_missing_file(tmp_path):
    root = _png_folder(tmp_path)
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    rows.append("train/NORMAL/nope.png,NORMAL")
    (root / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return ["--data", str(root / "m.csv"), "--format", "csv"], "nope.png"


def _medmnist_label_out_of_range(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    arrays["train_labels"][0, 0] = 7  # pneumoniamnist has 2 classes
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    return ["--data", str(tmp_path / "pneumoniamnist.npz"), "--format", "medmnist",
            "--medmnist-flag", "pneumoniamnist"], "label"


def _missing_data(tmp_path):
    return ["--data", str(tmp_path / "nowhere")], "nowhere"


def _unwritable_out(tmp_path):
    root = _npy(tmp_path)
    (tmp_path / "afile").write_text("x")  # root may write anywhere, but nobody can create a folder under a file
    return ["--data", str(root), "--out", str(tmp_path / "afile" / "run")], "--out"


CASES = {f.__name__.lstrip("_"): f for f in (
    _truncated_npy, _garbage_npy, _pickled_npy, _mixed_sizes, _nan_pixels, _floats_out_of_range, _string_pixels,
    _empty_test_class, _corrupt_png, _duplicated_class_names, _empty_csv, _csv_missing_file,
    _medmnist_label_out_of_range, _missing_data, _unwritable_out,
)}


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    args, named = CASES[case](tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    before = _tree(tmp_path)
    code = main(["train", *args, "--weights", "none", "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err
    assert _tree(tmp_path) == before  # no run folder, no staging folder, no temporary file


def test_unreadable_images_can_be_skipped_with_a_warning(tmp_path, caplog):
    args, _ = _corrupt_png(tmp_path)
    code = main(["train", *args, "--skip-unreadable", "--out", str(tmp_path / "run"), "--weights", "none",
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    assert "skipped 1 unreadable" in caplog.text


def test_disk_full_during_a_save_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    import torch

    root = _npy(tmp_path)

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")  # a half-written file, then the device fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--weights", "none",
                 "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the per-epoch progress lines (stderr is not a terminal here)
    assert code == 2 and last.startswith("error: ") and "No space left on device" in last, err
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


def test_yaml_python_tags_are_refused_not_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "run.yaml" in capsys.readouterr().err and not marker.exists()


def test_a_data_section_that_is_not_a_mapping_is_a_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: some/folder\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "run.yaml" in err and "data:" in err
