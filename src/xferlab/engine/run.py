"""A training run, top to bottom: config -> data -> model + regime -> loop -> best epoch -> run folder.

The run folder holds config.yaml (resolved), history.csv, metrics.json, model.pt (best weights), predictions.npz
(labels and class probabilities of val and test at the best epoch, what reports compute metrics from), written
through xferlab.artifacts; xferlab.report draws curves.png from the history.
The folder is staged (a hidden `.NAME.partial`, removed if anything fails, bad input included) and renamed when
complete, so a run folder that exists is complete. Test data is evaluated every epoch for the
curves but never chooses anything: the best epoch is chosen on val accuracy alone.

A run that goes wrong says so: a diverged loss (NaN, inf, or finite far above chance: xferlab.engine.guards) stops
it with Diverged before anything is saved; a finished run's metrics.json carries its degenerate-run flags
(xferlab.evaluation.flags.run_flags), computed as a study's results compute them.

Speed (docs/performance-real-sizes.md): images stay uint8 until a batch is on the device; fixed backbones (frozen,
adabn) run once over every split, through the fixed-backbone runtime (xferlab.engine.runtime: ONNX Runtime on the
CPU), and their cached features serve every epoch's training and evaluation; training steps take bf16 autocast and
channels_last where measured faster (xferlab.engine.accel); on CUDA the uint8 dataset stays on the GPU when it fits,
with cuDNN autotuning.

Scale-out (xferlab.engine.distributed): under torchrun every rank runs this same code on its share of each batch,
evaluation and feature extraction; only rank 0 writes the run folder. Data beyond the memory budget streams from
disk per batch (StreamedImages).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from xferlab import artifacts, files
from xferlab.artifacts import HISTORY_COLUMNS  # noqa: F401  (re-exported: the columns of history.csv)
from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import TransferModel, count_parameters, create_model
from xferlab.config import TrainConfig, to_yaml
from xferlab.data.batches import Preprocess, StreamedImages, as_tensor
from xferlab.data.dataset import ImageDataset
from xferlab.data.groups import patient_counts
from xferlab.data.sources import load_dataset
from xferlab.engine import distributed, graphs
from xferlab.engine.accel import Accel, accel_for, accelerator_scope, num_threads, place
from xferlab.engine.fit import BestEpoch, EpochRecord, FitTask, fit
from xferlab.engine.guards import DivergingLosses, FiniteLosses
from xferlab.engine.loop import adapt_batchnorm, evaluate, extract_features, make_adam
from xferlab.engine.progress import EpochProgress
from xferlab.engine.runtime import CHECK_IMAGES, RuntimeRecord, eager, first_images, fixed_pass
from xferlab.engine.testtime_bn import check_adaptable, check_split_counts, evaluate_test_bn
from xferlab.errors import XferlabError
from xferlab.evaluation.evaluate import BootstrapSettings
from xferlab.evaluation.flags import run_flags
from xferlab.evaluation.metrics import classification_metrics
from xferlab.evaluation.timing import Timer

log = logging.getLogger(__name__)


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


def train(cfg: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
          hooks: Sequence[object] = (), bootstrap: BootstrapSettings | None = None) -> RunResult:
    """Run one training configuration and write its run folder to `out` (under torchrun: every rank trains, rank 0
    writes). `hooks`: fit-loop hooks (xferlab.engine.fit) called after every epoch, after the built-in ones.
    `bootstrap`: the settings of the degenerate-run flags' AUROC interval (default: the evaluation's; a study passes
    its own, so that the flags in metrics.json equal the study's). Raises xferlab.engine.guards.Diverged, nothing
    written, when the losses diverge."""
    t_start = time.perf_counter()
    regime = parse_regime(cfg.regime)
    dist, device = distributed.init(resolve_device(cfg.device))
    accel_for(cfg, device)  # a setting this device cannot honour fails before anything is loaded
    dist.local_batch(cfg.batch_size)  # the global batch must split over the ranks: fail before loading anything
    # threads and accelerator switches (cudnn.benchmark) are the run's own: restored afterwards
    with num_threads(cfg.num_threads), accelerator_scope(), _run_folder(out, overwrite, dist) as stage:
        data = load_dataset(cfg.data)
        load_seconds = time.perf_counter() - t_start
        accel = accel_for(cfg, device, max(data.image_size))  # `auto` on a CPU depends on the image size
        if cfg.test_bn == "adapt":  # refuse before training, not after
            check_split_counts({s: len(data.indices(s)) for s in artifacts.EVAL_SPLITS}, cfg.test_bn_min_images)
        torch.manual_seed(cfg.seed)  # the head's initialisation; the sampler draws training batches from the seed
        model = create_model(cfg.backbone, data.num_classes, cfg.weights, image_size=data.image_size[0])
        if cfg.test_bn == "adapt":
            check_adaptable(model)  # a backbone without BatchNorm (a ViT) is refused before training too
        apply_regime(model, regime)
        accel.prepare(model)
        preprocess = Preprocess.for_input(model.spec.input, device, channels_last=accel.channels_last)
        splits = place(_split_inputs(data, cfg, device), device)
        prepared = _prepare_inputs(cfg, model, regime, accel, preprocess, splits, dist)
        labels = {s: y.to(prepared.inputs[s].device) for s, (_, y) in splits.items()}  # beside the inputs
        n_eval = sum(len(y) for s, y in labels.items() if s != "train")
        # test-time BatchNorm re-estimates statistics on the val/test images themselves, so they outlive `splits`
        adapt_images = {s: splits[s][0] for s in artifacts.EVAL_SPLITS if s in splits and cfg.test_bn == "adapt"}
        del splits  # for fixed backbones the images are no longer needed: their features are in `prepared`
        trainer = graphs.epoch_trainer(cfg, prepared.trained, prepared.inputs["train"], labels["train"],
                                       prepared.train_forward, prepared.cached,
                                       dist.steps_per_epoch(len(labels["train"]), cfg.batch_size), device, dist.enabled)
        records, best = _fit(cfg, model, prepared, labels, data.num_classes, device, dist, progress and dist.is_main,
                             hooks, trainer)
        history = [r.row() for r in records]
        model.load_state_dict(best.kept, strict=False)  # the rest of the weights never changed
        # images/s of the whole model: the cached backbone pass, else the last (warm) epoch's val and test pass
        throughput = prepared.images_per_s or n_eval / history[-1]["eval_seconds"]
        probs, final_eval = _final_probs(model, preprocess, prepared, labels, best, accel, cfg.batch_size, dist)
        metrics = _metrics(cfg, data, model, history, probs, best.epoch, prepared.seconds, throughput, device,
                           t_start)
        metrics.update(_loading(data, load_seconds))
        metrics.update(run_flags({s: (_labels(data, s), p) for s, p in probs.items()}, bootstrap or BootstrapSettings(),
                                 data.class_names, _split_groups(data, probs)))
        if adapt_images:  # transductive numbers beside the plain ones (xferlab.engine.testtime_bn)
            metrics["test_bn"], _ = evaluate_test_bn(
                model, adapt_images, labels, {s: _labels(data, s) for s in adapt_images},
                lambda m, images: fixed_pass(m, preprocess, first_images(images, CHECK_IMAGES), _runtime(cfg, accel),
                                             n_images=len(images), dist=dist),
                preprocess, cfg.batch_size, device, cfg.seed, cfg.test_bn_min_images, dist)
        metrics["accel"] = {**accel.describe(), **(trainer.describe() if trainer else {"cuda_graphs": False}),
                            "final_eval": final_eval}
        metrics["runtime"] = _runtime_record(cfg, prepared, metrics.get("test_bn"))
        metrics["distributed"] = {**dist.describe(), "weight_digests": _weight_digests(model, dist)}
        if stage is not None:
            _write_run(stage, cfg, data, model, history, metrics, probs)
    return RunResult(Path(out), metrics, history)


@contextlib.contextmanager
def _run_folder(out, overwrite: bool, dist: distributed.Dist) -> Iterator[Path | None]:
    """Rank 0 stages the run folder (files.staged_dir: renamed into place only when the block completes, removed if it
    fails) and yields it; the other ranks yield None. A folder that cannot be created is an error on every rank: a
    rank left alone would wait in the next collective forever."""
    with contextlib.ExitStack() as stack:
        stage, problem = None, None
        if dist.is_main:
            try:
                stage = stack.enter_context(files.staged_dir(out, overwrite=overwrite))
            except XferlabError as err:
                problem = str(err)
        problem = dist.broadcast_object(problem)
        if problem:
            raise XferlabError(problem)
        yield stage


def _weight_digests(model: TransferModel, dist: distributed.Dist) -> list[str]:
    """Every rank's digest of the saved weights and buffers; rank 0 warns if they differ (they should not)."""
    digests = dist.gather_objects(distributed.weights_digest(model))
    if len(set(digests)) > 1 and dist.is_main:
        log.warning("the ranks ended with different weights (digests %s); rank 0's are saved", digests)
    return digests


def _split_inputs(data: ImageDataset, cfg: TrainConfig,
                  device: torch.device) -> dict[str, tuple[torch.Tensor | StreamedImages, torch.Tensor]]:
    """(stored images, labels) of each non-empty split: uint8 tensors, or StreamedImages when the source streams.

    In-memory split images are copies, so the pooled array is released afterwards (keeping both would double the
    dataset's memory); labels, splits and sizes stay readable."""
    out = {}
    for s in ("train", "val", "test"):
        idx = data.indices(s)
        if not len(idx):
            continue
        if data.streamed:
            images = StreamedImages(data.images.subset(idx), cfg.data.loader_workers, pin_memory=device.type == "cuda")
        else:
            images = as_tensor(data.images[idx])
        out[s] = (images, torch.from_numpy(data.labels[idx]))
    if not data.streamed:
        data.images = data.images[:0]
    return out


def _labels(data: ImageDataset, split: str) -> np.ndarray:
    return data.labels[data.indices(split)]


def _split_groups(data: ImageDataset, splits) -> dict[str, np.ndarray] | None:
    """Patient ids of each split named, when the data has them (predictions.npz and the flags' bootstrap)."""
    return None if data.groups is None else {s: data.groups[data.indices(s)] for s in splits}


@dataclass
class _Prepared:
    """What the fit loop trains on: stored inputs per split, the functions from a batch of them to logits (for
    training: through DistributedDataParallel under torchrun), the module they train, the seconds spent preparing
    them and, for cached features, the images/s of that backbone pass."""

    inputs: dict[str, object]
    forward: Callable[[torch.Tensor], torch.Tensor]
    train_forward: Callable[[torch.Tensor], torch.Tensor]
    trained: torch.nn.Module  # the module whose weights training changes (the head alone for fixed backbones)
    seconds: float = 0.0
    images_per_s: float | None = None
    cached: bool = False  # inputs are a fixed backbone's features and `trained` is the head
    runtime: RuntimeRecord | None = None  # what ran the fixed backbone's pass (cached features only)


def _prepare_inputs(cfg, model: TransferModel, regime, accel: Accel, preprocess, splits: dict,
                    dist: distributed.Dist) -> _Prepared:
    """Fixed backbones: (AdaBN once, then) features of every split, once, shared out over the ranks. Otherwise: the
    images and a forward."""
    if not regime.cache_features:
        forward = accel.forward(model, preprocess)
        ddp = dist.wrap(model, accel.device)
        train_forward = forward if ddp is model else accel.forward(ddp, preprocess)
        return _Prepared({s: x for s, (x, _) in splits.items()}, forward, train_forward, model)
    adapt_timer, extract_timer = Timer(accel.device), Timer(accel.device)
    if regime.adapt_bn:
        with adapt_timer, accel.autocast():  # batches drawn from the run's seed, so repeated adabn runs agree
            adapt_batchnorm(model.body, splits["train"][0], preprocess, cfg.batch_size,
                            torch.Generator().manual_seed(cfg.seed), dist)
    batch = graphs.feature_batch_size(cfg.inference_batch_size, cfg.batch_size, accel.device)
    n_images = sum(len(x) for x, _ in splits.values())
    with extract_timer:  # the runtime's choice, export and check included: the pass end to end
        runtime = fixed_pass(model.body, preprocess, first_images(splits["train"][0], CHECK_IMAGES),
                             _runtime(cfg, accel), n_images=n_images, dist=dist)
        feats = {s: extract_features(runtime, x, batch, dist) for s, (x, _) in splits.items()}
    return _Prepared(feats, model.head, dist.wrap(model.head, accel.device), model.head,
                     adapt_timer.seconds + extract_timer.seconds, n_images / extract_timer.seconds, cached=True,
                     runtime=runtime.record)


def _runtime(cfg: TrainConfig, accel: Accel) -> str:
    """The fixed pass's runtime setting: `--compile` under `auto` compiles it too, as it compiles the training."""
    return "compile" if cfg.runtime == "auto" and accel.compile else cfg.runtime


def _runtime_record(cfg: TrainConfig, prepared: _Prepared, test_bn: dict | None) -> dict:
    """metrics.json's `runtime`: what ran the fixed backbone's pass, or why none ran."""
    if prepared.runtime is not None:
        return prepared.runtime.as_dict()
    reason = "no fixed-backbone pass: the backbone trains" + (
        "; test-time BatchNorm passes: see test_bn.runtime" if test_bn else "")
    return {"requested": cfg.runtime, "path": None, "reason": reason}


def _fit(cfg, model: TransferModel, prepared: _Prepared, labels: dict, num_classes: int, device,
         dist: distributed.Dist, progress: bool, hooks: Sequence[object] = (),
         trainer=None) -> tuple[list[EpochRecord], BestEpoch]:
    """The engine's fit loop (xferlab.engine.fit) with the run's optimiser, schedule and batches; the best epoch is
    chosen on val accuracy and keeps a copy of the weights training changed. `trainer`
    (xferlab.engine.graphs.epoch_trainer), when given, trains each epoch in place of train_one_epoch."""
    inputs = prepared.inputs
    optimizer = make_adam([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    n_train = len(inputs["train"])
    steps = cfg.epochs * dist.steps_per_epoch(n_train, cfg.batch_size)
    scheduler = CosineAnnealingLR(optimizer, T_max=steps) if cfg.scheduler == "cosine" else None
    task = FitTask(
        model, prepared.train_forward, prepared.forward, inputs, labels, optimizer, scheduler,
        batches=lambda epoch: dist.train_batches(n_train, cfg.batch_size, cfg.seed, epoch,
                                                 device=inputs["train"].device),
        eval_batch_size=cfg.batch_size, device=device, dist=dist,
        # every rank evaluates (and keeps) the same BatchNorm statistics
        after_train=lambda: dist.broadcast_buffers(prepared.trained),
        train_epoch=trainer.train_epoch if trainer is not None else None)
    best = BestEpoch(lambda: _changing_state(model))
    report = EpochProgress(f"{cfg.backbone} {cfg.regime}", best, enabled=progress)
    # The guards first, as the old loop checked before choosing the best epoch: a diverged epoch stops the run (its
    # staged folder removed) before any other hook sees it.
    guards = [FiniteLosses(cfg.lr), DivergingLosses(cfg.lr, num_classes)]
    return fit(task, cfg.epochs, [*guards, best, report, *hooks]), best


def _changing_state(model: TransferModel) -> dict[str, torch.Tensor]:
    """Copies of the weights and buffers that training can change: everything outside the regime's fixed modules
    (for frozen and adabn, the head alone rather than a second copy of the backbone)."""
    fixed = tuple(f + "." for f in model.frozen)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(fixed)}


def _final_probs(model: TransferModel, preprocess, prepared: _Prepared, labels: dict, best: BestEpoch, accel: Accel,
                 batch_size: int, dist: distributed.Dist) -> tuple[dict[str, np.ndarray], str]:
    """The saved val/test probabilities of the best weights (now loaded in `model`), and in what precision.

    Under bf16 autocast the epochs were evaluated, and the best one chosen, in bf16; the best weights are evaluated
    once more in fp32, the precision `predict` is checked against (xferlab.engine.runtime), so predictions.npz,
    metrics.json and `xferlab predict` on the same images agree (bf16 moved Lite0's probabilities by up to 1e-2)."""
    if accel.amp_dtype is None or prepared.cached:
        return best.record.probs, "as evaluated in the best epoch"
    model.eval()
    probs = {s: evaluate(eager(model, preprocess), prepared.inputs[s], labels[s], batch_size, accel.device, dist)[2]
             for s in best.record.probs}
    return probs, "fp32: the best weights evaluated again (the epochs were chosen on bf16 evaluations)"


def _metrics(cfg, data: ImageDataset, model, history, probs: dict, best_epoch: int, feature_seconds, throughput,
             device, t_start) -> dict:
    split_metrics = {s: classification_metrics(_labels(data, s), p) for s, p in probs.items()}
    return {
        "backbone": cfg.backbone,
        "regime": cfg.regime,
        "best_epoch": best_epoch,
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
        # patients per split and images per patient, when the data names them (xferlab.data.groups)
        "patients": None if data.groups is None else patient_counts(data.groups, data.splits, artifacts.SPLITS),
        "groups_from": data.meta.get("groups_from"),
        "excluded": data.meta.get("excluded"),  # data.exclude: {file, count} of the images left out, or None
        "class_names": data.class_names,
    }


def _loading(data: ImageDataset, seconds: float) -> dict:
    """How long reading the data took; for image files decoded into memory, their rate end to end (decoding,
    resizing, stacking; streamed files decode during the passes instead)."""
    files = data.meta.get("files") is not None and not data.streamed
    rate = len(data.labels) / seconds if files and seconds > 0 else None
    if rate is not None:
        log.info("read %d image files in %.1f s (%.1f files/s, decoding and resizing included)", len(data.labels),
                 seconds, rate)
    return {"load_seconds": seconds, "files_per_s": rate}


def _write_run(stage: Path, cfg, data: ImageDataset, model, history, metrics, probs: dict) -> None:
    """The run folder's data (artifacts.write_run); its curves are drawn by xferlab.report from the history."""
    checkpoint = {
        "state_dict": model.state_dict(), "backbone": cfg.backbone, "class_names": data.class_names,
        "image_size": list(data.image_size), "mean": list(model.spec.mean), "std": list(model.spec.std),
        # channels, intensity mapping and fixed side as well (xferlab.backbones.registry.preprocessing_for)
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(model.spec.input).items()},
    }
    predictions = {s: (_labels(data, s), p) for s, p in probs.items()}
    groups = _split_groups(data, probs)
    artifacts.write_run(stage, to_yaml(cfg), history, metrics, predictions, checkpoint, groups)
