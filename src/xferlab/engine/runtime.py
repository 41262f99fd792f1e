"""The fixed-backbone runtime: how a network whose weights do not change runs over many images. Frozen and AdaBN
features, test-time BatchNorm evaluation, `predict`, the audit's embeddings and Grad-CAM below its layer all go
through `fixed_pass`, which picks the path once per pass and records why.

Paths (the `runtime` setting of a run, an audit and predict):

    torch        eager PyTorch, fp32, in the caller's memory layout: the reference every other path is checked against
    onnxruntime  the module exported in memory (torch's TorchScript exporter, seconds) and run by ONNX Runtime, fp32;
                 CPU only
    torch-bf16   PyTorch under bf16 autocast, channels-last; only where the device computes bf16 natively
    compile      torch.compile of the module (fp32, static shapes)
    auto         CUDA: torch-bf16 on a GPU with native bf16, else torch. CPU: onnxruntime, unless the whole pass
                 costs under MIN_EXPORT_FLOPS (FLOPs per image counted on the check images, times the images), where
                 the export cannot pay back. A rule on counted work, not on a timed probe: the same run on a busy
                 machine takes the same path, so its numbers repeat bit for bit. Never bf16 on a CPU, whose
                 numbers are not fp32's: measured at 224 px (docs/performance-real-sizes.md), ONNX Runtime in fp32
                 ran EfficientNet-Lite0/2 2.1-2.4x and DenseNet-121 1.07x as fast as bf16 PyTorch (ResNet-18 and a
                 ViT-Ti 0.8x and 0.7x: `torch-bf16` by name, for whoever accepts their 7e-3 difference), and bf16
                 moved Lite's ImageNet features by 10-24 % of their scale.

Every path but eager torch is checked on the first CHECK_IMAGES images of the pass against eager fp32 (the largest
difference relative to the largest reference value, within FP32_TOLERANCE or, for bf16, BF16_TOLERANCE). Under
`auto` a path that cannot run or fails the check falls back to eager torch with one warning; a path asked for by
name is honoured or refused with an XferlabError that says what to change. Under torchrun every rank decides on the
same images and the ranks agree (any rank's failure moves all of them), so every rank runs the same path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from xferlab.config import RUNTIMES
from xferlab.engine.accel import native_bf16
from xferlab.engine.distributed import SINGLE, Dist
from xferlab.errors import XferlabError, did_you_mean

log = logging.getLogger(__name__)

Output = torch.Tensor | tuple[torch.Tensor, ...]

# Images of the pass's first batch that eager fp32 also computes, to check the chosen path against (and, on the CPU,
# to count the pass's FLOPs per image for `auto`).
CHECK_IMAGES = 4
# Largest difference from eager fp32 on the check images, relative to the largest reference value. Measured at 224 px
# (`python benchmarks/real_sizes.py runtimes`, docs/performance-real-sizes.md): ONNX Runtime 2.5e-7 to 2.5e-6 for the
# five benchmark backbones, so 1e-3 leaves room for other kernels while catching any real mismatch; bf16 3.7e-3
# (DenseNet-121), 7.4e-3 (ResNet-18), 7.8e-3 (ViT-Ti), but 1.0e-1 and 2.4e-1 for EfficientNet-Lite0/2 with their
# ImageNet weights: 2e-2 admits the first three and refuses Lite, whose bf16 features are not the same features.
FP32_TOLERANCE = 1e-3
BF16_TOLERANCE = 2e-2
# `auto` on the CPU: a pass of fewer FLOPs stays in eager PyTorch. Measured at 224 px (same benchmark), the export
# (0.4-3.7 s, the first in a process about a second more) has paid for itself against eager fp32 from 16 and 67 GFLOP
# of work for EfficientNet-Lite2 / Lite0, 116 and 145 for DenseNet-121 / ResNet-18, 326 for ViT-Ti. 100 GFLOP (130
# Lite0 or 28 ResNet-18 images at 224 px; 1,350 ResNet-18 images at 32 px) exports wherever Lite gains, and costs at
# most a few seconds where the export does not quite pay.
MIN_EXPORT_FLOPS = 100e9
# torch.compile's backend for the compile path (tests swap in "eager": dynamo's tracing without inductor's C++ build,
# which takes 20-35 s even for a toy module on this CPU).
COMPILE_BACKEND = "inductor"


@dataclass(frozen=True)
class RuntimeRecord:
    """What ran a fixed pass and why: the setting asked for, the path that ran, the reason, the check against eager
    fp32 (images, largest relative difference, tolerance) and the seconds the path took to set up (an export)."""

    requested: str
    path: str
    reason: str
    check: dict | None = None
    setup_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class FixedPass:
    """uint8 batch (any shape Preprocess takes) -> the module's output as float32 on the module's device (a tensor,
    or a tuple for a module that returns several), without gradients. `record` says which path runs it."""

    def __init__(self, run: Callable[[torch.Tensor], Output], record: RuntimeRecord):
        self._run = run
        self.record = record

    @property
    def path(self) -> str:
        return self.record.path

    def __call__(self, batch: torch.Tensor) -> Output:
        return self._run(batch)


def check_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise XferlabError(f"runtime must be one of {', '.join(RUNTIMES)}, got {name!r}"
                           f"{did_you_mean(str(name), RUNTIMES)}")
    return name


def _floats(out) -> Output:
    if isinstance(out, (tuple, list)):
        return tuple(o.float() for o in out)
    return out.float()


def _as_tuple(out: Output) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def relative_error(got: Output, want: Output) -> float:
    """The largest |got - want| over every output, relative to the largest |want| (inf when the shapes differ)."""
    worst = 0.0
    for g, w in zip(_as_tuple(got), _as_tuple(want), strict=True):
        if g.shape != w.shape:
            return float("inf")
        g, w = g.detach().float().cpu(), w.detach().float().cpu()
        scale = max(float(w.abs().max()) if w.numel() else 0.0, 1e-12)
        worst = max(worst, float((g - w).abs().max()) / scale if w.numel() else 0.0)
    return worst


def eager(module: torch.nn.Module, preprocess) -> Callable[[torch.Tensor], Output]:
    """The reference path: eager PyTorch in fp32, in the module's own memory layout."""

    @torch.no_grad()
    def run(batch: torch.Tensor) -> Output:
        return _floats(module(preprocess(batch)))

    return run


def _torch_path(module: torch.nn.Module, preprocess, device: torch.device, bf16: bool,
                compiled: bool) -> Callable[[torch.Tensor], Output]:
    """PyTorch under bf16 autocast (channels-last, the layout bf16 convolutions are fastest in) or torch.compile."""
    if bf16:
        module.to(memory_format=torch.channels_last)  # in place: the caller's module is only ever run, not trained
    net = torch.compile(module, dynamic=False, backend=COMPILE_BACKEND) if compiled else module
    layout = torch.channels_last if bf16 else torch.contiguous_format
    cast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    @torch.no_grad()
    def run(batch: torch.Tensor) -> Output:
        x = preprocess(batch)
        if x.ndim == 4:
            x = x.contiguous(memory_format=layout)
        with cast():
            return _floats(net(x))

    return run


def _onnx_path(module: torch.nn.Module, preprocess, example: torch.Tensor,
               threads: int) -> Callable[[torch.Tensor], Output]:
    """The module exported in memory and run by ONNX Runtime on the CPU (ImportError without onnxruntime, any
    exporter error for a module it cannot write)."""
    import onnxruntime as ort

    x = preprocess(example).contiguous()
    with torch.no_grad():
        outputs = len(_as_tuple(module(x)))
    names = [f"out{i}" for i in range(outputs)]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes, not the user's business
        # TorchScript exporter: for Lite0 it took seconds where the dynamo exporter took about 20 in one trial
        torch.onnx.export(module, (x,), buffer, input_names=["x"], output_names=names,
                          dynamic_axes={"x": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # no spin-waiting between calls: the audit runs other work beside its embedding (audit/scan.py), and the CPU may
    # be shared
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> Output:
        with torch.no_grad():
            x = preprocess(batch).float().contiguous()
        out = tuple(torch.from_numpy(o) for o in session.run(None, {"x": x.numpy()}))
        return out if outputs > 1 else out[0]

    return run


def _module_device(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _refuse(runtime: str, device: torch.device) -> str | None:
    """Why a runtime asked for by name cannot run here (None: it can)."""
    if runtime == "onnxruntime" and device.type != "cpu":
        return f"onnxruntime runs on the CPU, but the device is {device.type}; use runtime auto or torch"
    if runtime == "torch-bf16" and not native_bf16(device):
        return (f"torch-bf16: this {device.type.upper()} has no native bf16 (emulated, it is far slower); use runtime "
                "auto or torch")
    if runtime == "compile" and device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        return "compile on the CPU needs a C++ compiler (c++ or g++ on PATH); install one or use runtime auto"
    return None


def _auto_choice(device: torch.device, flops_per_image: float, n_images: int) -> tuple[str, str]:
    """`auto`'s path and the reason, from the device and the pass's counted work."""
    if device.type != "cpu":
        if native_bf16(device):
            return "torch-bf16", f"auto: {device.type} with native bf16"
        return "torch", f"auto: {device.type} without native bf16"
    work = flops_per_image * n_images
    if work < MIN_EXPORT_FLOPS:
        return "torch", (f"auto: {n_images} images of {flops_per_image / 1e9:.3g} GFLOP, under the "
                         f"{MIN_EXPORT_FLOPS / 1e9:.0f} GFLOP an ONNX export pays back in")
    return "onnxruntime", f"auto: CPU, {n_images} images of {flops_per_image / 1e9:.3g} GFLOP"


def _counted(reference: Callable[[torch.Tensor], Output], sample: torch.Tensor) -> tuple[Output, float]:
    """The reference output of `sample` and its FLOPs per image (convolutions and matrix products, torch's
    FlopCounterMode: a few hundred dispatcher calls on the check images)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = reference(sample)
    return out, counter.get_total_flops() / max(1, len(sample))


def build_path(path: str, module, preprocess, example: torch.Tensor, device: torch.device,
               threads: int) -> Callable[[torch.Tensor], Output]:
    """The `path` (not auto, not torch) over `module`, unchecked: what fixed_pass checks (benchmarks time it)."""
    if path == "onnxruntime":
        return _onnx_path(module, preprocess, example, threads)
    return _torch_path(module, preprocess, device, bf16=path == "torch-bf16", compiled=path == "compile")


def fixed_pass(module: torch.nn.Module, preprocess, example: torch.Tensor, runtime: str = "auto", *,
               n_images: int, dist: Dist = SINGLE, threads: int | None = None) -> FixedPass:
    """The pass of `module` (in eval mode from here on) over `n_images` uint8 images through the `runtime` path,
    decided and checked on `example` (uint8 images; its first CHECK_IMAGES are used). `threads`: ONNX Runtime's
    (default: torch's current count)."""
    check_runtime(runtime)
    module.eval()
    device = _module_device(module)
    reference = eager(module, preprocess)
    if runtime == "torch":
        return FixedPass(reference, RuntimeRecord(runtime, "torch", "asked for"))
    problem = _refuse(runtime, device) if runtime != "auto" else None
    if problem:
        raise XferlabError(f"runtime {problem}")
    sample = example[:CHECK_IMAGES]
    want, flops = _counted(reference, sample) if runtime == "auto" else (reference(sample), 0.0)
    path, reason = _auto_choice(device, flops, n_images) if runtime == "auto" else (runtime, "asked for")
    if path == "torch":
        return FixedPass(reference, RuntimeRecord(runtime, "torch", reason))
    tolerance = BF16_TOLERANCE if path == "torch-bf16" else FP32_TOLERANCE
    start = time.perf_counter()
    failure, run, error = None, None, float("nan")
    try:
        run = build_path(path, module, preprocess, sample, device, threads or torch.get_num_threads())
        error = relative_error(run(sample), want)
        if not error <= tolerance:
            failure = f"its output differs from eager fp32 by {error:.2g} of its scale (tolerance {tolerance:g})"
    except Exception as err:  # noqa: BLE001 - an exporter, compiler or runtime failure: the path cannot run this module
        failure = (str(err).strip().splitlines() or [type(err).__name__])[0]  # exporter messages run many lines
        if isinstance(err, ImportError):
            failure += " (install onnxruntime: pip install onnxruntime)"
    setup = time.perf_counter() - start
    failures = [f for f in dist.gather_objects(failure) if f]  # every rank runs the same path
    check = {"images": len(sample), "error": error, "tolerance": tolerance}
    if not failures:
        return FixedPass(run, RuntimeRecord(runtime, path, reason, check, setup))
    if runtime != "auto":
        raise XferlabError(f"runtime {path} cannot run this network here: {failures[0]}; use runtime auto or torch")
    log.warning("%s cannot run this network here (%s); running it in eager PyTorch (fp32) instead", path, failures[0])
    return FixedPass(reference, RuntimeRecord(runtime, "torch", f"{reason}; {path} fell back: {failures[0]}", check,
                                              setup))


def first_images(inputs, k: int) -> torch.Tensor:
    """The first k stored images of a split (a uint8 tensor, or streamed images decoded here), for fixed_pass."""
    from xferlab.data.batches import take_batches

    k = min(k, len(inputs))
    index = torch.arange(k, device=getattr(inputs, "device", None))
    return next(iter(take_batches(inputs, [index])))[1]
