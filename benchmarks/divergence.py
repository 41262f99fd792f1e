"""False alarms and catches of the divergence rule (xferlab.engine.guards), the table of docs/runs-that-go-wrong.md.

    PYTHONPATH=src python benchmarks/divergence.py [--demo runs/demo] [--out runs/bench_divergence] [--seeds 6]

1. Healthy runs: for each regime (frozen, adabn, finetune, partial:1), 30 seeded 4-epoch runs at learning rates 1e-4,
   3e-4, 1e-3, 3e-3 and 1e-2 (6 seeds each: seeds 0-2 EfficientNet-Lite0 with its ImageNet weights, seeds 3-5
   ResNet-18 with random weights, the only weights offline), batch 8, on 32 px phantoms (20 train-pool images per
   class: 16 train + 4 val, 10 test). A run the rule stops is a false alarm; the table gives the largest training and
   val loss in multiples of chance (ln K) and the largest growth of a loss over its earlier minimum, beside the
   thresholds.
2. The golden runs (tests/golden) and the demo's runs (--demo: a finished `xferlab demo` folder, run first when it is
   missing): the rule applied to every epoch of their saved history.csv.
3. Catches: lr 1e12 on the phantoms and on a folder of 16-bit PNGs (the issue's cases), and learning rates from 0.1
   to 1e6 (fine-tuning and frozen, both backbones): which rule stops each, at which epoch.
Not run by the tests (about 10 minutes on 2 CPU cores, the demo's first run apart); tests/engine/test_guards.py tests
the rule and its catches on a few cases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from xferlab.config import DataConfig, TrainConfig
from xferlab.data.phantoms import generate_phantoms
from xferlab.engine.accel import num_threads
from xferlab.engine.guards import (
    GROWTH_FACTOR,
    GROWTH_FLOOR_MULTIPLE,
    TRAIN_CHANCE_MULTIPLE,
    VAL_CHANCE_MULTIPLE,
    Diverged,
    divergence,
)
from xferlab.engine.run import train
from xferlab.files import read_yaml

REGIMES = ("frozen", "adabn", "finetune", "partial:1")
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
HIGH_RATES = (0.1, 1.0, 10.0, 1e3, 1e6)
BACKBONES = (("efficientnet_lite0", "imagenet"), ("resnet18", "none"))  # offline weights; random weights
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_divergence"))
    p.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished demo folder (run when missing)")
    p.add_argument("--seeds", type=int, default=6, help="seeds per learning rate and regime (half per backbone)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-per-class", type=int, default=20)
    return p.parse_args(argv)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def chance(num_classes: int = 2) -> float:
    return math.log(num_classes)


def growth(losses: list[float]) -> float:
    """The largest ratio of a loss to the lowest loss of the epochs before it."""
    return max((losses[i] / min(losses[:i]) for i in range(1, len(losses))), default=1.0)


def loss_stats(history: list[dict], num_classes: int = 2) -> dict:
    """The largest training and val loss (multiples of chance) and growth of a run's history."""
    train_losses = [r["train_loss"] for r in history]
    val_losses = [r["val_loss"] for r in history if r.get("val_loss") is not None]
    return {"train_x_chance": max(train_losses) / chance(num_classes),
            "val_x_chance": max(val_losses, default=0.0) / chance(num_classes),
            "growth": max(growth(train_losses), growth(val_losses) if val_losses else 1.0)}


def stopped_by_rule(history: list[dict], num_classes: int, lr: float):
    """The rule applied to every epoch of a saved history, as the fit loop applies it: the first Divergence, or None."""
    for n in range(1, len(history) + 1):
        found = divergence(history[:n], num_classes, lr)
        if found is not None:
            return found
    return None


def _train(cfg: TrainConfig, out: Path) -> tuple[list[dict], Diverged | None, dict | None]:
    """(history, the Diverged that stopped it or None, metrics.json of a finished run or None)."""
    rows: list[dict] = []

    class Record:
        def on_epoch_end(self, record, state):
            rows.append(record.row())

    try:
        with num_threads(1):
            result = train(cfg, out, overwrite=True, progress=False, hooks=[Record()])
    except Diverged as err:
        return err.history, err, None
    return rows, None, result.metrics


def healthy_runs(args, data: Path) -> list[dict]:
    """Part 1: the sweep of seeded runs at usual learning rates, one row per regime."""
    table = []
    for regime in REGIMES:
        stats, alarms, t0 = [], [], time.perf_counter()
        for lr in LEARNING_RATES:
            for seed in range(args.seeds):
                backbone, weights = BACKBONES[seed * len(BACKBONES) // args.seeds]
                cfg = TrainConfig(data=DataConfig(path=data), backbone=backbone, weights=weights, regime=regime,
                                  epochs=args.epochs, batch_size=8, lr=lr, seed=seed, device="cpu", num_threads=1)
                history, err, _ = _train(cfg, args.out / "run")
                stats.append(loss_stats(history))
                if err is not None:
                    alarms.append(f"{backbone} lr {lr:g} seed {seed}: {err.divergence.reason()}")
        table.append({"regime": regime, "runs": len(stats), "false_alarms": len(alarms), "alarms": alarms,
                      **{k: max(s[k] for s in stats) for k in stats[0]}, "seconds": time.perf_counter() - t0})
        print(f"{regime}: {table[-1]}", flush=True)
    return table


def saved_runs(folders: list[Path]) -> dict:
    """Part 2: the rule over saved run folders' histories (golden runs, the demo's)."""
    from xferlab.checks import read_history

    stats, alarms = [], []
    for folder in folders:
        history = read_history(folder / "history.csv")
        config = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
        found = stopped_by_rule(history, 2, float(config.get("lr", 1e-3)))
        stats.append(loss_stats(history))
        if found is not None:
            alarms.append(f"{folder.name}: {found.reason()}")
    return {"runs": len(folders), "false_alarms": len(alarms), "alarms": alarms,
            **{k: max(s[k] for s in stats) for k in stats[0]}}


def demo_runs(demo: Path) -> list[Path]:
    """The demo's run folders (`xferlab demo` run first when `demo` holds no finished demo)."""
    if not (demo / "results.json").is_file():
        from xferlab.demo import run_demo

        run_demo(demo, progress=False)
    return sorted(p for p in (demo / "runs").iterdir() if (p / "history.csv").is_file())


def sixteen_bit_pngs(phantoms: Path, out: Path) -> Path:
    """The phantoms as 16-bit grayscale PNGs in the folder layout (train/<class>/, test/<class>/): 8-bit values
    spread over 0..65535, as a scanner's export holds them."""
    from PIL import Image

    for npy in sorted(phantoms.glob("*.npy")):
        split, name = ("test", npy.stem[5:]) if npy.stem.startswith("test_") else ("train", npy.stem)
        folder = out / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(np.load(npy)):
            Image.fromarray(pixels.astype(np.uint16) * 257).save(folder / f"{i:03d}.png")
    return out


def _finished(history: list[dict], metrics: dict) -> str:
    flagged = "flagged degenerate" if metrics["degenerate"] else "not flagged"
    return f"finished: largest training loss {loss_stats(history)['train_x_chance']:.3g} × chance, {flagged}"


def catches(args, data: Path, pngs: Path) -> list[dict]:
    """Part 3: what stops runs at learning rates far too high."""
    cases = [(name, path, regime, backbone, weights, 1e12) for name, path in (("phantoms", data), ("16-bit PNGs", pngs))
             for regime in ("frozen", "finetune") for backbone, weights in BACKBONES]
    for regime in ("frozen", "finetune"):
        for backbone, weights in BACKBONES:
            cases += [("phantoms", data, regime, backbone, weights, lr) for lr in HIGH_RATES]
    rows = []
    for name, path, regime, backbone, weights, lr in cases:
        fmt = "folder" if path == pngs else "npy"
        cfg = TrainConfig(data=DataConfig(path=path, format=fmt), backbone=backbone, weights=weights, regime=regime,
                          epochs=args.epochs, batch_size=8, lr=lr, seed=0, device="cpu", num_threads=1)
        history, err, metrics = _train(cfg, args.out / "run")
        d = err.divergence if err else None
        rows.append({"data": name, "regime": regime, "backbone": backbone, "lr": lr,
                     "stopped": d is not None, "epoch": d.epoch if d else None, "rule": d.rule if d else None,
                     "reason": d.reason() if d else _finished(history, metrics),
                     "error": str(err) if err else None})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = generate_phantoms(args.out / "phantoms", size=args.size, n_per_class=args.n_per_class,
                             n_test_per_class=args.n_per_class // 2, seed=0)
    pngs = sixteen_bit_pngs(data, args.out / "pngs16")
    golden = [p for p in sorted(GOLDEN.iterdir()) if (p / "history.csv").is_file()]
    golden += [p for p in sorted((GOLDEN / "legacy").rglob("history.csv"))]
    result = {
        "machine": f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()}",
        "thresholds": {"train_chance_multiple": TRAIN_CHANCE_MULTIPLE, "val_chance_multiple": VAL_CHANCE_MULTIPLE,
                       "growth_factor": GROWTH_FACTOR, "growth_floor_multiple": GROWTH_FLOOR_MULTIPLE},
        "healthy": healthy_runs(args, data),
        "golden": saved_runs([p if p.is_dir() else p.parent for p in golden]),
        "demo": saved_runs(demo_runs(args.demo)),
        "catches": catches(args, data, pngs),
    }
    result["seconds"] = time.perf_counter() - t0
    (args.out / "divergence.json").write_text(json.dumps(result, indent=2))
    print_tables(result)
    return 0


def print_tables(result: dict) -> None:
    print("\n| runs | count | false alarms | max train loss (× chance) | max val loss (× chance) | max growth |")
    print("|---|---|---|---|---|---|")
    for row in result["healthy"]:
        print(f"| {row['regime']}, lr 1e-4..1e-2 | {row['runs']} | {row['false_alarms']} | "
              f"{row['train_x_chance']:.3g} | {row['val_x_chance']:.3g} | {row['growth']:.3g} |")
    for name in ("golden", "demo"):
        row = result[name]
        print(f"| {name} runs | {row['runs']} | {row['false_alarms']} | {row['train_x_chance']:.3g} | "
              f"{row['val_x_chance']:.3g} | {row['growth']:.3g} |")
    t = result["thresholds"]
    print(f"| threshold | | | {t['train_chance_multiple']:g} | {t['val_chance_multiple']:g} | "
          f"{t['growth_factor']:g} (above {t['growth_floor_multiple']:g} × chance) |")
    print("\n| data | regime | backbone | lr | stopped by | what |")
    print("|---|---|---|---|---|---|")
    for row in result["catches"]:
        print(f"| {row['data']} | {row['regime']} | {row['backbone']} | {row['lr']:g} | {row['rule'] or '-'} | "
              f"{row['reason']} |")
    print(f"\n{result['seconds']:.0f} s on {result['machine']}")


if __name__ == "__main__":
    raise SystemExit(main())
