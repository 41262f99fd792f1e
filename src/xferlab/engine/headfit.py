"""Training a head on cached features without a kernel launch per step: one epoch, one CUDA graph replay.

A fixed backbone's run (frozen, adabn) trains a small linear head for epochs × ceil(n / batch) steps of a few tiny
kernels each: on a GPU every step is bound by launch latency, not arithmetic (docs/performance/gpu.md). `HeadTrainer`
computes a whole epoch on the device from a static index buffer: the epoch's shuffled order (the same DistributedSampler
batches today's loop gets) is copied in, each step reads its learning rate from a precomputed schedule (the values
CosineAnnealingLR steps through) and the optimizer is torch's fused Adam with a tensor learning rate and device-side
step counts, so nothing in the epoch needs the host. On CUDA the epoch is captured once as a CUDA graph and replayed; on
CPU (or with cuda_graphs off) the same epoch body runs eagerly. Either way the epoch's loss and accuracy are read back
in one host-device sync, as in xferlab.engine.loop.train_one_epoch, whose results it reproduces within float tolerance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR

log = logging.getLogger(__name__)

# Longest epoch captured as one graph: each step is ~15 graph nodes, and a graph of a few tens of thousands of nodes
# still captures in well under a second; a longer epoch (hundreds of thousands of images) runs eagerly, where its
# launches are a small share of its time anyway.
MAX_GRAPH_STEPS = 2048


def lr_schedule(lr: float, total_steps: int, cosine: bool) -> list[float]:
    """The learning rate of every optimizer step, as torch's CosineAnnealingLR (T_max = total_steps, stepped once
    per batch) sets it: run the scheduler itself on a throwaway optimizer, so the values are its own, rounding
    included."""
    if not cosine:
        return [lr] * total_steps
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = CosineAnnealingLR(opt, T_max=total_steps)
    out = []
    for _ in range(total_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # the scheduler warns when it is stepped before the optimizer
        sched.step()
    return out


@dataclass(frozen=True)
class HeadFitSpec:
    """What a head fit needs besides the tensors: Adam's settings, the schedule and whether to capture a graph."""

    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    cosine: bool
    graphs: bool  # capture the epoch as a CUDA graph (only on a CUDA device)


class HeadTrainer:
    """Epochs of Adam on `head` over cached `features` (N×D) and `labels` (N), all on one device.

    `train_epoch(batches)` takes the epoch's index batches (the same list train_one_epoch would get) and returns the
    mean training loss and accuracy. The batch sizes must be the same every epoch (they are: the sampler's shuffle of
    a fixed n), which is what lets one captured graph serve every epoch.
    """

    def __init__(self, head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, spec: HeadFitSpec):
        self.head, self.features, self.labels, self.spec = head, features, labels, spec
        device = features.device
        n = len(features)
        self.bounds = [(s, min(s + spec.batch_size, n)) for s in range(0, n, spec.batch_size)]
        params = [p for p in head.parameters() if p.requires_grad]
        # A tensor lr and device-side step counts (capturable) make the step a pure device computation: the graph
        # reads the lr each replay instead of baking a Python float into the captured kernel.
        self.lr = torch.tensor(spec.lr, dtype=torch.float32, device=device)
        self.optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=spec.weight_decay, fused=True,
                                          capturable=True)
        lrs = lr_schedule(spec.lr, spec.epochs * len(self.bounds), spec.cosine)
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)
        self.epoch_lrs = torch.empty(len(self.bounds), dtype=torch.float32, device=device)
        self.order = torch.empty(n, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.epoch = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.use_graph = spec.graphs and device.type == "cuda" and len(self.bounds) <= MAX_GRAPH_STEPS

    @property
    def captured(self) -> bool:
        """Whether epochs replay a CUDA graph (False on CPU, with graphs off, or after a failed capture)."""
        return self.graph is not None

    def describe(self) -> dict:
        return {"cuda_graphs": self.captured, "trainer": "head_epoch"}

    def _body(self) -> None:
        """One epoch over `order` in the static batch bounds; every operand lives on the device."""
        self.loss_sum.zero_()
        self.correct.zero_()
        for i, (start, stop) in enumerate(self.bounds):
            idx = self.order[start:stop]
            x, y = self.features.index_select(0, idx), self.labels.index_select(0, idx)
            self.lr.copy_(self.epoch_lrs[i])
            logits = self.head(x).float()
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.loss_sum += loss.detach() * (stop - start)
            self.correct += (logits.detach().argmax(1) == y).sum()

    def train_epoch(self, batches: list[torch.Tensor]) -> tuple[float, float]:
        """Mean loss and accuracy of one epoch over `batches` (index tensors on the features' device)."""
        sizes = [len(b) for b in batches]
        if sizes != [stop - start for start, stop in self.bounds]:
            raise ValueError(f"epoch batch sizes {sizes} differ from the trainer's {self.bounds}")
        self.order.copy_(torch.cat(list(batches)))
        first = self.epoch * len(self.bounds)
        self.epoch_lrs.copy_(self.lrs[first:first + len(self.bounds)])
        if self.use_graph and self.graph is None and self.epoch == 0:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        self.epoch += 1
        loss_sum, correct = torch.stack([self.loss_sum, self.correct.double()]).tolist()  # the epoch's one sync
        n = len(self.order)
        return loss_sum / n, correct / n

    def _capture(self) -> None:
        """Capture `_body` as a CUDA graph. Warm-up first (on a side stream, as torch.cuda.graphs asks: it creates
        Adam's state and the library workspaces), then the head and Adam's state are put back as they were, so the
        warm-up changes no result. A failed capture leaves the eager epoch in place, with a warning."""
        weights = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        side = torch.cuda.Stream(self.features.device)
        side.wait_stream(torch.cuda.current_stream(self.features.device))
        with torch.cuda.stream(side):
            self._body()
        torch.cuda.current_stream(self.features.device).wait_stream(side)
        self._reset(weights)
        graph = torch.cuda.CUDAGraph()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self._body()
        except RuntimeError as err:  # keep training, eagerly: slower, same results
            log.warning("CUDA graph capture of the head's epoch failed (%s); training it without a graph", err)
            torch.cuda.synchronize(self.features.device)
            self._reset(weights)
            return
        self.graph = graph

    def _reset(self, weights: dict[str, torch.Tensor]) -> None:
        """The head's weights back to `weights` and Adam's state to its initial zeros, in place (the graph holds the
        addresses): a fresh Adam state is step 0 and zero moments, so zeroing it is the same as starting anew."""
        with torch.no_grad():
            for k, v in self.head.state_dict().items():
                v.copy_(weights[k])
        for state in self.optimizer.state.values():
            for t in state.values():
                if isinstance(t, torch.Tensor):
                    t.zero_()
        self.optimizer.zero_grad(set_to_none=True)
