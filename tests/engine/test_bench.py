import json
import subprocess
import sys

import pytest
import torch

from xferlab.backbones.registry import create_model
from xferlab.cli import main
from xferlab.engine.bench import bench, count_flops
from xferlab.evaluation.timing import matmul_flops_per_s

HEAD_FLOPS = 2 * 512 * 2  # the 2-class linear head: one multiply-add per weight


def test_resnet18_flops_match_torchvisions_published_count():
    """torchvision documents ResNet-18 at 224² as 1.814 GMAC (its `_ops`, with the 1000-class classifier)."""
    from torchvision.models import ResNet18_Weights

    model = create_model("resnet18", 2, "none", image_size=224)
    gmacs = (count_flops(model, torch.zeros(1, 3, 224, 224)) - HEAD_FLOPS + 2 * 512 * 1000) / 2e9
    assert gmacs == pytest.approx(ResNet18_Weights.IMAGENET1K_V1.meta["_ops"], abs=1e-3)


def test_flops_scale_with_the_image_area_and_a_training_step_costs_two_to_three_forwards():
    model = create_model("resnet18", 2, "none", image_size=32)
    f32, f64 = (count_flops(model, torch.zeros(2, 3, s, s)) for s in (32, 64))
    assert f64 - HEAD_FLOPS == pytest.approx(4 * (f32 - HEAD_FLOPS), rel=1e-9)  # every ResNet stage halves exactly
    step = count_flops(model, torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    assert 2 * f32 < step < 3 * f32  # backward = 2 forwards, less the input gradient of the first convolution
    assert all(p.grad is None for p in model.parameters())


def test_grouped_convolutions_cost_two_forwards_backward():
    """torch's own formula counts a depthwise weight gradient as if ungrouped (C times too many FLOPs): ours does
    not."""
    model = create_model("efficientnet_lite0", 2, "none", image_size=32)
    x, y = torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])
    forward, step = count_flops(model, x), count_flops(model, x, y)
    assert 2 * forward < step < 3 * forward
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_flops(conv, torch.zeros(1, 8, 4, 4)) == 2 * 8 * 9 * 16  # one multiply-add per tap per output


@pytest.fixture(scope="module")
def tiny_bench():
    return bench("resnet18", 32, batch_size=4, device="cpu", steps=2, warmup=1, threads=1, matmul_size=512)


def test_bench_reports_sane_throughput_and_flops(tiny_bench):
    r = tiny_bench
    assert r["backbone"] == "resnet18" and r["image_size"] == 32 and r["device"] == "cpu" and r["amp"] == "off"
    assert r["threads"] == 1
    assert r["flops_per_image"]["inference"] == pytest.approx(
        count_flops(create_model("resnet18", 2, "none", 32), torch.zeros(4, 3, 32, 32)))
    assert 0 < r["train_images_per_s"] < r["inference_images_per_s"]  # a step is forward + backward + update
    for kind in ("train", "inference"):
        assert 0 < r[f"{kind}_matmul_fraction"] < 3  # small convolutions cannot beat a dense matmul by much
    assert r["peak_rss_mib"] > 50 and r["peak_device_mib"] is None
    json.dumps(r)  # JSON-ready


def test_bench_cli_prints_json(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--backbone", "resnet18", "--image-size", "32", "--batch-size", "2", "--steps", "1",
                 "--warmup", "0", "--device", "cpu", "--num-threads", "1", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["batch_size"] == 2 and printed["steps"] == 1 and printed["train_images_per_s"] > 0


@pytest.mark.parametrize("args, message", [
    (["--image-size", "8"], "at least 32"),
    (["--steps", "2", "--warmup", "3"], "at most --steps"),
    (["--backbone", "resnet81"], "did you mean 'resnet18'"),
    (["--regime", "frozn"], "did you mean 'frozen'"),
])
def test_bench_bad_input_is_a_one_line_error(capsys, args, message):
    """(Out-of-range numbers are argparse's: tests/test_cli.py.)"""
    base = {"--backbone": "resnet18", "--image-size": "32", "--device": "cpu"}
    base.update(dict(zip(args[::2], args[1::2])))
    assert main(["bench", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_matmul_yardstick_is_plausible():
    assert 1e8 < matmul_flops_per_s(torch.device("cpu"), size=256, repeats=2) < 1e14


def test_peak_rss_sees_a_64_mib_block_after_a_reset():
    """In a fresh interpreter: this process's allocator may hand back memory that is already resident."""
    code = ("import torch; from xferlab.evaluation.timing import peak_rss_bytes, reset_peak_rss\n"
            "ok = reset_peak_rss(); before = peak_rss_bytes()\n"
            "block = torch.ones(64 * 2**20, dtype=torch.uint8)\n"
            "print(ok, peak_rss_bytes() - before)")
    ok, grew = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if ok != "True":
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    assert int(grew) >= 60 * 2**20