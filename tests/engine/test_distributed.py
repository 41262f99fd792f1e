"""Scale-out: sampler sharding and gathering (in-process), and real 2-process gloo runs launched by torchrun."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from xferlab.backbones.registry import create_model
from xferlab.config import DataConfig, TrainConfig
from xferlab.data.batches import Preprocess, as_tensor
from xferlab.data.sources import load_dataset
from xferlab.engine.distributed import SINGLE, Dist, interleave, weights_digest
from xferlab.engine.loop import evaluate
from xferlab.engine.run import train
from xferlab.errors import XferlabError


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 7, 8, 13])
def test_gathering_the_ranks_eval_shares_gives_every_item_once_in_order(world, n):
    ranks = [Dist(rank=r, world_size=world) for r in range(world)]
    shares = [d.eval_indices(n) for d in ranks]
    assert len({len(s) for s in shares}) == 1  # the sampler pads so that every rank has as many
    assert torch.equal(interleave(shares, n), torch.arange(n))


def test_one_epochs_train_batches_split_the_global_batch_over_the_ranks():
    n, batch = 32, 8
    single = SINGLE.train_batches(n, batch, seed=3, epoch=1)
    ranks = [Dist(rank=r, world_size=2).train_batches(n, batch, seed=3, epoch=1) for r in range(2)]
    assert all(len(b) == batch // 2 for r in ranks for b in r)
    for n_odd in (1, 13, 33):  # the scheduler's step count matches what the sampler hands out, padding included
        for world in (1, 2, 3):
            d = Dist(rank=world - 1, world_size=world)
            assert d.steps_per_epoch(n_odd, 6) == len(d.train_batches(n_odd, 6, seed=0, epoch=0))
    # step k of the two ranks together is step k of one process: same images, same optimiser steps
    for k, whole in enumerate(single):
        assert sorted(torch.cat([ranks[0][k], ranks[1][k]]).tolist()) == sorted(whole.tolist())
    assert not torch.equal(torch.cat(single), torch.cat(SINGLE.train_batches(n, batch, seed=3, epoch=2)))


def test_a_global_batch_that_does_not_split_over_the_ranks_is_an_error():
    with pytest.raises(XferlabError, match="multiple of 3"):
        Dist(rank=0, world_size=3).local_batch(32)


def _torchrun(args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "xferlab", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _train_args(data, out, regime, **extra):
    args = ["train", "--data", str(data), "--backbone", "resnet18", "--weights", "none", "--regime", regime,
            "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--num-threads", "1", "--out", str(out)]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _single_process_eval(run, data_path):
    """Evaluate the saved model.pt in this process, on the same data, without any distribution."""
    ckpt = torch.load(run / "model.pt", weights_only=True)
    data = load_dataset(DataConfig(path=data_path))
    model = create_model("resnet18", data.num_classes, "none", image_size=data.image_size[0])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    pre = Preprocess(model.spec.mean, model.spec.std)
    out = {}
    for split in ("val", "test"):
        x, y = data.split(split)
        out[split] = evaluate(lambda b: model(pre(b)), as_tensor(x), torch.from_numpy(y), 8, torch.device("cpu"))
    return out, model


@pytest.mark.ddp
@pytest.mark.parametrize("regime", ["finetune", "adabn"])
def test_two_gloo_ranks_agree_and_their_gathered_metrics_match_one_process(tiny_npy, tmp_path, regime):
    run = tmp_path / "run"
    proc = _torchrun(_train_args(tiny_npy, run, regime))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone prints
    m = json.loads((run / "metrics.json").read_text())
    assert m["distributed"]["world_size"] == 2 and m["distributed"]["backend"] == "gloo"
    digests = m["distributed"]["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks ended with identical weights and buffers
    single, model = _single_process_eval(run, tiny_npy)
    assert weights_digest(model) == digests[0]
    saved = np.load(run / "predictions.npz")
    for split in ("val", "test"):
        loss, acc, probs = single[split]
        assert len(saved[f"{split}_probs"]) == len(probs)  # no item dropped or duplicated by the sampler's padding
        np.testing.assert_allclose(saved[f"{split}_probs"], probs, atol=1e-5)
        assert m[split]["accuracy"] == pytest.approx(acc)


@pytest.mark.ddp
def test_frozen_training_on_two_ranks_equals_one_process(tiny_npy, tmp_path):
    """Frozen: the backbone's features are sharded and gathered, and the two ranks' half batches make up the single
    process's batches, so the head follows the same optimisation (up to float rounding). The ranks run their shares
    through ONNX Runtime, each checked, and agree on it; the single process in eager PyTorch."""
    proc = _torchrun(_train_args(tiny_npy, tmp_path / "ddp", "frozen", runtime="onnxruntime"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["runtime"]["path"] == "onnxruntime"
    cfg = TrainConfig(data=DataConfig(path=tiny_npy), backbone="resnet18", weights="none", regime="frozen", epochs=2,
                      batch_size=8, device="cpu", num_threads=1)
    train(cfg, tmp_path / "one", progress=False)
    ddp, one = (np.load(tmp_path / name / "predictions.npz") for name in ("ddp", "one"))
    for key in one.files:
        np.testing.assert_allclose(ddp[key], one[key], atol=1e-5)


@pytest.mark.ddp
def test_a_batch_size_that_does_not_split_fails_on_every_rank_with_one_error_line(tiny_npy, tmp_path):
    proc = _torchrun(_train_args(tiny_npy, tmp_path / "run", "frozen", batch_size=7))
    assert proc.returncode != 0
    assert "error: batch_size 7 is the global batch" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.ddp
def test_a_study_under_torchrun_trains_every_cell_on_both_ranks_and_rank_0_reports(tiny_npy, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "ddp study", "data": {"path": str(tiny_npy)}, "backbones": ["resnet18"],
                                     "regimes": ["frozen", "finetune"], "bootstrap_resamples": 200,
                                     "train": {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu",
                                               "num_threads": 1}}))
    proc = _torchrun(["study", str(study), "--out", str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report:") == 1
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header + frozen + finetune
    for run in (tmp_path / "out" / "runs").iterdir():
        m = json.loads((run / "metrics.json").read_text())
        assert m["distributed"]["world_size"] == 2 and len(set(m["distributed"]["weight_digests"])) == 1


@pytest.mark.ddp
def test_commands_that_are_not_distributed_refuse_to_run_once_per_rank(tmp_path):
    proc = _torchrun(["phantoms", str(tmp_path / "ph"), "--n-per-class", "10"])
    assert proc.returncode != 0 and "error: `xferlab phantoms` runs as one process" in proc.stderr
    assert not (tmp_path / "ph").exists()


@pytest.mark.ddp
def test_a_run_folder_rank_0_cannot_create_is_an_error_on_every_rank(tiny_npy, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    proc = _torchrun(_train_args(tiny_npy, tmp_path / "a_file" / "run", "frozen"), timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("error: cannot create") == 2  # rank 0 failed to create it and told rank 1
