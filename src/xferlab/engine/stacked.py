"""Many linear heads on one set of cached features, trained in lockstep as one batched model: the re-split audit's
S = R + 1 heads (the original split and R re-splits), each with its own train / val / test assignment and seed.

Training one head through `fit` costs about a millisecond per step on a CPU, nearly all of it Python and dispatch
(the head's arithmetic is tiny), so S heads trained one after another cost S times that. Here the S heads are the
slices of one weight W [S, C, D] and bias b [S, C, 1]; a step gathers every head's batch at once (the epoch's
batches drawn up front as one [steps, S, batch] block), computes the logits with one batched matmul, and takes one
step of one torch Adam over the stacked tensors. The loss is the sum over heads of each head's mean cross-entropy,
so each slice's gradient is exactly its own head's (written in closed form, `linear_ce_gradients`); Adam is
elementwise, so one Adam over the stack is S separate Adams; every head steps the same learning-rate schedule. No
step reads anything back to the host. The result reproduces, within float tolerance, what `fit` with
train_one_epoch and CosineAnnealingLR gives each head alone: the same batches (one torch.Generator per head, drawn
as batch_indices draws them), the same training accuracy (each step's logits before its update), the same
EpochRecords.

It lives in the engine, not the audit: it is a training loop over cached features that knows nothing of the
experiment around it (any set of seeds or splits on one feature matrix can use it); the audit only draws the
splits and reads the records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xferlab.artifacts import EVAL_SPLITS
from xferlab.engine.fit import EpochRecord
from xferlab.engine.headfit import lr_schedule
from xferlab.engine.loop import make_adam
from xferlab.evaluation.timing import Timer


def step_blocks(rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """An epoch's [S, n] row order -> one contiguous [S, b] block per step (b = batch_size, the last may be short).

    The full steps come from one copy laid out [steps, S, batch_size], so each step's rows are a view, ready for
    index_select without a copy of their own."""
    heads, n = rows.shape
    full = n // batch_size
    blocks = list(rows[:, :full * batch_size].reshape(heads, full, batch_size).transpose(0, 1).contiguous().unbind(0))
    if n > full * batch_size:
        blocks.append(rows[:, full * batch_size:].contiguous())
    return blocks


def linear_ce_gradients(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients, for weight [S, C, D] and bias [S, C, 1], of the sum over heads of each head's mean
    cross-entropy, where logits [S, C, b] = bias + weight @ xᵀ (x [S, b, D], y [S, b]).

    Head s's loss involves only its own slice, so slice s gets exactly its own head's gradient: with
    g = (softmax(logits) - onehot(y)) / b, weight gets g @ x and bias the sum of g over the batch. Written out rather
    than left to autograd: the backward pass was the largest part of a step (measured 1.3 ms of ~3.7 ms for 6
    heads on a loaded CPU; these few operations take 0.3 ms); it agrees with autograd within float rounding
    (tests/engine/test_stacked.py).
    """
    b = y.shape[1]
    g = logits.softmax(1)
    g.scatter_add_(1, y.unsqueeze(1), torch.full_like(g[:, :1], -1.0))
    g.div_(b)
    return torch.bmm(g, x), g.sum(2, keepdim=True)


class StackedHeads:
    """S linear heads (`heads`, nn.Linear(D, C) each, already initialised) trained together on `features` (N×D, on
    the device) and `labels` (N). `assignments[s]` names each row's split for head s ('train', 'val', 'test';
    anything else is left out); `generators[s]` shuffles head s's training rows every epoch.

    Every head must have the same number of training rows (the same steps per epoch and the same schedule); a
    ValueError says otherwise. `epoch()` trains one epoch and evaluates val and test: one EpochRecord per head (call
    it at most `epochs` times: the cosine schedule spans that many). `write_back()` copies the trained weights into
    `heads`.
    """

    def __init__(self, heads: Sequence[nn.Linear], features: torch.Tensor, labels: np.ndarray,
                 assignments: Sequence[np.ndarray], generators: Sequence[torch.Generator], *, lr: float,
                 epochs: int, batch_size: int):
        if not len(heads) == len(assignments) == len(generators) > 0:
            raise ValueError(f"one assignment and one generator per head: {len(heads)} heads, "
                             f"{len(assignments)} assignments, {len(generators)} generators")
        device = features.device
        self.heads, self.features, self.generators, self.batch_size = list(heads), features, generators, batch_size
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        train = [torch.from_numpy(np.flatnonzero(np.asarray(a) == "train")) for a in assignments]
        sizes = sorted({len(t) for t in train})
        if len(sizes) != 1:  # unequal step counts would need a different schedule per head
            raise ValueError(f"every head needs the same number of training rows, got {sizes}")
        self.train_rows = torch.stack(train).to(device)  # [S, n], each head's rows in ascending order
        # [N, S] membership per evaluated split: evaluation computes every row's logits for every head at once and
        # reads each head's val and test rows out of them
        self.members = {s: torch.from_numpy(np.stack([np.asarray(a) == s for a in assignments], axis=1)).to(device)
                        for s in EVAL_SPLITS}
        self.counts = {s: m.sum(0).tolist() for s, m in self.members.items()}
        with torch.no_grad():
            self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]).to(device))  # [S, C, D]
            self.bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]).unsqueeze(2).to(device))
        self.optimizer = make_adam([self.weight, self.bias], lr=lr)
        self.buffer = torch.empty(len(heads) * batch_size, features.shape[1], dtype=features.dtype, device=device)
        self.steps = -(-sizes[0] // batch_size)
        self.lrs = lr_schedule(lr, epochs * self.steps, cosine=True)  # CosineAnnealingLR's own values, per step
        self.epochs_done = 0

    def _epoch_rows(self) -> torch.Tensor:
        """This epoch's shuffled training rows [S, n]: each head's randperm from its own generator, drawn on the
        host as batch_indices draws it (the same seed gives the same order on every device), moved in one copy."""
        n = self.train_rows.shape[1]
        order = torch.stack([torch.randperm(n, generator=g) for g in self.generators]).to(self.train_rows.device)
        return self.train_rows.gather(1, order)

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The step's features [S, b, D], gathered into one reused buffer: gathering into a fresh 1 MB tensor every
        step measured 1.7× the time or more on one CPU thread (likely the allocator handing back fresh pages)."""
        heads, b = rows.shape
        x = self.buffer[:heads * b]
        torch.index_select(self.features, 0, rows.view(-1), out=x)
        return x.view(heads, b, -1)

    @torch.no_grad()
    def _step(self, rows: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One Adam step of every head on its batch (rows, y: [S, b]); the logits [S, C, b] before the update."""
        x = self._gather(rows)
        # W [S, C, D] @ xᵀ rather than x @ W [S, D, C]: with C = 2 columns the [S, D, C] layout measured 4× slower
        # in bmm (forward and the weight's gradient) on one CPU thread
        logits = torch.baddbmm(self.bias, self.weight, x.transpose(1, 2))
        self.weight.grad, self.bias.grad = linear_ce_gradients(x, logits, y)
        self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.step()
        return logits

    def _train_epoch(self) -> tuple[list[float], list[float]]:
        """Each head's mean training loss and accuracy over the epoch, as train_one_epoch computes them (from each
        step's logits before its update), read back in one host-device sync."""
        rows = self._epoch_rows()
        y = self.labels[rows]  # [S, n], in the order the steps take the rows
        first = self.epochs_done * self.steps
        logits = [self._step(r, t, self.lrs[first + i])
                  for i, (r, t) in enumerate(zip(step_blocks(rows, self.batch_size),
                                                 step_blocks(y, self.batch_size)))]
        # the loss and accuracy of the epoch's steps computed once at its end (the sum of the steps' batch losses
        # is the sum over all rows), which keeps two reductions out of every step
        logits = torch.cat(logits, 2)
        loss_sum = F.cross_entropy(logits, y, reduction="none").double().sum(1)
        correct = (logits.argmax(1) == y).sum(1)
        loss_sum, correct = torch.stack([loss_sum, correct.double()]).tolist()
        n = rows.shape[1]
        return [v / n for v in loss_sum], [v / n for v in correct]

    @torch.no_grad()
    def _evaluate(self) -> dict[str, list[float]]:
        """Every head's loss and accuracy on its val and test rows: the logits of all N rows for all S heads in one
        matmul (cheaper than S gathers of each head's rows), then masked per head."""
        heads, classes, dim = self.weight.shape
        logits = F.linear(self.features, self.weight.view(heads * classes, dim), self.bias.view(-1))
        logits = logits.view(-1, heads, classes)  # [N, S, C]
        target = self.labels.view(-1, 1, 1).expand(-1, heads, 1)
        nll = -logits.log_softmax(2).gather(2, target).squeeze(2)  # [N, S]
        correct = logits.argmax(2) == self.labels.view(-1, 1)
        sums = torch.stack([torch.stack([(nll * m).sum(0), (correct & m).sum(0).double()])
                            for m in self.members.values()]).tolist()  # [split][loss, correct][head]
        values = {}
        for s, (loss, hits) in zip(self.members, sums):
            # an empty split gives NaN, as fit's evaluation of an empty split does
            values[f"{s}_loss"] = [v / c if c else float("nan") for v, c in zip(loss, self.counts[s])]
            values[f"{s}_acc"] = [v / c if c else float("nan") for v, c in zip(hits, self.counts[s])]
        return values

    def epoch(self) -> list[EpochRecord]:
        """Train one epoch and evaluate; one record per head. The seconds are the whole stack's (shared)."""
        device = self.features.device
        train_timer, eval_timer = Timer(device), Timer(device)
        with train_timer:
            train_loss, train_acc = self._train_epoch()
        self.epochs_done += 1
        with eval_timer:
            values = self._evaluate()
        return [EpochRecord(self.epochs_done, train_loss[h], train_acc[h],
                            **{k: v[h] for k, v in values.items()},
                            train_seconds=train_timer.seconds, eval_seconds=eval_timer.seconds)
                for h in range(len(self.heads))]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each slice's trained weight and bias into its nn.Linear."""
        for h, head in enumerate(self.heads):
            head.weight.copy_(self.weight[h])
            head.bias.copy_(self.bias[h, :, 0])
