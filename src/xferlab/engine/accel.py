"""How a run uses its device: precision (bf16 autocast), memory layout (channels_last), torch.compile, cuDNN autotuning
and whether the uint8 dataset lives on the GPU. Resolved once per run from the config, and checked before any work.

CPU defaults are fp32 and contiguous (NCHW): bf16 is only allowed where the CPU has native bf16 instructions (it is
emulated, and far slower, elsewhere), and channels_last is opt-in on CPU because it measured slower for training
there (README, Performance).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

# Keep the dataset on the GPU only when it takes at most this share of the free memory: the rest is for weights,
# optimizer state, activations and cuDNN workspaces (ResNet-34 fine-tuning at 256², batch 32, needs a few GiB).
RESIDENT_FRACTION = 0.25


def native_bf16(device: torch.device) -> bool:
    """Does the device compute bf16 natively? CUDA: compute capability >= 8.0. CPU: AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
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
                "channels_last": self.channels_last, "compile": self.compile}


def resolve_accel(device: torch.device, amp: str = "auto", channels_last: str = "auto",
                  compile: bool = False) -> Accel:
    """Turn the config's 'auto' / 'on' / 'off' choices into settings for `device`; XferlabError if impossible."""
    if amp not in ("auto", "bf16", "off"):
        raise XferlabError(f"amp must be auto, bf16 or off, got {amp!r}")
    if channels_last not in ("auto", "on", "off"):
        raise XferlabError(f"channels_last must be auto, on or off, got {channels_last!r}")
    native = native_bf16(device)
    if amp == "bf16" and not native:
        raise XferlabError(f"amp 'bf16' requested but this {device.type.upper()} has no native bf16 (it would be "
                           "emulated, often 100x slower); use --amp off or auto")
    use_bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda" and native)
    if compile and device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise XferlabError("compile on CPU needs a C++ compiler (c++ or g++ on PATH); install one or drop --compile")
    layout = channels_last == "on" or (channels_last == "auto" and device.type == "cuda")
    return Accel(device, torch.bfloat16 if use_bf16 else None, layout, bool(compile))


def accel_for(cfg, device: torch.device) -> Accel:
    """The Accel of a TrainConfig."""
    return resolve_accel(device, cfg.amp, cfg.channels_last, cfg.compile)


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
