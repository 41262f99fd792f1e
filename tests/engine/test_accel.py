import pytest
import torch

import xferlab.engine.accel as accel_mod
from xferlab.backbones.registry import create_model
from xferlab.data.batches import Preprocess
from xferlab.engine.accel import place, resolve_accel
from xferlab.engine.loop import extract_features
from xferlab.engine.runtime import eager
from xferlab.errors import XferlabError

CPU = torch.device("cpu")


def test_cpu_defaults_are_fp32_contiguous_and_uncompiled():
    a = resolve_accel(CPU)
    assert a.amp_dtype is None and not a.channels_last and not a.compile
    assert {k: v for k, v in a.describe().items() if k != "auto_rule"} == {
        "device": "cpu", "amp": "off", "channels_last": False, "compile": False}


@pytest.mark.parametrize("native, trains, side, on", [
    (True, True, 224, True), (True, True, 128, True), (True, True, 64, False),  # Lite0's bf16 step: slower at 64 px
    (True, False, 224, False),  # a head on cached features: nothing for bf16 to speed up
    (False, True, 224, False),  # emulated bf16: far slower
])
def test_cpu_auto_is_bf16_and_channels_last_for_a_backbone_that_trains_at_real_sizes(monkeypatch, native, trains,
                                                                                      side, on):
    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: native)
    a = resolve_accel(CPU, trains_backbone=trains, image_side=side)
    assert (a.amp_dtype is torch.bfloat16) == on and a.channels_last == on
    assert a.describe()["auto_rule"].startswith("cpu: bf16 + channels_last" if on else "cpu: fp32, contiguous")
    if native and trains and not on:  # the rule names the condition that failed: the image size
        assert "under 128" in a.describe()["auto_rule"]
    assert resolve_accel(CPU, amp="off", channels_last="off", trains_backbone=trains,
                         image_side=side).amp_dtype is None  # what the golden runs pin


def test_a_runs_accel_follows_its_regime_and_image_size(monkeypatch, tmp_path):
    from xferlab.config import DataConfig, TrainConfig
    from xferlab.engine.accel import accel_for

    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: True)
    cfg = TrainConfig(data=DataConfig(path=tmp_path, image_size=224), regime="finetune", weights="none")
    assert accel_for(cfg, CPU).amp_dtype is torch.bfloat16
    assert accel_for(cfg, CPU, image_side=32).amp_dtype is None
    assert accel_for(cfg.model_copy(update={"regime": "frozen"}), CPU).amp_dtype is None


def test_bf16_is_refused_where_the_cpu_has_no_native_bf16(monkeypatch):
    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: False)
    with pytest.raises(XferlabError, match="no native bf16"):
        resolve_accel(CPU, amp="bf16")
    assert resolve_accel(CPU, amp="auto").amp_dtype is None


def test_bf16_on_a_cpu_with_native_bf16_is_allowed_and_automatic_only_for_training_backbones(monkeypatch):
    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: True)
    assert resolve_accel(CPU, amp="bf16").amp_dtype is torch.bfloat16
    assert resolve_accel(CPU, amp="auto").amp_dtype is None  # what is trained and at what size: unknown, fp32


def test_compile_on_cpu_needs_a_compiler(monkeypatch):
    monkeypatch.setattr(accel_mod.shutil, "which", lambda name: None)
    with pytest.raises(XferlabError, match="C\\+\\+ compiler"):
        resolve_accel(CPU, compile=True)


@pytest.mark.parametrize("bad", [{"amp": "fp8"}, {"channels_last": "yes"}])
def test_bad_choices_are_errors(bad):
    with pytest.raises(XferlabError):
        resolve_accel(CPU, **bad)


def test_data_stays_on_the_host_for_a_cpu_run():
    splits = {"train": (torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))}
    placed = place(splits, CPU)
    assert placed["train"][0] is splits["train"][0]


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    model = create_model("resnet18", 2, "none", image_size=32).eval()
    images = torch.randint(0, 256, (6, 32, 32), dtype=torch.uint8)
    plain = extract_features(eager(model.body, Preprocess(model.spec.mean, model.spec.std)), images, 4)
    nhwc = Preprocess(model.spec.mean, model.spec.std, channels_last=True)
    assert nhwc(images).is_contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    assert torch.allclose(extract_features(eager(model.body, nhwc), images, 4), plain, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_defaults_and_resident_data():
    gpu = torch.device("cuda")
    a = resolve_accel(gpu)
    assert a.channels_last and (a.amp_dtype is torch.bfloat16) == accel_mod.native_bf16(gpu)  # emulated bf16: off
    splits = {"train": (torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))}
    assert place(splits, gpu)["train"][0].is_cuda


def test_accelerator_switches_are_restored_after_the_scope():
    from xferlab.engine.accel import accelerator_scope

    before = torch.backends.cudnn.benchmark
    with accelerator_scope():
        torch.backends.cudnn.benchmark = not before  # what Accel.prepare does on CUDA
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.parametrize("native, says", [(True, "has native bf16: auto gives bf16 + channels_last to finetune"),
                                          (False, "has no native bf16: auto is fp32")])
def test_train_help_says_what_auto_gives_on_this_cpu(monkeypatch, capsys, native, says):
    import xferlab.hardware as hardware
    from xferlab.cli import main

    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: native)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert says in " ".join(capsys.readouterr().out.split())
