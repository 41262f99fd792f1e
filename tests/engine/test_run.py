import csv
import json

import numpy as np
import pytest
import torch

from tinydata import write_tiny_folder
from xferlab.cli import main
from xferlab.config import DataConfig, TrainConfig, build, read_yaml
from xferlab.engine.run import HISTORY_COLUMNS, train
from xferlab.evaluation.metrics import classification_metrics


def _cfg(path, **kw):
    base = dict(data=DataConfig(path=path), backbone="resnet18", weights="none", regime="frozen", epochs=3,
                batch_size=8, device="cpu")
    return TrainConfig(**{**base, **kw})


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("regime", ["frozen", "finetune"])
def test_a_run_writes_a_complete_run_folder(tiny_npy, tmp_path, regime):
    train(_cfg(tiny_npy, regime=regime), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    # the engine writes data; curves.png is drawn by xferlab.report (the CLI's train, build_outputs)
    assert {p.name for p in run.iterdir()} == {"config.yaml", "history.csv", "metrics.json", "model.pt",
                                               "predictions.npz"}
    rows = _history(run)
    assert tuple(rows[0]) == HISTORY_COLUMNS and len(rows) == 3
    m = json.loads((run / "metrics.json").read_text())
    val_accs = [float(r["val_acc"]) for r in rows]
    assert m["best_epoch"] == val_accs.index(max(val_accs)) + 1  # first epoch with the best val accuracy
    assert m["val"]["accuracy"] == pytest.approx(max(val_accs))
    for split in ("val", "test"):
        assert set(m[split]) == {"accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity"}
    assert m["inference_images_per_s"] > 0 and m["train_seconds"] > 0
    assert m["trainable_params"] < m["params"] if regime == "frozen" else m["trainable_params"] == m["params"]
    # what ran the fixed backbone's pass, and why (a tiny pass: too little work for an export to pay back)
    assert m["runtime"]["requested"] == "auto"
    if regime == "frozen":
        assert m["runtime"]["path"] == "torch" and "GFLOP" in m["runtime"]["reason"]
    else:
        assert m["runtime"]["path"] is None and "the backbone trains" in m["runtime"]["reason"]
    assert m["accel"]["auto_rule"].startswith("cpu: fp32")  # 32 px: under CPU_BF16_MIN_SIDE whatever the CPU
    # the saved config is complete: it rebuilds the same run configuration
    assert build(TrainConfig, read_yaml(run / "config.yaml")) == _cfg(tiny_npy, regime=regime)
    saved = np.load(run / "predictions.npz")
    assert classification_metrics(saved["test_labels"], saved["test_probs"]) == m["test"]
    # model.pt holds the best epoch's weights and reloads with weights-only unpickling
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["class_names"] == ["normal", "pneumonia"] and "head.weight" in ckpt["state_dict"]



def test_a_learnable_task_is_learned(tiny_npy, tmp_path):
    res = train(_cfg(tiny_npy, regime="finetune", epochs=4, lr=3e-3), tmp_path / "run", progress=False)
    assert res.metrics["val"]["accuracy"] >= 0.9


@pytest.mark.parametrize("regime", ["frozen", "partial:1"])
def test_the_same_seed_gives_the_same_history(tiny_npy, tmp_path, regime):
    """history.csv is identical on CPU, byte for byte, once the two timing columns are left out."""
    def untimed(run):
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in _history(run)]

    for name in ("a", "b"):
        train(_cfg(tiny_npy, regime=regime, epochs=2), tmp_path / name, progress=False)
    assert untimed(tmp_path / "a") == untimed(tmp_path / "b")
    assert untimed(tmp_path / "a") != [], "history must not be empty"


def test_cached_features_train_the_head_like_the_uncached_path(tiny_npy, tmp_path):
    """The frozen regime's feature cache is an optimisation only: same seed, same head, same curves."""
    from xferlab.backbones.regimes import Regime

    cached = train(_cfg(tiny_npy), tmp_path / "cached", progress=False)
    import xferlab.backbones.regimes as regimes

    original = Regime.cache_features
    try:
        Regime.cache_features = property(lambda self: False)
        uncached = train(_cfg(tiny_npy), tmp_path / "uncached", progress=False)
    finally:
        Regime.cache_features = original
    assert regimes.parse_regime("frozen").cache_features
    for a, b in zip(cached.history, uncached.history):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4)


def test_an_existing_run_folder_is_not_overwritten_silently(tiny_npy, tmp_path):
    (tmp_path / "run").mkdir()
    code = main(["train", "--data", str(tiny_npy), "--out", str(tmp_path / "run"), "--weights", "none",
                 "--epochs", "1"])
    assert code == 2


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet81"], "did you mean 'resnet18'"),
    (["--regime", "frozn"], "did you mean 'frozen'"),
    (["--batch-size", "0"], "--batch-size 0 is out of range"),
    (["--lr", "-1"], "--lr -1.0 is out of range"),
    (["--epochs", "0"], "--epochs 0 is out of range"),
    (["--weights", "imagenet", "--backbone", "resnet34"], "resnet34-b627a593.pth"),
])
def test_bad_settings_are_one_line_errors_and_leave_no_run_folder(tiny_npy, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    base = ["train", "--data", str(tiny_npy), "--out", str(out), "--epochs", "1"]
    if "--weights" not in args:
        base += ["--weights", "none"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_unknown_config_key_is_named(tiny_npy, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data:\n  path: {tiny_npy}\nbackbone: resnet18\nlearning_rate: 0.1\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "run.yaml line 4: unknown key 'learning_rate'" in capsys.readouterr().err


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  path: x\nbackbone: [resnet18\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "line" in capsys.readouterr().err


def test_cli_train_runs_from_a_yaml_config(tiny_npy, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data:\n  path: {tiny_npy}\nweights: none\nepochs: 1\nbatch_size: 16\ndevice: cpu\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run"), "--regime", "finetune"]) == 0
    saved = read_yaml(tmp_path / "run" / "config.yaml")
    assert saved["regime"] == "finetune" and saved["batch_size"] == 16
    assert "val acc" in capsys.readouterr().out


@pytest.mark.parametrize("regime,workers", [("finetune", 0), ("adabn", 2)])
def test_streaming_from_disk_gives_the_in_memory_results(tmp_path, regime, workers):
    """A memory budget of 0 streams every batch from the PNG files (DataLoader workers decode them); the run's
    predictions and history are those of the in-memory run."""
    folder = write_tiny_folder(tmp_path / "pngs")
    runs = {}
    for name, budget in (("memory", None), ("streamed", 0)):
        data = DataConfig(path=folder, format="folder", memory_budget_mb=budget, loader_workers=workers)
        runs[name] = train(_cfg(folder, data=data, regime=regime, epochs=2, num_threads=1), tmp_path / name,
                           progress=False)
    memory, streamed = (np.load(tmp_path / name / "predictions.npz") for name in ("memory", "streamed"))
    for key in memory.files:
        np.testing.assert_array_equal(memory[key], streamed[key])
    untimed = [[{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in run.history]
               for run in runs.values()]
    assert untimed[0] == untimed[1]
    # the files read into memory report their rate end to end; streamed ones decode during the passes instead
    assert runs["memory"].metrics["files_per_s"] > 0 and runs["streamed"].metrics["files_per_s"] is None


def test_the_command_line_sets_the_memory_budget_and_loader_workers(tmp_path):
    folder = write_tiny_folder(tmp_path / "pngs")
    assert main(["train", "--data", str(folder), "--format", "folder", "--memory-budget-mb", "0", "--loader-workers",
                 "0", "--backbone", "resnet18", "--weights", "none", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    saved = read_yaml(tmp_path / "run" / "config.yaml")["data"]
    assert saved["memory_budget_mb"] == 0 and saved["loader_workers"] == 0


def test_a_file_that_breaks_while_streaming_ends_in_one_error_line(tmp_path, capsys):
    """A truncated JPEG passes the header scan (Pillow cannot verify JPEGs without decoding them) and fails when a
    DataLoader worker decodes it: the error is the one line naming the file, not the worker's traceback."""
    from PIL import Image

    folder = write_tiny_folder(tmp_path / "pngs")
    broken = folder / "train" / "normal" / "broken.jpg"
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(broken)
    broken.write_bytes(broken.read_bytes()[:200])
    code = main(["train", "--data", str(folder), "--format", "folder", "--memory-budget-mb", "0", "--loader-workers",
                 "1", "--backbone", "resnet18", "--weights", "none", "--regime", "finetune", "--epochs", "1",
                 "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "broken.jpg" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_runs_thread_count_does_not_outlive_the_run(tiny_npy, tmp_path):
    before = torch.get_num_threads()
    train(_cfg(tiny_npy, epochs=1, num_threads=1 if before != 1 else 2), tmp_path / "run", progress=False)
    assert torch.get_num_threads() == before


def test_a_bf16_run_saves_fp32_probabilities_of_its_best_weights(tiny_npy, tmp_path, monkeypatch):
    """Epochs are evaluated under bf16 autocast; what is saved (predictions.npz, metrics.json) is the best weights
    evaluated in fp32, as `predict` gives them."""
    import xferlab.engine.accel as accel_mod
    from xferlab import artifacts
    from xferlab.use.model import load_run
    from xferlab.use.predict import predict_inputs

    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: True)  # emulated where the CPU lacks it: slow, exact
    result = train(_cfg(tiny_npy, regime="finetune", epochs=2, amp="bf16"), tmp_path / "run", progress=False)
    assert result.metrics["accel"]["amp"] == "bf16" and result.metrics["accel"]["final_eval"].startswith("fp32")
    saved = artifacts.read_run(tmp_path / "run").predictions["test"][1]
    run = load_run(tmp_path / "run", runtime="torch")
    predicted = predict_inputs(run, [tiny_npy / "test_normal.npy", tiny_npy / "test_pneumonia.npy"], batch_size=8,
                               progress=False)
    np.testing.assert_allclose(predicted.probs, saved, atol=1e-5, rtol=0)
    labels = artifacts.read_run(tmp_path / "run").predictions["test"][0]
    assert result.metrics["test"]["accuracy"] == pytest.approx(float((saved.argmax(1) == labels).mean()))
