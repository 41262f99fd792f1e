"""A training run, top to bottom: config -> data -> model + regime -> loop -> best epoch -> run folder.

The run folder holds config.yaml (resolved), history.csv, metrics.json, model.pt (best weights), predictions.npz
(labels and class probabilities of val and test at the best epoch, what reports compute metrics from) and curves.png.
Everything that can fail on bad input (data, backbone, weights) is checked before the folder is created, and the
folder is staged and renamed, so a run folder that exists is complete. Test data is evaluated every epoch for the
curves but never chooses anything: the best epoch is chosen on val accuracy alone.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import xferlab.backbones.zoo  # noqa: F401  (registers the backbones)
from xferlab import io
from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import TransferModel, count_parameters, create_model
from xferlab.config import TrainConfig, to_yaml
from xferlab.data.batches import Preprocess, as_tensor
from xferlab.data.dataset import ImageDataset
from xferlab.data.sources import load_dataset
from xferlab.engine.loop import evaluate, extract_features, train_one_epoch
from xferlab.errors import XferlabError
from xferlab.evaluation.metrics import classification_metrics
from xferlab.evaluation.timing import Timer, inference_throughput

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                   "train_seconds", "eval_seconds")


@dataclass
class RunResult:
    out: Path
    metrics: dict
    history: list[dict]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise XferlabError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; return the generator that orders training batches."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Run one training configuration and write its run folder to `out`."""
    t_start = time.perf_counter()
    regime = parse_regime(cfg.regime)
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data = load_dataset(cfg.data)
    generator = seed_everything(cfg.seed)
    model = create_model(cfg.backbone, data.num_classes, cfg.weights, image_size=data.image_size[0])
    apply_regime(model, regime)
    model.to(device)
    preprocess = Preprocess(model.spec.mean, model.spec.std, device)
    splits = {s: (as_tensor(x), torch.from_numpy(y)) for s in ("train", "val", "test")
              for x, y in [data.split(s)] if len(y)}

    with io.staged_dir(out, overwrite=overwrite) as stage:
        feature_timer = Timer(device)
        if regime.cache_features:
            with feature_timer:
                inputs = {s: extract_features(model.body, x, preprocess, cfg.batch_size) for s, (x, _) in splits.items()}
            forward = model.head
        else:
            inputs = {s: x for s, (x, _) in splits.items()}

            def forward(batch):
                return model(preprocess(batch))

        history, best = _fit(cfg, model, forward, inputs, {s: y for s, (_, y) in splits.items()},
                             generator, device, progress)
        model.load_state_dict(best["state"])
        throughput = inference_throughput(model, splits["val"][0], preprocess, cfg.batch_size, device)
        metrics = _metrics(cfg, data, model, history, best, feature_timer.seconds, throughput, device, t_start)
        _write_run(stage, cfg, data, model, history, metrics, best["probs"])
    return RunResult(Path(out), metrics, history)


def _fit(cfg, model: TransferModel, forward, inputs: dict, labels: dict, generator, device, progress: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(labels["train"]) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if cfg.scheduler == "cosine" else None
    history, best = [], {"val_acc": -1.0}
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{cfg.backbone} {cfg.regime}", unit="epoch",
               disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        train_timer, eval_timer = Timer(device), Timer(device)
        model.train()
        with train_timer:
            train_loss, train_acc = train_one_epoch(forward, inputs["train"], labels["train"], optimizer, scheduler,
                                                    cfg.batch_size, generator, device)
        model.eval()
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
        probs = {}
        with eval_timer:
            for s in ("val", "test"):
                if s in inputs:
                    row[f"{s}_loss"], row[f"{s}_acc"], probs[s] = evaluate(forward, inputs[s], labels[s],
                                                                             cfg.batch_size, device)
                else:
                    row[f"{s}_loss"] = row[f"{s}_acc"] = None
        row["train_seconds"], row["eval_seconds"] = train_timer.seconds, eval_timer.seconds
        history.append(row)
        if row["val_acc"] > best["val_acc"]:  # strictly better: ties keep the earlier epoch
            best = {"epoch": epoch, "val_acc": row["val_acc"], "probs": probs,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        bar.set_postfix(val_acc=f"{row['val_acc']:.3f}", best=best["epoch"])
    return history, best


def _metrics(cfg, data: ImageDataset, model, history, best, feature_seconds, throughput, device, t_start) -> dict:
    split_metrics = {s: classification_metrics(data.split(s)[1], p) for s, p in best["probs"].items()}
    return {
        "backbone": cfg.backbone,
        "regime": cfg.regime,
        "best_epoch": best["epoch"],
        "val": split_metrics["val"],
        "test": split_metrics.get("test"),
        "train_seconds": sum(r["train_seconds"] for r in history),
        "eval_seconds": sum(r["eval_seconds"] for r in history),
        "feature_seconds": feature_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "inference_images_per_s": throughput,
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "device": str(device),
        "counts": data.counts(),
        "class_names": data.class_names,
    }


def _write_run(stage: Path, cfg, data: ImageDataset, model, history, metrics, probs: dict) -> None:
    from xferlab.report.figures import curves_figure

    io.write_text(stage / "config.yaml", to_yaml(cfg))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    io.write_text(stage / "history.csv", buf.getvalue())
    io.write_json(stage / "metrics.json", metrics)
    io.save_npz(stage / "predictions.npz", **{f"{s}_{kind}": arr for s, p in probs.items()
                                             for kind, arr in (("labels", data.split(s)[1]), ("probs", p))})
    io.save_torch(stage / "model.pt", {
        "state_dict": model.state_dict(), "backbone": cfg.backbone, "class_names": data.class_names,
        "image_size": list(data.image_size), "mean": list(model.spec.mean), "std": list(model.spec.std),
    })
    fig = curves_figure(history, title=f"{cfg.backbone} · {cfg.regime}")
    io.save_figure(stage / "curves.png", fig)
    import matplotlib.pyplot as plt

    plt.close(fig)
