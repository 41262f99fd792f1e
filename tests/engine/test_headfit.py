"""The launch-free epoch trainers (xferlab.engine.headfit, xferlab.engine.graphs) against today's loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from xferlab.cli import main
from xferlab.config import DataConfig, TrainConfig
from xferlab.data.batches import batch_indices
from xferlab.engine import graphs
from xferlab.engine.graphs import GraphedSteps, use_cuda_graphs
from xferlab.engine.headfit import HeadFitSpec, HeadTrainer, lr_schedule
from xferlab.engine.loop import make_adam, train_one_epoch
from xferlab.engine.run import train
from xferlab.errors import XferlabError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(path, **kw):
    base = dict(data=DataConfig(path=path), backbone="resnet18", weights="none", regime="frozen", epochs=3,
                batch_size=5, device="cpu")  # 32 training images: six batches of 5 and a short one of 2
    return TrainConfig(**{**base, **kw})


def test_lr_schedule_is_the_cosine_schedulers_own():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = CosineAnnealingLR(opt, T_max=17)
    expected = []
    for _ in range(17):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lr_schedule(1e-3, 17, cosine=True) == expected
    assert lr_schedule(1e-3, 4, cosine=False) == [1e-3] * 4


def test_frozen_run_with_the_head_trainer_matches_todays_loop(tiny_npy, tmp_path, monkeypatch):
    """Same seed: the head trainer (from the CLI, with a feature batch of its own) gives today's history, best epoch
    and predictions within float tolerance."""
    code = main(["train", "--data", str(tiny_npy), "--out", str(tmp_path / "new"), "--weights", "none", "--regime",
                 "frozen", "--epochs", "2", "--batch-size", "5", "--device", "cpu", "--inference-batch-size", "7",
                 "--cuda-graphs", "on"])  # on: a no-op on CPU
    assert code == 0
    metrics = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert metrics["accel"]["trainer"] == "head_epoch" and metrics["accel"]["cuda_graphs"] is False
    monkeypatch.setattr(graphs, "epoch_trainer", lambda *a, **k: None)  # today's train_one_epoch
    old = train(_cfg(tiny_npy, epochs=2), tmp_path / "old", progress=False)
    import csv

    with open(tmp_path / "new" / "history.csv") as f:
        new_rows = list(csv.DictReader(f))
    assert len(new_rows) == len(old.history) == 2
    for new, ref in zip(new_rows, old.history, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert float(new[key]) == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    assert metrics["best_epoch"] == old.metrics["best_epoch"]
    new_p, old_p = np.load(tmp_path / "new" / "predictions.npz"), np.load(tmp_path / "old" / "predictions.npz")
    np.testing.assert_allclose(new_p["test_probs"], old_p["test_probs"], rtol=1e-5, atol=1e-6)


def _reference_epochs(model, x, y, spec, batches_per_epoch):
    """train_one_epoch with make_adam and CosineAnnealingLR, as the run loop calls it."""
    opt = make_adam(model.parameters(), spec.lr, spec.weight_decay)
    sched = CosineAnnealingLR(opt, T_max=spec.epochs * len(batches_per_epoch[0]))
    return [train_one_epoch(model, x, y, opt, sched, b, torch.device("cpu")) for b in batches_per_epoch]


def _epochs(n, batch_size, epochs):
    return [list(batch_indices(n, batch_size, torch.Generator().manual_seed(e))) for e in range(epochs)]


def test_head_trainer_eager_epoch_matches_train_one_epoch():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 16, generator=gen), torch.randint(0, 3, (23,), generator=gen)
    spec = HeadFitSpec(lr=1e-2, weight_decay=1e-4, epochs=3, batch_size=4, cosine=True, graphs=True)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 3)
    ref_head = torch.nn.Linear(16, 3)
    ref_head.load_state_dict(head.state_dict())
    batches = _epochs(23, 4, 3)
    ref = _reference_epochs(ref_head, x, y, spec, batches)
    trainer = HeadTrainer(head, x, y, spec)
    got = [trainer.train_epoch(b) for b in batches]
    assert not trainer.captured  # CPU: the same epoch body, eagerly
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    torch.testing.assert_close(head.weight, ref_head.weight, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch sizes"):
        trainer.train_epoch(batches[0][:-1])


class FakeGraphs:
    """A CPU stand-in for CudaGraphs: `capture` records the function and replay calls it, filling static outputs."""

    def __init__(self):
        self.warmed = self.captured = 0

    def warm(self, fn):
        self.warmed += 1
        return fn()

    def capture(self, fn):
        self.captured += 1
        static = (torch.zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.long))

        def replay():
            loss, correct = fn()
            static[0].copy_(loss)
            static[1].copy_(correct)

        return replay, static


def _small_net():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_graphed_steps_replay_full_batches_and_run_the_short_one_eagerly():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 8, 8, generator=gen), torch.randint(0, 2, (20,), generator=gen)
    spec = HeadFitSpec(lr=1e-2, weight_decay=0.0, epochs=2, batch_size=8, cosine=True, graphs=True)
    batches = _epochs(20, 8, 2)  # 8, 8, 4 per epoch
    ref_net, net = _small_net(), _small_net()
    ref = _reference_epochs(ref_net, x, y, spec, batches)
    backend = FakeGraphs()
    steps = GraphedSteps(net, net, x, y, spec, steps_per_epoch=3, device=torch.device("cpu"), backend=backend,
                         warmup_steps=1)
    net.train()
    got = [steps.train_epoch(b) for b in batches]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    torch.testing.assert_close(net[1].running_mean, ref_net[1].running_mean, rtol=1e-3, atol=1e-4)  # BatchNorm too
    # epoch 1: a warm-up step, the capture (replayed at once), the short batch eagerly; epoch 2: replay, replay, eager
    assert backend.captured == 1 and backend.warmed == 1
    assert steps.describe() == {"cuda_graphs": True, "trainer": "graphed_steps", "steps_replayed": 3,
                                "steps_eager": 3}


def test_a_failed_capture_falls_back_to_eager_steps():
    class Failing(FakeGraphs):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 2, (16,), generator=gen)
    spec = HeadFitSpec(lr=1e-2, weight_decay=0.0, epochs=1, batch_size=4, cosine=False, graphs=True)
    net = _small_net()
    steps = GraphedSteps(net, net, x, y, spec, 4, torch.device("cpu"), backend=Failing(), warmup_steps=1)
    loss, acc = steps.train_epoch(_epochs(16, 4, 1)[0])
    assert np.isfinite(loss) and steps.describe()["steps_eager"] == 4 and not steps.describe()["cuda_graphs"]


def test_cuda_graphs_setting_resolves_per_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not use_cuda_graphs("on", cpu, compile=False, distributed=False)  # a no-op on CPU
    assert use_cuda_graphs("auto", gpu, compile=False, distributed=False)
    assert not use_cuda_graphs("auto", gpu, compile=True, distributed=False)
    assert not use_cuda_graphs("on", gpu, compile=False, distributed=True)
    assert not use_cuda_graphs("off", gpu, compile=False, distributed=False)
    with pytest.raises(XferlabError, match="compile"):
        use_cuda_graphs("on", gpu, compile=True, distributed=False)


def test_a_bad_inference_batch_size_is_a_one_line_error(tiny_npy, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_npy), "--out", str(tmp_path / "r"), "--inference-batch-size", "0"])
    assert code == 2 and "--inference-batch-size 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@CUDA
def test_captured_head_epoch_matches_the_eager_one_on_cuda():
    gpu = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(70, 32, generator=gen).to(gpu), torch.randint(0, 2, (70,), generator=gen).to(gpu)
    batches = [[b.to(gpu) for b in e] for e in _epochs(70, 32, 3)]
    results = {}
    for graphed in (True, False):
        torch.manual_seed(0)
        head = torch.nn.Linear(32, 2).to(gpu)
        trainer = HeadTrainer(head, x, y, HeadFitSpec(1e-3, 0.0, 3, 32, True, graphed))
        results[graphed] = ([trainer.train_epoch(b) for b in batches], head.weight.detach().cpu(), trainer.captured)
    assert results[True][2] and not results[False][2]
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1])


@CUDA
def test_graphed_finetune_steps_match_train_one_epoch_on_cuda():
    gpu = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 16, 16, generator=gen).to(gpu), torch.randint(0, 2, (40,), generator=gen).to(gpu)
    spec = HeadFitSpec(lr=1e-3, weight_decay=0.0, epochs=2, batch_size=8, cosine=True, graphs=True)
    batches = [[b.to(gpu) for b in e] for e in _epochs(36, 8, 2)]  # 8 x4 and a short 4
    ref_net, net = _small_net().to(gpu), _small_net().to(gpu)
    opt = make_adam(ref_net.parameters(), spec.lr)
    sched = CosineAnnealingLR(opt, T_max=10)
    ref = [train_one_epoch(ref_net, x, y, opt, sched, b, gpu) for b in batches]
    steps = GraphedSteps(net, net, x, y, spec, 5, gpu, warmup_steps=2)
    got = [steps.train_epoch(b) for b in batches]
    assert steps.describe()["steps_replayed"] == 6 and steps.describe()["steps_eager"] == 4
    np.testing.assert_allclose(got, ref, rtol=1e-4)
