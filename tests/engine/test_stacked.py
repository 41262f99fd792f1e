"""Linear heads trained together (xferlab.engine.stacked) against the one fit loop, one head at a time: the same
EpochRecords (accuracies exact, losses within float tolerance); the step layout; heads that cannot share a stack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xferlab.data.batches import batch_indices
from xferlab.engine.fit import FitTask, fit
from xferlab.engine.loop import make_adam
from xferlab.engine.stacked import StackedHeads, linear_ce_gradients, step_blocks

CPU = torch.device("cpu")


def _problem(n=120, dim=8, classes=3, seed=0):
    """Features with a clear class signal; three assignments with 60 train rows each (two batches of 25 and a short
    one of 10 at batch 25)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    features[np.arange(n), labels] += 2.0
    assignments = []
    for _ in range(3):
        a = np.array(["train"] * 60 + ["val"] * 30 + ["test"] * 30, dtype=object)
        rng.shuffle(a)
        assignments.append(a)
    return torch.from_numpy(features), labels, assignments


def _head(seed, dim, classes):
    torch.manual_seed(seed)
    return nn.Linear(dim, classes)


def _alone(features, labels, splits, seed, epochs, batch):
    """One head through the engine's fit loop, as the audit's fit_split trains it."""
    head = _head(seed, features.shape[1], int(labels.max()) + 1)
    x = {s: features[np.flatnonzero(splits == s)] for s in ("train", "val", "test")}
    y = {s: torch.from_numpy(labels[splits == s]) for s in ("train", "val", "test")}
    opt = make_adam(head.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(y["train"]) / batch))
    gen = torch.Generator().manual_seed(seed)
    task = FitTask(head, head, head, x, y, opt, sched, lambda e: batch_indices(len(y["train"]), batch, gen),
                   eval_batch_size=4096, device=CPU)
    return head, fit(task, epochs)


def test_heads_trained_together_give_each_heads_own_fit_records():
    features, labels, assignments = _problem()
    seeds, epochs, batch = [3, 4, 5], 4, 25
    classes = int(labels.max()) + 1
    heads = [_head(s, features.shape[1], classes) for s in seeds]
    stack = StackedHeads(heads, features, labels, assignments, [torch.Generator().manual_seed(s) for s in seeds],
                         lr=5e-2, epochs=epochs, batch_size=batch)
    together = [stack.epoch() for _ in range(epochs)]  # [epoch][head]
    stack.write_back()
    for h, (splits, seed) in enumerate(zip(assignments, seeds)):
        head, records = _alone(features, labels, splits, seed, epochs, batch)
        torch.testing.assert_close(heads[h].weight, head.weight, atol=1e-5, rtol=0)
        for alone, stacked in zip(records, (epoch[h] for epoch in together)):
            assert stacked.epoch == alone.epoch
            assert (stacked.train_acc, stacked.val_acc, stacked.test_acc) == (alone.train_acc, alone.val_acc,
                                                                               alone.test_acc)
            for key in ("train_loss", "val_loss", "test_loss"):
                assert getattr(stacked, key) == pytest.approx(getattr(alone, key), abs=1e-5)


def test_closed_form_gradients_are_autograds_of_the_summed_per_head_mean_losses():
    torch.manual_seed(0)
    heads, classes, dim, b = 4, 3, 16, 9
    weight = torch.randn(heads, classes, dim, requires_grad=True)
    bias = torch.randn(heads, classes, 1, requires_grad=True)
    x, y = torch.randn(heads, b, dim), torch.randint(0, classes, (heads, b))
    logits = torch.baddbmm(bias, weight, x.transpose(1, 2))
    sum(torch.nn.functional.cross_entropy(logits[h].T, y[h]) for h in range(heads)).backward()
    grad_w, grad_b = linear_ce_gradients(x, logits.detach(), y)
    torch.testing.assert_close(grad_w, weight.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_b, bias.grad, atol=1e-6, rtol=1e-5)


def test_step_blocks_are_each_steps_rows_contiguous():
    rows = torch.arange(14).view(2, 7)
    blocks = step_blocks(rows, 3)
    assert [b.tolist() for b in blocks] == [b.tolist() for b in rows.split(3, dim=1)]
    assert all(b.is_contiguous() for b in blocks)


def test_heads_with_different_train_sizes_cannot_share_a_stack():
    features, labels, assignments = _problem()
    assignments[1] = assignments[1].copy()
    assignments[1][np.flatnonzero(assignments[1] == "val")[0]] = "train"
    heads = [_head(s, 8, 3) for s in range(3)]
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    with pytest.raises(ValueError, match=r"same number of training rows, got \[60, 61\]"):
        StackedHeads(heads, features, labels, assignments, gens, lr=1e-3, epochs=1, batch_size=25)
    with pytest.raises(ValueError, match="one assignment and one generator per head"):
        StackedHeads(heads, features, labels, assignments[:2], gens, lr=1e-3, epochs=1, batch_size=25)
