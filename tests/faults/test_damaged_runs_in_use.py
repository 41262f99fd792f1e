"""Second fault suite, the commands that use a trained run: a damaged or hand-edited run folder makes `xferlab
predict`, `xferlab export` and `xferlab.load_run` name the file and what to rerun (the API raises the CLI's text),
and predict / export never write outside their `--out`."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import tree

import xferlab
from tinydata import write_tiny_npy
from xferlab import artifacts
from xferlab.cli import main
from xferlab.config import DataConfig, TrainConfig
from xferlab.engine.run import train
from xferlab.errors import XferlabError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, test images): a frozen ResNet-18 with random backbone weights on 32 px npy data, one epoch."""
    root = tmp_path_factory.mktemp("use_faults")
    data = write_tiny_npy(root / "data", n=12, n_test=4, size=32)
    cfg = TrainConfig(data=DataConfig(path=data), backbone="resnet18", weights="none", regime="frozen", epochs=1,
                      batch_size=8, device="cpu", num_threads=1)
    train(cfg, root / "run", progress=False)
    return root / "run", data / "test_pneumonia.npy"


def _link_weights(src: str, dst: str) -> None:
    (os.link if src.endswith("model.pt") else shutil.copy2)(src, dst)


@pytest.fixture
def run(tiny, tmp_path) -> Path:
    """A private copy of the run (model.pt hard-linked: a test that edits it unlinks it first)."""
    out = tmp_path / "run"
    shutil.copytree(tiny[0], out, copy_function=_link_weights)
    return out


@pytest.fixture
def images(tiny) -> Path:
    return tiny[1]


def _both(fails, run: Path, images: Path, tmp_path: Path, *named: str) -> None:
    """predict and export both fail with the contract, and load_run raises the same text."""
    err = fails(["predict", run, images, "--out", tmp_path / "p.csv"], tmp_path, *named)
    assert fails(["export", run, "--out", tmp_path / "m.onnx"], tmp_path, *named) == err
    with pytest.raises(XferlabError) as caught:
        xferlab.load_run(run)
    assert f"error: {caught.value}\n" == err


# ---- saved folders ------------------------------------------------------------------------------------------------

def test_a_truncated_metrics_json(run, images, tmp_path, fails):
    path = run / artifacts.METRICS_JSON
    path.write_text(path.read_text()[:40])
    _both(fails, run, images, tmp_path, "metrics.json", "not valid JSON", "rerun `xferlab train`")


def test_predictions_of_the_wrong_shape(run, images, tmp_path, fails):
    path = run / artifacts.PREDICTIONS_NPZ
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["test_probs"] = np.full((len(arrays["test_labels"]), 3), 1 / 3)  # three classes, the run has two
    np.savez(path, **arrays)
    _both(fails, run, images, tmp_path, "predictions.npz", "test_probs has shape", "rerun `xferlab train`")


def _edit_checkpoint(run: Path, edit) -> None:
    path = run / artifacts.MODEL_PT
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    path.unlink()  # hard-linked to the shared run's file
    torch.save(ckpt, path)


def test_a_model_pt_saved_for_another_backbone(run, images, tmp_path, fails):
    _edit_checkpoint(run, lambda c: c.update(backbone="densenet121"))
    _both(fails, run, images, tmp_path, "model.pt", "'densenet121'", "'resnet18'")


def test_a_model_pt_with_another_class_count(run, images, tmp_path, fails):
    def three_classes(ckpt):
        ckpt["state_dict"]["head.weight"] = torch.zeros(3, 512)
        ckpt["state_dict"]["head.bias"] = torch.zeros(3)

    _edit_checkpoint(run, three_classes)
    _both(fails, run, images, tmp_path, "model.pt", "3 outputs", "2 classes")


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path(__file__).parent / 'PWNED_USE'}",))


def test_a_model_pt_that_would_run_code_is_refused_unrun(run, images, tmp_path, fails):
    marker = Path(__file__).parent / "PWNED_USE"
    (run / artifacts.MODEL_PT).unlink()
    with open(run / artifacts.MODEL_PT, "wb") as f:
        pickle.dump({"state_dict": _RunsCode()}, f)
    _both(fails, run, images, tmp_path, "model.pt", "weights-only")
    assert not marker.exists()


def test_a_hand_edited_config_yaml(run, images, tmp_path, fails):
    path = run / artifacts.CONFIG_YAML
    path.write_text(path.read_text() + "learning_rate: 0.5\n")
    _both(fails, run, images, tmp_path, "config.yaml", "unknown key 'learning_rate'", "rerun")


# ---- outputs: nothing written outside --out -----------------------------------------------------------------------

def test_out_in_a_missing_folder(run, images, tmp_path, fails):
    fails(["predict", run, images, "--out", tmp_path / "nowhere" / "p.csv"], tmp_path, "nowhere", "does not exist")
    fails(["export", run, "--out", tmp_path / "nowhere" / "m.onnx"], tmp_path, "nowhere", "existing folder")


def test_out_that_is_an_existing_folder(run, images, tmp_path, fails):
    (tmp_path / "taken").mkdir()
    fails(["predict", run, images, "--out", tmp_path / "taken"], tmp_path, "taken", "is a folder")
    fails(["export", run, "--out", tmp_path / "taken"], tmp_path, "taken", "is a folder")


def test_out_in_a_read_only_folder(run, images, tmp_path, fails, monkeypatch):
    from xferlab import files

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real = files._create_temp

    def read_only(path):  # root ignores the mode bits: the file system says what a user's read-only folder would
        if Path(path).parent == locked:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(files, "_create_temp", read_only)
    try:
        fails(["predict", run, images, "--out", locked / "p.csv"], tmp_path, "locked", "not writable")
        fails(["export", run, "--out", locked / "m.onnx"], tmp_path, "locked", "not writable")
    finally:
        locked.chmod(0o755)


def test_out_with_dot_dot_components_writes_only_there(run, images, tmp_path, capsys):
    (tmp_path / "a" / "b").mkdir(parents=True)
    before = tree(tmp_path)
    out = tmp_path / "a" / "b" / ".." / ".." / "p.csv"  # = tmp_path / "p.csv"
    assert main(["predict", str(run), str(images), "--out", str(out)]) == 0
    assert tree(tmp_path) - before == {"p.csv"} and not before - tree(tmp_path)
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("path,") and len(rows) == 1 + 4


def test_run_folder_untouched_by_a_refused_export(run, tmp_path, fails):
    """export's default --out is RUN/model.onnx: a run whose backbone was swapped is refused before anything lands."""
    _edit_checkpoint(run, lambda c: c.update(backbone="densenet121"))
    fails(["export", run], run, "model.pt", "'densenet121'")
