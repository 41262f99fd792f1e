"""`xferlab predict`: inputs of every kind, the CSV, metrics with labels, unreadable files, and reproducing a run's
own predictions.npz."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from hospitalfiles import write_dicom
from xferlab import artifacts
from xferlab.cli import main


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probs(rows, classes=("normal", "pneumonia")):
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


@pytest.fixture(scope="module")
def png_folder(tiny_data, tmp_path_factory):
    """The run's test images as PNGs in a folder per class (the folder layout)."""
    root = tmp_path_factory.mktemp("pngs")
    for name in ("normal", "pneumonia"):
        (root / name).mkdir()
        for i, image in enumerate(np.load(tiny_data / f"test_{name}.npy")):
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return root


def test_predicting_the_runs_test_images_reproduces_predictions_npz(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(tiny_data / "test_normal.npy"), str(tiny_data / "test_pneumonia.npy"),
                 "--out", str(out), "--batch-size", "5"]) == 0
    rows = _rows(out)
    labels, saved_probs = artifacts.read_run(tiny_run).predictions["test"]
    np.testing.assert_allclose(_probs(rows), saved_probs, atol=1e-5, rtol=0)
    assert [r["label"] for r in rows] == [["normal", "pneumonia"][k] for k in labels]
    assert rows[0]["index"] == "0" and rows[0]["decision_rule"] == "argmax"
    assert [r["predicted"] for r in rows] == [["normal", "pneumonia"][k] for k in saved_probs.argmax(1)]
    text = capsys.readouterr().out
    assert "labels known for 16 of 16 images" in text and "balanced_accuracy" in text and "95% CI" in text


def test_png_folder_per_class_gives_labels_and_the_same_probabilities(tiny_run, png_folder, tiny_data, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(png_folder), "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 16 and rows[0]["path"].endswith("00.png") and rows[0]["index"] == ""
    assert {r["label"] for r in rows} == {"normal", "pneumonia"}
    np.testing.assert_allclose(_probs(rows), artifacts.read_run(tiny_run).predictions["test"][1], atol=1e-5)


def test_manifest_and_dicom_inputs(tiny_run, png_folder, tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,label\n" + f"{png_folder / 'normal' / '00.png'},normal\n"
                                    + f"{png_folder / 'pneumonia' / '00.png'},\n")
    write_dicom(tmp_path / "a.dcm", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 4, 12)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(tmp_path / "m.csv"), str(tmp_path / "a.dcm"), "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["label"] for r in rows] == ["normal", "", ""] and rows[2]["path"].endswith("a.dcm")
    assert "labels known for 1 of 3 images" in capsys.readouterr().out


def test_unreadable_file_stops_with_its_name_or_is_skipped(tiny_run, png_folder, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(png_folder / "normal" / "00.png").save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.png" in err and "--skip-unreadable" in err and not out.exists()
    assert main(["predict", str(tiny_run), str(folder), "--out", str(out), "--skip-unreadable"]) == 0
    assert [r["path"].rsplit("/", 1)[-1] for r in _rows(out)] == ["good.png"]
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["missing_run", "x.png"], "not a run folder"),
    (["RUN", "nothing_here.png"], "nothing_here.png: no such file or folder"),
    (["RUN", "IN", "--out", "no_dir/p.csv"], "folder no_dir does not exist"),
])
def test_bad_arguments_are_one_error_line(tiny_run, png_folder, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    args = [{"RUN": str(tiny_run), "IN": str(png_folder)}.get(a, a) for a in args]
    assert main(["predict", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_test_bn_adapt_predicts_transductively_and_is_refused_below_the_minimum(tiny_run, tiny_data, tmp_path,
                                                                               capsys):
    from xferlab.use.model import load_run

    stacks = [str(tiny_data / "normal.npy"), str(tiny_data / "pneumonia.npy")]  # 40 images: above the run's 32
    out = tmp_path / "tbn.csv"
    assert main(["predict", str(tiny_run), *stacks, "--out", str(out), "--batch-size", "16", "--test-bn", "adapt"]) == 0
    rows = _rows(out)
    assert {r["test_bn"] for r in rows} == {"adapt (transductive)"}
    assert "transductive" in capsys.readouterr().out
    run = load_run(tiny_run)
    images = np.concatenate([np.load(s) for s in stacks])
    adapted = run.predict(images, batch_size=16, test_bn="adapt")
    np.testing.assert_allclose(_probs(rows), adapted, atol=1e-5, rtol=0)  # the CLI and the Python API agree
    assert not np.allclose(adapted, run.predict(images, batch_size=16), atol=1e-4)  # other statistics, other probs
    assert main(["predict", str(tiny_run), stacks[0], "--out", str(tmp_path / "plain.csv")]) == 0
    assert "test_bn" not in _rows(tmp_path / "plain.csv")[0]  # without --test-bn the CSV is as before
    status = main(["predict", str(tiny_run), str(tiny_data / "test_normal.npy"), "--out", str(tmp_path / "x.csv"),
                   "--test-bn", "adapt"])
    assert status == 2 and "8 images, fewer than the 32" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()



def test_predict_with_a_flagged_run_warns_once(tiny_run, tiny_data, tmp_path, caplog):
    import json
    import logging
    import shutil

    run = tmp_path / "flagged"
    shutil.copytree(tiny_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "flags": {"val": [], "test": ["low_specificity"]},
                                                  "degenerate": True, "flag_text": "test: specificity 0.000 < 0.05"}))
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(run), str(tiny_data / "test_normal.npy"), "--out", str(tmp_path / "p.csv"),
                     "--batch-size", "3"]) == 0  # three batches, one warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(run) in warnings[0] and "test: specificity 0.000 < 0.05" in warnings[0]


@pytest.fixture(scope="module")
def test_images(tiny_data):
    return np.concatenate([np.load(tiny_data / f"test_{c}.npy") for c in ("normal", "pneumonia")])


def _margin(probs: np.ndarray) -> np.ndarray:
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch-bf16"])
def test_every_path_predicts_what_eager_fp32_does_on_trained_weights(tiny_run, test_images, runtime):
    """fp32 paths within 1e-3 in probability and the same class wherever a 1e-3 change could not flip it; bf16
    paths within 2e-2 and the same class wherever eager fp32's top-2 margin exceeds 4e-2."""
    from xferlab.engine.accel import native_bf16
    from xferlab.use.model import load_run

    if runtime == "torch-bf16" and not native_bf16(__import__("torch").device("cpu")):
        pytest.skip("this CPU has no native bf16: the path is refused here (tested in tests/engine/test_runtime.py)")
    want = load_run(tiny_run, runtime="torch").predict(test_images)
    run = load_run(tiny_run, runtime=runtime)
    got = run.predict(test_images)
    assert run.runtime_record.path == runtime
    tolerance, margin = (2e-2, 4e-2) if runtime == "torch-bf16" else (1e-3, 2e-3)
    assert np.abs(got - want).max() <= tolerance
    sure = _margin(want) > margin
    assert sure.sum() >= len(want) // 2 and (got.argmax(1) == want.argmax(1))[sure].all()


def test_predict_says_which_path_ran_and_why(tiny_run, png_folder, tmp_path, capsys):
    assert main(["predict", str(tiny_run), str(png_folder), "--out", str(tmp_path / "p.csv"),
                 "--runtime", "onnxruntime"]) == 0
    assert "runtime: onnxruntime (asked for)" in capsys.readouterr().out


def test_the_runtime_is_chosen_once_for_repeated_predictions(tiny_run, test_images, monkeypatch):
    """The same model predicting the same amount again keeps its checked path (the audit's shortcut check predicts
    three times: one export and check, not three); more images than it was chosen for choose again."""
    import xferlab.use.model as model_mod

    calls = []
    real = model_mod.fixed_pass
    monkeypatch.setattr(model_mod, "fixed_pass", lambda *a, **kw: calls.append(kw["n_images"]) or real(*a, **kw))
    run = model_mod.load_run(tiny_run)
    first = run.predict(test_images)
    np.testing.assert_array_equal(run.predict(test_images), first)
    run.predict(test_images[:4])
    assert calls == [len(test_images)]
    run.predict(np.concatenate([test_images, test_images]))
    assert calls == [len(test_images), 2 * len(test_images)]
