"""Second fault suite, numbers and configs: NaN / infinity in pixels and options, zero and absurd sizes, YAML that
is a bomb, a FIFO, too large, not UTF-8 or has a repeated key, and studies listing a seed, backbone or regime twice."""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest
import yaml
from faultkit import TRAIN

from tinydata import write_tiny_npy


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
    return write_tiny_npy(tmp_path_factory.mktemp("cfg") / "data", n=10, n_test=4, size=16)


def _train(tmp_path, npy, *options) -> list:
    return ["train", "--data", npy, "--out", tmp_path / "run", *TRAIN, *options]


def _study(tmp_path, npy, **values):
    doc = {"name": "s", "data": {"path": str(npy)}, "backbones": ["resnet18"], "regimes": ["frozen"],
           "train": {"weights": "none", "epochs": 1, "device": "cpu"}, **values}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    return ["study", tmp_path / "study.yaml", "--out", tmp_path / "out"]


def test_infinity_in_npy_pixels_is_refused(tmp_path, fails):
    root = write_tiny_npy(tmp_path / "data", n=10, n_test=4, size=16)
    x = np.full((10, 16, 16), 0.5, np.float32)
    x[2, 3, 4] = np.inf
    np.save(root / "pneumonia.npy", x)
    fails(_train(tmp_path, root), tmp_path, "pneumonia.npy", "NaN or infinity")


def test_a_nan_learning_rate_option_is_refused(tmp_path, npy, fails):
    fails(_train(tmp_path, npy, "--lr", "nan"), tmp_path, "--lr nan", "finite", "accepted: a number > 0")


def test_an_infinite_learning_rate_option_is_refused(tmp_path, npy, fails):
    fails(_train(tmp_path, npy, "--lr", "inf"), tmp_path, "--lr inf", "finite")


def test_an_infinite_value_in_a_yaml_config_names_its_line(tmp_path, npy, fails):
    (tmp_path / "run.yaml").write_text(f"data: {{path: {npy}}}\nepochs: 1\nweight_decay: .inf\n")
    fails(["train", "-c", tmp_path / "run.yaml", "--out", tmp_path / "run", "--weights", "none"], tmp_path,
          "run.yaml line 3", "'weight_decay'")


def test_a_nan_training_option_in_a_study_is_refused_before_training(tmp_path, npy, fails):
    argv = _study(tmp_path, npy)
    doc = yaml.safe_load((tmp_path / "study.yaml").read_text())
    doc["train"]["lr"] = float("nan")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    fails(argv, tmp_path, "study.yaml", "lr")


def test_a_zero_batch_size_is_refused(tmp_path, npy, fails):
    fails(_train(tmp_path, npy, "--batch-size", "0"), tmp_path, "--batch-size 0", "a whole number >= 1")


def test_an_absurd_image_size_is_refused_before_allocating(tmp_path, npy, fails):
    fails(_train(tmp_path, npy, "--image-size", "100000"), tmp_path, "--image-size 100000", "from 1 to 4096")


def test_an_absurd_thread_count_is_refused(tmp_path, npy, fails):
    fails(["train", "--data", npy, "--out", tmp_path / "run", "--weights", "none", "--num-threads", "100000"],
          tmp_path, "--num-threads 100000", "from 1 to 1024")


def test_absurd_phantom_requests_are_refused_before_allocating(tmp_path, fails):
    fails(["phantoms", tmp_path / "p", "--size", "100000"], tmp_path, "size", "4096")
    fails(["phantoms", tmp_path / "p", "--size", "4096", "--n-per-class", "1000000"], tmp_path, "GiB")


def test_an_absurd_benchmark_image_size_is_refused(tmp_path, fails):
    fails(["bench", "--backbone", "resnet18", "--image-size", "100000", "--device", "cpu"], tmp_path,
          "--image-size", "4096")


def test_a_yaml_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path, fails):
    # nine levels of nine-fold aliases: 9**9 (387 million) leaves once expanded, from a 400-byte file
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    start = time.perf_counter()
    fails(["train", "-c", tmp_path / "bomb.yaml", "--out", tmp_path / "run"], tmp_path, "bomb.yaml", "aliases")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 5 and peak < 50 * 2**20, (seconds, peak)


def test_a_repeated_yaml_key_is_an_error_not_a_silent_override(tmp_path, npy, fails):
    (tmp_path / "run.yaml").write_text(f"data: {{path: {npy}}}\nlr: 0.1\nepochs: 1\nlr: 0.001\n")
    fails(["train", "-c", tmp_path / "run.yaml", "--out", tmp_path / "run"], tmp_path, "run.yaml line 4",
          "'lr' is repeated")


def test_a_yaml_merge_key_is_still_allowed(tmp_path, npy):
    from xferlab.config import read_yaml

    (tmp_path / "run.yaml").write_text("base: &b {lr: 0.1, epochs: 2}\nrun:\n  <<: *b\n  epochs: 3\n")
    assert dict(read_yaml(tmp_path / "run.yaml"))["run"] == {"lr": 0.1, "epochs": 3}


def test_a_config_that_is_a_fifo_is_refused_without_blocking(tmp_path, fails):
    os.mkfifo(tmp_path / "run.yaml")  # reading it would wait for a writer forever
    fails(["train", "-c", tmp_path / "run.yaml", "--out", tmp_path / "run"], tmp_path, "run.yaml", "FIFO")


def test_an_oversized_config_is_refused_unread(tmp_path, fails):
    (tmp_path / "run.yaml").write_text("# padding\n" * 200_000)
    fails(["train", "-c", tmp_path / "run.yaml", "--out", tmp_path / "run"], tmp_path, "run.yaml", "bytes")


def test_a_config_that_is_not_utf8_is_named(tmp_path, fails):
    (tmp_path / "run.yaml").write_bytes(b"name: caf\xe9\n")  # Latin-1
    fails(["train", "-c", tmp_path / "run.yaml", "--out", tmp_path / "run"], tmp_path, "run.yaml", "UTF-8")


@pytest.mark.parametrize("key, values, repeated", [("seeds", [0, 1, 0], "0"),
                                                   ("backbones", ["resnet18", "resnet34", "resnet18"], "resnet18"),
                                                   ("regimes", ["frozen", "finetune", "frozen"], "frozen")])
def test_a_study_listing_a_value_twice_is_refused(tmp_path, npy, fails, key, values, repeated):
    fails(_study(tmp_path, npy, **{key: values}), tmp_path, "study.yaml", f"'{key}'", f"repeated: {repeated}")
