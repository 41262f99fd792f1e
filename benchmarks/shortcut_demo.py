"""The shortcut demonstration (docs/explanations.md): one backbone trained on shortcut phantoms and on unshifted ones.

    PYTHONPATH=src python benchmarks/shortcut_demo.py [--out runs/shortcut_demo] [--backbone efficientnet_lite0]

Both datasets share seed, size and counts; the shortcut one burns a marker into 90 % of pneumonia and 10 % of normal
train/val images and none into test. For each trained run: val and test accuracy, the share of Grad-CAM mass on the
marker box of the shortcut phantoms' val images that carry one (both runs are explained on the same images), and the
audit's shortcut check on those val images. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from xferlab.cli import main as xferlab
from xferlab.data.config import DataConfig
from xferlab.data.phantoms import generate_phantoms
from xferlab.data.sources import load_dataset
from xferlab.explain.audit_check import audit_shortcut


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/shortcut_demo"))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--regime", default="frozen")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-per-class", type=int, default=300)
    p.add_argument("--n-test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    data = {shift: generate_phantoms(args.out / f"phantoms_{shift}", size=args.size, n_per_class=args.n_per_class,
                                     n_test_per_class=args.n_test_per_class, shift=shift, seed=args.seed)
            for shift in ("shortcut", "none")}
    shortcut_data = load_dataset(DataConfig(path=data["shortcut"]))
    for shift, folder in data.items():
        run = args.out / f"{args.backbone}-{args.regime}-trained-on-{shift}"
        if not (run / "metrics.json").is_file():
            assert xferlab(["train", "--data", str(folder), "--backbone", args.backbone, "--weights", args.weights,
                            "--regime", args.regime, "--epochs", str(args.epochs), "--seed", str(args.seed),
                            "--device", "cpu", "--num-threads", str(args.threads), "--out", str(run)]) == 0
        explained = args.out / f"explain-{shift}"
        if not (explained / "explain.json").is_file():
            assert xferlab(["explain", str(run), "--data", str(data["shortcut"]), "--out", str(explained),
                            "--overwrite", "--max-images", "1000"]) == 0
        m = json.loads((run / "metrics.json").read_text())
        ex = json.loads((explained / "explain.json").read_text())
        val = [r for r in ex["splits"]["val"]["images"] if r["marker_share"] is not None]
        marker = float(np.mean([r["marker_share"] for r in val]))
        border = float(np.mean([r["border_share"] for r in val]))
        check = audit_shortcut(shortcut_data, "npy", data["shortcut"], run, alpha=0.05, seed=args.seed)
        kind = "shortcut" if shift == "shortcut" else "clean"
        print(f"trained on {shift}: val acc {m['val']['accuracy']:.3f} ({kind} val), "
              f"test acc {m['test']['accuracy']:.3f}; on the {len(val)} marked shortcut-val images: CAM mass on "
              f"the marker {marker:.3f}, in the border band {border:.3f} (layer {ex['cam_layer']}); shortcut check: "
              f"p = {check['p_value']:.3g}, alarm {check['alarm']}, largest change zone {check['zone_change']:.3f} "
              f"vs region of interest {check['roi_change']:.3f} (zone larger on {check['zone_wins']:.2f} of "
              f"{check['n_images']} images), zone share {check['zone_share']:.3f} on area {check['zone_area']:.3f}, "
              f"CAM mass on markers {check.get('marker_share')}")


if __name__ == "__main__":
    main()
