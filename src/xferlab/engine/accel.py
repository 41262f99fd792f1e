"""How a run's training steps use the device: precision (bf16 autocast), memory layout (channels_last),
torch.compile, cuDNN autotuning and whether the uint8 dataset lives on the GPU. Resolved once per run from the
config, and checked before any work. (A fixed backbone's passes follow the `runtime` setting: engine/runtime.py.)

`auto` on a CUDA GPU: bf16 where it is native, channels_last. On a CPU: bf16 autocast and channels_last for steps
that train the backbone (finetune, partial:K) at images of at least CPU_BF16_MIN_SIDE px on a CPU with native bf16
(AVX512-BF16 or AMX, from /proc/cpuinfo's flags; emulated bf16 is far slower and is refused); fp32 and contiguous
otherwise. Measured in docs/performance-real-sizes.md: faster at 224 px for the benchmark backbones, with
validation accuracy within the seed-to-seed spread of fp32 runs; at 64 px the runs disagreed (config.CPU_BF16_MIN_SIDE).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from xferlab.config import CPU_BF16_MIN_SIDE
from xferlab.errors import XferlabError
from xferlab.hardware import cpu_native_bf16

log = logging.getLogger(__name__)

# Keep the dataset on the GPU only when it takes at most this share of the free memory: the rest is for weights,
# optimizer state, activations and cuDNN workspaces (ResNet-34 fine-tuning at 256², batch 32, needs a few GiB).
RESIDENT_FRACTION = 0.25


def native_bf16(device: torch.device) -> bool:
    """Does the device compute bf16 natively? CUDA: compute capability >= 8.0. CPU: AVX512-BF16 or AMX-BF16 among
    /proc/cpuinfo's flags, or where there is no such file, torch's own CPUID check."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_native_bf16()
    if flags is not None:
        return flags
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


@dataclass(frozen=True)
class Accel:
    """The resolved speed settings of one run."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32
    channels_last: bool
    compile: bool
    rule: str = ""  # why `auto` chose what it did

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the forward pass (the backward pass runs outside it, as autocast expects)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device in the chosen memory layout; turn on cuDNN autotuning on CUDA (call it
        inside accelerator_scope, which restores the switch)."""
        if self.device.type == "cuda":
            # Fixed input shapes within a run: let cuDNN time its algorithms once per shape and keep the fastest.
            torch.backends.cudnn.benchmark = True
        return model.to(self.device, memory_format=self.memory_format)

    def compiled(self, module: Callable) -> Callable:
        """`module` through torch.compile when asked; static shapes (a run has at most a handful of batch shapes)."""
        return torch.compile(module, dynamic=False) if self.compile else module

    def forward(self, net: torch.nn.Module, preprocess: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        """Stored uint8 batch -> logits: preprocessing, then `net` (compiled when asked) under this run's autocast.
        The one forward that training runs, evaluation and `xferlab bench` share."""
        net = self.compiled(net)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return net(preprocess(batch))

        return forward

    def describe(self) -> dict:
        return {"device": str(self.device), "amp": "bf16" if self.amp_dtype else "off",
                "channels_last": self.channels_last, "compile": self.compile, "auto_rule": self.rule}


def cpu_auto_bf16(native: bool, trains_backbone: bool, image_side: int | None) -> bool:
    """The CPU's `auto` for amp and channels_last: on for steps that train the backbone on images of at least
    CPU_BF16_MIN_SIDE px, where bf16 is native."""
    return native and trains_backbone and (image_side or 0) >= CPU_BF16_MIN_SIDE


def _cpu_reason(native: bool, trains_backbone: bool, image_side: int | None) -> str:
    """Why cpu_auto_bf16 says what it says (each of its conditions, the first that fails)."""
    if not native:
        return "no native bf16"
    if not trains_backbone:
        return "the backbone does not train"
    if image_side is None:
        return f"native bf16, the backbone trains; on for images of at least {CPU_BF16_MIN_SIDE} px"
    if image_side < CPU_BF16_MIN_SIDE:
        return f"images of {image_side} px, under {CPU_BF16_MIN_SIDE}"
    return f"native bf16, the backbone trains; images of {image_side} px, at least {CPU_BF16_MIN_SIDE}"


def resolve_accel(device: torch.device, amp: str = "auto", channels_last: str = "auto", compile: bool = False, *,
                  trains_backbone: bool = False, image_side: int | None = None) -> Accel:
    """Turn the config's 'auto' / 'on' / 'off' choices into settings for `device` (`trains_backbone`: the steps
    train the backbone, not a head on cached features; `image_side`: the images' side); XferlabError if
    impossible."""
    if amp not in ("auto", "bf16", "off"):
        raise XferlabError(f"amp must be auto, bf16 or off, got {amp!r}")
    if channels_last not in ("auto", "on", "off"):
        raise XferlabError(f"channels_last must be auto, on or off, got {channels_last!r}")
    native = native_bf16(device)
    if amp == "bf16" and not native:
        raise XferlabError(f"amp 'bf16' requested but this {device.type.upper()} has no native bf16 (it would be "
                           "emulated, often 100x slower); use --amp off or auto")
    if compile and device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise XferlabError("compile on CPU needs a C++ compiler (c++ or g++ on PATH); install one or drop --compile")
    if device.type == "cuda":
        auto, rule = native, f"cuda: bf16 {'native' if native else 'emulated, off'}, channels_last"
        layout_auto = True
    else:
        auto = layout_auto = cpu_auto_bf16(native, trains_backbone, image_side)
        why = _cpu_reason(native, trains_backbone, image_side)
        rule = f"cpu: {'bf16 + channels_last' if auto else 'fp32, contiguous'} ({why})"
    use_bf16 = amp == "bf16" or (amp == "auto" and auto)
    layout = channels_last == "on" or (channels_last == "auto" and layout_auto)
    return Accel(device, torch.bfloat16 if use_bf16 else None, layout, bool(compile), rule)


def accel_for(cfg, device: torch.device, image_side: int | None = None) -> Accel:
    """The Accel of a TrainConfig for images of `image_side` px (default: the config's data.image_size)."""
    from xferlab.backbones.regimes import parse_regime

    side = image_side if image_side is not None else cfg.data.image_size
    return resolve_accel(device, cfg.amp, cfg.channels_last, cfg.compile,
                         trains_backbone=not parse_regime(cfg.regime).cache_features, image_side=side)


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` of data may stay resident on `device` (always false for the CPU: it is already there)."""
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


def place(tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device
          ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Move every split's (uint8 images, labels) to the GPU when all of them fit; otherwise leave them on the host.

    Resident data makes a batch an on-device gather: no host-device copy, and so no sync, per step. Streamed splits
    (beyond the memory budget) stay on disk.
    """
    if not all(isinstance(x, torch.Tensor) for x, _ in tensors.values()):
        return tensors
    nbytes = sum(x.numel() * x.element_size() + y.numel() * y.element_size() for x, y in tensors.values())
    if not fits_on_device(nbytes, device):
        return tensors
    log.debug("dataset resident on %s (%.1f MiB)", device, nbytes / 2**20)
    return {s: (x.to(device), y.to(device)) for s, (x, y) in tensors.items()}


@contextlib.contextmanager
def accelerator_scope() -> Iterator[None]:
    """Process-wide accelerator switches a run may set (cuDNN autotuning, TF32 matmuls) are restored when the block
    ends, so a run's settings never leak into the next run or the caller."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for a block and restore it afterwards (None: leave it)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
