"""Study fixtures (factories, so no test imports this module): a tiny study YAML over generated data, and run folders
written directly (no training) in the engine's format, for tests that need chosen predictions; a stand-in audit."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from xferlab.config import DataConfig, TrainConfig, to_yaml
from xferlab.engine.run import HISTORY_COLUMNS
from xferlab.evaluation.metrics import classification_metrics

# One torch thread: on a busy 2-core machine two threads spin against each other, measured 10x slower.
TINY_TRAIN = {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1}


def write_study(path: Path, data: Path, **values) -> Path:
    """A study YAML over `data`; resnet18 frozen + finetune, one seed, one epoch unless `values` say otherwise."""
    doc = {"name": "tiny study", "data": {"path": str(data)}, "backbones": ["resnet18"],
           "regimes": ["frozen", "finetune"], "seeds": [0], "train": dict(TINY_TRAIN), "bootstrap_resamples": 200}
    doc.update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_run_folder(run_dir: Path, data: Path, backbone: str, regime: str, seed: int, probs: dict[str, np.ndarray],
                     labels: dict[str, np.ndarray], params: int, train_seconds: float, epochs: int = 2) -> Path:
    """A finished run folder as engine.run.train writes it, with the given best-epoch predictions."""
    run_dir.mkdir(parents=True)
    cfg = TrainConfig(data=DataConfig(path=data), regime=regime, seed=seed, epochs=epochs, weights="none",
                      device="cpu").model_copy(update={"backbone": backbone})  # stand-in names need no registry entry
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    accs = {s: float((probs[s].argmax(1) == labels[s]).mean()) for s in probs}
    history = [{"epoch": e, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6,
                "val_acc": accs["val"] - 0.1 * (e < epochs), "test_loss": 0.7, "test_acc": accs["test"],
                "train_seconds": train_seconds / epochs, "eval_seconds": 0.1} for e in range(1, epochs + 1)]
    with open(run_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    metrics = {"backbone": backbone, "regime": regime, "best_epoch": epochs,
               **{s: classification_metrics(labels[s], probs[s]) for s in probs},
               "train_seconds": train_seconds, "eval_seconds": 0.1 * epochs, "feature_seconds": 0.0,
               "total_seconds": train_seconds + 1, "inference_images_per_s": 100.0, "params": params,
               "trainable_params": params if regime == "finetune" else 1026, "device": "cpu",
               "counts": {}, "class_names": ["normal", "pneumonia"]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    np.savez(run_dir / "predictions.npz", **{f"{s}_{k}": v for s in probs
                                             for k, v in (("labels", labels[s]), ("probs", probs[s]))})
    return run_dir


def predictions_with_accuracy(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Class probabilities whose argmax is right on exactly round(accuracy * N) cases."""
    n = len(labels)
    right = np.zeros(n, bool)
    right[rng.choice(n, int(round(accuracy * n)), replace=False)] = True
    predicted = np.where(right, labels, 1 - labels)
    p = rng.uniform(0.55, 0.95, n)
    p1 = np.where(predicted == 1, p, 1 - p)
    return np.c_[1 - p1, p1]


@pytest.fixture
def study_yaml(tmp_path, tiny_npy):
    """study_yaml(name='study.yaml', data=tiny_npy, **values) -> path of a tiny study YAML."""

    def make(name: str = "study.yaml", data: Path | str = tiny_npy, **values) -> Path:
        return write_study(tmp_path / name, data, **values)

    return make


@pytest.fixture(scope="module")
def trained_study(tmp_path_factory) -> Path:
    """A real two-seed study, trained once per module: resnet18 frozen and fine-tuned for one epoch on tiny phantoms."""
    from xferlab.data.phantoms import generate_phantoms
    from xferlab.study import load_study, run_study

    root = tmp_path_factory.mktemp("trained_study")
    data = generate_phantoms(root / "phantoms", size=32, n_per_class=10, n_test_per_class=6, seed=0)
    run_study(load_study(write_study(root / "study.yaml", data, seeds=[0, 1])), root / "out", progress=False)
    return root / "out"


@pytest.fixture
def fake_audit(monkeypatch):
    """A stand-in xferlab.audit whose run_audit records its calls and writes a minimal audit.json."""
    calls = []

    def run_audit(data_cfg, audit_cfg, out_dir, progress=True):
        calls.append((data_cfg, audit_cfg, out_dir))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "audit.json").write_text(json.dumps({"verdict": "fake"}))
        return {"verdict": "fake"}

    module = types.ModuleType("xferlab.audit")
    module.run_audit = run_audit
    monkeypatch.setitem(sys.modules, "xferlab.audit", module)
    return calls


@pytest.fixture
def run_folder(tiny_npy):
    """run_folder(run_dir, backbone, regime, seed, probs, labels, params, train_seconds) -> a finished run folder."""

    def make(run_dir: Path, *args, **kwargs) -> Path:
        return write_run_folder(run_dir, tiny_npy, *args, **kwargs)

    return make


@pytest.fixture
def predictions():
    """predictions(labels, accuracy, seed) -> class probabilities right on exactly round(accuracy * N) cases."""
    return lambda labels, accuracy, seed=0: predictions_with_accuracy(np.random.default_rng(seed), labels, accuracy)
