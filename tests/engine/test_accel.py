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
    assert a.describe() == {"device": "cpu", "amp": "off", "channels_last": False, "compile": False}


def test_bf16_is_refused_where_the_cpu_has_no_native_bf16(monkeypatch):
    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: False)
    with pytest.raises(XferlabError, match="no native bf16"):
        resolve_accel(CPU, amp="bf16")
    assert resolve_accel(CPU, amp="auto").amp_dtype is None


def test_bf16_on_a_cpu_with_native_bf16_is_allowed_but_never_automatic(monkeypatch):
    monkeypatch.setattr(accel_mod, "native_bf16", lambda device: True)
    assert resolve_accel(CPU, amp="bf16").amp_dtype is torch.bfloat16
    assert resolve_accel(CPU, amp="auto").amp_dtype is None


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
