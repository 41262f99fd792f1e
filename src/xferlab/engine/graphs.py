"""CUDA graphs for training: whether a run uses them (`cuda_graphs: auto|on|off`) and which epoch trainer it gets.

At the reference study's batch 32 a GPU step is a few hundred short kernels, so launching them from Python costs as
much as running them (docs/performance/gpu.md). A CUDA graph records a step's kernels once and replays them with one
launch:
- a fixed backbone's head (frozen, adabn) trains a whole epoch per replay (xferlab.engine.headfit);
- fine-tuning replays each full-size step (`GraphedSteps`): forward under autocast, backward and a fused, capturable
  Adam step read a static input batch; a batch of another size (the short last batch of an epoch) runs eagerly on
  the same weights and optimizer state. Steps before capture run eagerly too (cuDNN autotuning, Adam's state).
Both read the learning rate from a tensor filled per step from the values CosineAnnealingLR steps through, so the
schedule is today's without a host-device sync per step. On a CPU, with torchrun (DDP), with --compile or with
`cuda_graphs: off`, fine-tuning runs xferlab.engine.loop.train_one_epoch unchanged; the head trainer runs its epoch
eagerly (same code, no capture) everywhere but under torchrun.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xferlab.data.batches import take_batches
from xferlab.engine.headfit import HeadFitSpec, HeadTrainer, lr_schedule
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager full-size steps before capture, as torch's CUDA-graph recipe warms up (cuDNN autotuning)


def use_cuda_graphs(setting: str, device: torch.device, compile: bool, distributed: bool) -> bool:
    """Resolve `cuda_graphs`: auto and on mean graphs for one CUDA process without torch.compile; a no-op on CPU."""
    if setting not in ("auto", "on", "off"):
        raise XferlabError(f"cuda_graphs must be auto, on or off, got {setting!r}")
    if setting == "off" or device.type != "cuda":
        return False
    if compile:
        if setting == "on":
            raise XferlabError("cuda_graphs 'on' and compile exclude each other (torch.compile brings its own graphs); "
                               "drop --compile or use --cuda-graphs auto")
        return False
    if distributed:  # DDP's gradient all-reduce is not captured here
        if setting == "on":
            log.warning("cuda_graphs 'on' is ignored under torchrun: DistributedDataParallel steps run eagerly")
        return False
    return True


def capturable_adam(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """torch's fused Adam with a tensor learning rate and device-side step counts: its step is a pure device
    computation, so a graph can hold it and the lr can change between replays."""
    return torch.optim.Adam(list(params), lr=torch.tensor(lr, dtype=torch.float32, device=device),
                            weight_decay=weight_decay, fused=True, capturable=True)


class CudaGraphs:
    """The real capture backend: warm-up on a side stream, capture with autocast's weight cache off (torch's advice
    for graphs), replay."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device)

    def warm(self, fn: Callable[[], object]) -> object:
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(self.side)
        return out

    def capture(self, fn: Callable[[], object]) -> tuple[Callable[[], None], object]:
        graph = torch.cuda.CUDAGraph()
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            with torch.cuda.graph(graph):
                out = fn()
        finally:
            torch.set_autocast_cache_enabled(cache)
        return graph.replay, out


@dataclass
class StepCounts:
    """How the steps of a GraphedSteps run were executed (reported in metrics.json under accel)."""

    eager: int = 0
    replayed: int = 0
    capture_failed: bool = False


class GraphedSteps:
    """Fine-tuning epochs whose full-size steps replay one captured CUDA graph; other steps run eagerly.

    `backend` is CudaGraphs on a GPU; tests pass a stand-in that replays by calling the recorded function, which
    exercises the same choice of eager, capture and replay steps on a CPU.
    """

    def __init__(self, forward: Callable, model: torch.nn.Module, inputs, labels: torch.Tensor, spec: HeadFitSpec,
                 steps_per_epoch: int, device: torch.device, backend=None, warmup_steps: int = WARMUP_STEPS):
        self.forward, self.inputs, self.labels, self.device = forward, inputs, labels, device
        self.batch_size, self.warmup_steps = spec.batch_size, warmup_steps
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = capturable_adam(params, spec.lr, spec.weight_decay, device)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.lrs = lr_schedule(spec.lr, spec.epochs * steps_per_epoch, spec.cosine)
        self.step_no = 0
        self.backend = backend if backend is not None else CudaGraphs(device)
        self.replay: Callable[[], None] | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.counts = StepCounts()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on (x, y): the work of one iteration of train_one_epoch."""
        logits = self.forward(x).float()
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The step from the graph (capturing it first when warm), or None when this step must run eagerly."""
        if self.counts.capture_failed or len(x) != self.batch_size:
            return None
        if self.replay is None:
            if self.counts.eager < self.warmup_steps:
                return None
            self._capture(x, y)
            if self.replay is None:
                return None
        self.static["x"].copy_(x, non_blocking=True)
        self.static["y"].copy_(y, non_blocking=True)
        self.replay()
        self.counts.replayed += 1
        return self.static["loss"], self.static["correct"]

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # static buffers on the device: a host-to-device copy from pageable memory cannot be captured
        self.static = {"x": x.to(self.device, copy=True), "y": y.to(self.device, copy=True)}
        self.optimizer.zero_grad(set_to_none=True)
        try:
            self.replay, (loss, correct) = self.backend.capture(lambda: self._step(self.static["x"], self.static["y"]))
        except RuntimeError as err:  # keep training, eagerly: slower, same results
            log.warning("CUDA graph capture of the training step failed (%s); training without graphs", err)
            self.counts.capture_failed, self.replay = True, None
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return
        self.static.update(loss=loss, correct=correct)

    def describe(self) -> dict:
        return {"cuda_graphs": self.counts.replayed > 0, "trainer": "graphed_steps",
                "steps_replayed": self.counts.replayed, "steps_eager": self.counts.eager}

    def train_epoch(self, batches: list[torch.Tensor]) -> tuple[float, float]:
        """Mean training loss and accuracy over the epoch's `batches`, as train_one_epoch returns them."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        for idx, x in take_batches(self.inputs, batches):
            y = self.labels[idx.to(self.labels.device)].to(self.device, non_blocking=True)
            self.lr.fill_(self.lrs[self.step_no])  # a host scalar into a device tensor: no sync
            out = self._graph_step(x, y)
            if out is None:
                step = functools.partial(self._step, x, y)
                out = self.backend.warm(step) if self.replay is None else step()
                self.counts.eager += 1
            loss_sum += out[0] * len(idx)
            correct += out[1]
            n += len(idx)
            self.step_no += 1
        loss_total, correct_total = torch.stack([loss_sum, correct.double()]).tolist()  # the epoch's one sync
        return loss_total / n, correct_total / n


def feature_batch_size(setting: int | None, train_batch: int, device: torch.device) -> int:
    """The fixed-backbone feature pass's batch: the config's, else 256 on CUDA (no gradients to keep, and a large
    batch fills the GPU) and the training batch on CPU (where a larger one only raises peak memory)."""
    if setting:
        return setting
    return CUDA_INFERENCE_BATCH if device.type == "cuda" else train_batch


CUDA_INFERENCE_BATCH = 256  # ResNet-34 at 256², bf16 inference: well within any 16 GB GPU


def epoch_trainer(cfg, model: torch.nn.Module, inputs, labels: torch.Tensor, forward: Callable, cached: bool,
                  steps_per_epoch: int, device: torch.device, distributed: bool) -> HeadTrainer | GraphedSteps | None:
    """The trainer whose `train_epoch(batches)` replaces train_one_epoch for this run (it brings its own Adam and
    schedule, with the config's settings); None when today's loop stays: fine-tuning without graphs, and any run
    under torchrun (DDP). `model` is what trains (the head alone when `cached`), `inputs` its stored train inputs."""
    graphs = use_cuda_graphs(cfg.cuda_graphs, device, cfg.compile, distributed)
    if distributed or not (cached or graphs):
        return None
    spec = HeadFitSpec(cfg.lr, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.scheduler == "cosine", graphs)
    if cached:
        return HeadTrainer(model, inputs, labels, spec)
    return GraphedSteps(forward, model, inputs, labels, spec, steps_per_epoch, device)
