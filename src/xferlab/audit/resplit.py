"""The re-split experiment (the reference study's Task E, made a test): pool every split, draw R stratified,
group-aware re-splits with the original sizes, train the chosen regime on each and place the original split's test
accuracy and val-test gap in the re-split distribution.

If the original split is as good as a random one, its statistics are exchangeable with the R re-splits', so the
rank p-value (1 + #{re-splits at least as extreme}) / (R + 1) is exact.

With patient groups the re-splits keep each patient in one split (the test's answer), and R more re-splits by image
run beside them (`by_image`): the difference between the two is how much of "re-splitting closes the gap" comes from
patients seen in two splits rather than from the original split itself. The frozen regime trains a linear head on
the audit's cached embeddings, and the R + 1 heads train together as one batched model (xferlab.engine.stacked: the
same results as fit_split one split at a time, a fraction of the Python per step) — all of them when the splits have
equal train sizes (no patient groups), else one batch per train size; other regimes train the backbone anew, one
split at a time through fit_split.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import percentileofscore
from torch import nn
from tqdm.auto import tqdm

from xferlab.audit.common import check_stop, skipped
from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import create_model
from xferlab.config import AuditConfig
from xferlab.data.batches import Preprocess, as_tensor, batch_indices
from xferlab.data.dataset import ImageDataset
from xferlab.data.splits import draw_splits, split_counts
from xferlab.engine.accel import num_threads as torch_threads
from xferlab.engine.fit import BestEpoch, EpochRecord, FitState, FitTask, fit
from xferlab.engine.loop import make_adam
from xferlab.engine.run import resolve_device
from xferlab.engine.stacked import StackedHeads
from xferlab.errors import XferlabError

# Cached features are evaluated in one batch per split: the batch size does not change accuracy, and 32-row batches
# made evaluation half the cost of a frozen re-split. Images keep the training batch size (activation memory).
FEATURE_EVAL_BATCH = 4096

# make(seed) -> (module whose trainable parameters learn, forward over stored inputs)
ModelFactory = Callable[[int], tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]


def _factory(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig,
             device: torch.device) -> tuple[torch.Tensor, ModelFactory]:
    """Stored inputs (cached features or uint8 images) and a model factory for the configured regime."""
    regime = parse_regime(cfg.regime)
    classes = max(2, data.num_classes)
    if regime.cache_features:
        features = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)

        def make_head(seed: int):
            torch.manual_seed(seed)
            head = nn.Linear(features.shape[1], classes).to(device)
            return head, head

        return features, make_head

    # The weights are read once: every seed rebuilds the architecture with random weights (so the RNG draws, and
    # with them the head's initialisation, are what create_model with the weights would give) and then loads the
    # saved body. Weights 'none' keep a random body per seed.
    body = None
    if cfg.weights != "none":
        body = create_model(cfg.backbone, classes, cfg.weights, image_size=data.image_size[0]).body.state_dict()

    def make_model(seed: int):
        torch.manual_seed(seed)
        model = create_model(cfg.backbone, classes, "none", image_size=data.image_size[0])
        if body is not None:
            model.body.load_state_dict(body)
        apply_regime(model, regime)
        model.to(device)
        preprocess = Preprocess.for_input(model.spec.input, device)
        return model, lambda batch: model(preprocess(batch))

    return as_tensor(data.images), make_model


def fit_split(inputs: torch.Tensor, labels: np.ndarray, splits: np.ndarray, make: ModelFactory, cfg: AuditConfig,
              seed: int, device: torch.device) -> dict:
    """Train on one split through the engine's fit loop (Adam, cosine per step, best epoch by val accuracy as in a
    training run); accuracies at the best epoch and the per-epoch history of train, val and test accuracy."""
    model, forward = make(seed)
    parts = {s: torch.from_numpy(np.flatnonzero(splits == s)) for s in ("train", "val", "test")}
    x = {s: inputs[idx.to(inputs.device)] for s, idx in parts.items()}
    y = {s: torch.from_numpy(labels)[idx] for s, idx in parts.items()}
    optimizer = make_adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(y["train"]) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)  # one stream across the epochs
    task = FitTask(model, forward, forward, x, y, optimizer, scheduler,
                   batches=lambda epoch: batch_indices(len(x["train"]), cfg.batch_size, generator,
                                                       device=inputs.device),
                   eval_batch_size=FEATURE_EVAL_BATCH if inputs.is_floating_point() else cfg.batch_size, device=device)
    return _summary(fit(task, cfg.epochs), splits)


def _check(stop: threading.Event | None) -> None:
    check_stop(stop, "the re-split experiment")


def fit_heads_together(features: torch.Tensor, labels: np.ndarray, assignments: list[np.ndarray],
                       make: ModelFactory, cfg: AuditConfig, seeds: list[int], progress: bool = False,
                       stop: threading.Event | None = None) -> list[dict]:
    """What fit_split gives for each (assignment, seed), for linear heads on cached features, with the heads that
    have the same number of training images trained together as one batched model (xferlab.engine.stacked);
    `make` gives the frozen regime's nn.Linear heads (_factory).

    Without groups every re-split keeps the original sizes exactly, so all S = R + 1 heads train in one stack;
    group-aware re-splits only come close to the sizes (xferlab.data.splits), and each train size is its own stack.
    `stop` (set by another thread) ends the training at the next epoch with Stopped.
    """
    stacks: dict[int, list[int]] = {}
    for i, splits in enumerate(assignments):
        stacks.setdefault(int(np.count_nonzero(splits == "train")), []).append(i)
    results: dict[int, dict] = {}
    for members in stacks.values():
        stack = StackedHeads([make(seeds[i])[0] for i in members], features, labels,
                             [assignments[i] for i in members],
                             [torch.Generator().manual_seed(seeds[i]) for i in members],  # as fit_split draws
                             lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size)
        histories: list[list[EpochRecord]] = [[] for _ in members]
        for _ in tqdm(range(cfg.epochs), desc=f"{len(members)} splits ({cfg.regime}, together)", unit="epoch",
                      disable=not progress, leave=False):
            _check(stop)
            for history, record in zip(histories, stack.epoch()):
                history.append(record)
        stack.write_back()  # the heads `make` gave end trained, as fit_split's model does
        for i, history in zip(members, histories):
            results[i] = _summary(history, assignments[i])
    return [results[i] for i in range(len(assignments))]


def _summary(history: list[EpochRecord], splits: np.ndarray) -> dict:
    """A split's result: accuracies at the best epoch (BestEpoch's rule: best val accuracy, ties keep the earlier
    epoch), the val-test gap, the split sizes and the per-epoch accuracies."""
    best, state = BestEpoch(), FitState(len(history))
    for record in history:
        best.on_epoch_end(record, state)
    b = best.record
    return {"best_epoch": b.epoch, "train": b.train_acc, "val": b.val_acc, "test": b.test_acc,
            "gap": b.val_acc - b.test_acc, "sizes": split_counts(splits),
            "history": [{"epoch": r.epoch, "train": r.train_acc, "val": r.val_acc, "test": r.test_acc}
                        for r in history]}


def placement(original: float, values: np.ndarray) -> dict:
    """Where `original` falls among the re-split values: mid-rank percentile and both one-sided rank p-values."""
    r = len(values)
    below, equal = np.count_nonzero(values < original), np.count_nonzero(values == original)
    return {"original": original, "resplit_mean": float(values.mean()),
            "resplit_sd": float(values.std(ddof=1)) if r > 1 else 0.0,
            "resplit_q025": float(np.quantile(values, 0.025)), "resplit_q975": float(np.quantile(values, 0.975)),
            "percentile": float(percentileofscore(values, original, kind="mean")),  # ties count half
            "p_lower": float((1 + below + equal) / (r + 1)),  # as low or lower than the original
            "p_higher": float((1 + r - below) / (r + 1))}  # as high or higher


def _mean_history(runs: list[dict]) -> list[dict]:
    epochs = len(runs[0]["history"])
    return [{"epoch": e + 1, **{s: float(np.mean([run["history"][e][s] for run in runs]))
                                for s in ("train", "val", "test")}} for e in range(epochs)]


def _draw_resplits(data: ImageDataset, seeds: list[int], groups: np.ndarray | None) -> list[np.ndarray] | str:
    """One fresh re-split with the original sizes per seed (whole patients with `groups`); the reason in words if
    splitting fails."""
    sizes = split_counts(data.splits)
    try:
        return [draw_splits(data.labels, groups, sizes, seed, class_names=data.class_names) for seed in seeds]
    except XferlabError as err:
        return f"re-splitting failed: {err}"


def _placements(original: dict, results: list[dict], seeds: list[int], cfg: AuditConfig) -> dict:
    """The re-splits' runs, their mean history and where the original's test accuracy and gap fall among them."""
    runs = [{"seed": seed, **result} for seed, result in zip(seeds, results)]
    test = placement(original["test"], np.array([r["test"] for r in runs]))
    gap = placement(original["gap"], np.array([r["gap"] for r in runs]))
    return {"runs": [{k: v for k, v in r.items() if k != "history"} for r in runs],
            "resplit_history_mean": _mean_history(runs), "test_accuracy": test, "gap": gap,
            "test_lower": bool(test["p_lower"] <= cfg.alpha), "gap_larger": bool(gap["p_higher"] <= cfg.alpha),
            "test_higher": bool(test["p_higher"] <= cfg.alpha)}


def _train(data: ImageDataset, inputs: torch.Tensor, make: ModelFactory, cfg: AuditConfig,
           assignments: list[np.ndarray], seeds: list[int], device: torch.device, progress: bool,
           stop: threading.Event | None) -> list[dict]:
    """One result per (assignment, seed): linear heads on cached features together, other regimes one by one."""
    if parse_regime(cfg.regime).cache_features:
        return fit_heads_together(inputs, data.labels, assignments, make, cfg, seeds, progress, stop)
    pairs = tqdm(list(zip(assignments, seeds)), desc=f"re-splits ({cfg.regime})", unit="split",
                 disable=not progress, leave=False)
    return [fit_split(inputs, data.labels, splits, make, cfg, seed, device) for splits, seed in pairs]


def resplit_experiment(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig, progress: bool = True,
                       stop: threading.Event | None = None) -> dict:
    """The original split against R re-splits of the pooled data with the same sizes. `stop`: an event another
    thread may set to end the frozen regime's training early (Stopped is raised at its next epoch; only the frozen
    regime runs beside other work, audit/run.py)."""
    if cfg.resplits == 0:
        return skipped("resplits is 0")
    if not (data.splits == "test").any():
        return skipped("the dataset has no test split to compare")
    if not isinstance(data.images, np.ndarray) and not parse_regime(cfg.regime).cache_features:
        return skipped(f"regime {cfg.regime} trains on the images, which stream from disk beyond "
                       "data.memory_budget_mb; use the frozen regime (it trains on the cached embeddings) or a "
                       "larger budget")
    device = resolve_device(cfg.device)
    inputs, make = _factory(data, embeddings, cfg, device)
    seeds = [int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(cfg.resplits + 1)]
    # A linear head's matrices are far too small for threads to help: measured on a 2-core machine with a busy
    # neighbour, 20 frozen re-splits took 16 s on one torch thread and 249 s on two.
    threads = 1 if parse_regime(cfg.regime).cache_features and device.type == "cpu" else None
    with torch_threads(threads):
        resplits = _draw_resplits(data, seeds[1:], data.groups)
        if isinstance(resplits, str):
            original = _train(data, inputs, make, cfg, [data.splits], seeds[:1], device, progress, stop)[0]
            return skipped(resplits, original=original)
        # beside the patient-wise re-splits, the same number by image (their sizes equal the original's: one stack)
        by_image = [] if data.groups is None else _draw_resplits(data, seeds[1:], None)
        by_image = [] if isinstance(by_image, str) else by_image
        original, *results = _train(data, inputs, make, cfg, [data.splits, *resplits, *by_image],
                                    seeds + seeds[1:len(by_image) + 1], device, progress, stop)
    smallest = 1.0 / (cfg.resplits + 1)
    note = (f"with {cfg.resplits} re-splits the smallest p-value is {smallest:.3g}, above alpha {cfg.alpha}; "
            f"use at least {math.ceil(1 / cfg.alpha) - 1} re-splits for a test at this alpha"
            if smallest > cfg.alpha else None)
    result = {"status": "ok", "regime": cfg.regime, "resplits": cfg.resplits, "sizes": split_counts(data.splits),
              "unit": "image" if data.groups is None else "patient", "original": original,
              **_placements(original, results[:len(resplits)], seeds[1:], cfg), "note": note}
    if by_image:
        result["by_image"] = _placements(original, results[len(resplits):], seeds[1:], cfg)
    return result
