"""Write the golden files of tests/golden (run once, before a change that must not change behaviour).

    PYTHONPATH=src python tests/golden/make_golden.py

For each regime: a seeded 2-epoch run on 32 px phantoms with random weights; its history.csv without the wall-clock
columns and its predictions.npz are kept. Also keeps a run folder, a study folder and an audit folder as this
version writes them (model.pt and figures dropped to keep the fixtures small), for the loading tests.
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REGIMES = ("frozen", "adabn", "finetune", "partial:1")
TIMED = ("train_seconds", "eval_seconds")


def regime_dir(regime: str) -> str:
    return regime.replace(":", "")


def untimed_history(run: Path) -> str:
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c not in TIMED]
    return "\n".join([",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]) + "\n"


def golden_config(data: Path, regime: str):
    from xferlab.config import DataConfig, TrainConfig

    # fp32, contiguous, eager: the golden files compare the arithmetic of one path across versions, whatever `auto`
    # would choose on the machine that runs them
    return TrainConfig(data=DataConfig(path=data), backbone="resnet18", weights="none", regime=regime, epochs=2,
                       batch_size=8, device="cpu", num_threads=1, seed=0, amp="off", channels_last="off",
                       runtime="torch")


def golden_data(root: Path) -> Path:
    from xferlab.data.phantoms import generate_phantoms

    return generate_phantoms(root / "phantoms", size=32, n_per_class=10, n_test_per_class=6, seed=0)


def main() -> None:
    from xferlab.engine.run import train
    from xferlab.report import build_outputs
    from xferlab.study import load_study, run_study

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = golden_data(tmp)
        for regime in REGIMES:
            run = tmp / regime_dir(regime)
            train(golden_config(data, regime), run, progress=False)
            dest = HERE / regime_dir(regime)
            dest.mkdir(exist_ok=True)
            (dest / "history.csv").write_text(untimed_history(run))
            shutil.copy(run / "predictions.npz", dest / "predictions.npz")
            if regime == "frozen":
                legacy = HERE / "legacy" / "run"
                shutil.rmtree(legacy, ignore_errors=True)
                shutil.copytree(run, legacy, ignore=shutil.ignore_patterns("model.pt", "*.png"))
        study = {"name": "legacy study", "data": {"path": str(data)}, "backbones": ["resnet18"],
                 "regimes": ["frozen"], "seeds": [0],
                 "train": {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1},
                 "bootstrap_resamples": 100,
                 "audit": {"backbone": "resnet18", "weights": "none", "resplits": 2, "epochs": 1, "permutations": 20,
                           "components": 4, "ks_components": 2, "folds": 2, "device": "cpu", "num_threads": 1}}
        (tmp / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
        out = tmp / "study"
        run_study(load_study(tmp / "study.yaml"), out, progress=False)
        build_outputs(out)
        legacy = HERE / "legacy" / "study"
        shutil.rmtree(legacy, ignore_errors=True)
        shutil.copytree(out, legacy, ignore=shutil.ignore_patterns("model.pt", "*.png", "report.html"))


if __name__ == "__main__":
    sys.exit(main())
