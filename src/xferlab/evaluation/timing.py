"""Wall-clock timing that is honest on every device: warm-up first, and synchronise CUDA before reading the clock.

Also the two yardsticks the benchmarks divide by: the machine's measured matmul FLOP/s and the process's peak memory.
"""

from __future__ import annotations

import sys
import time

import torch

from xferlab.data.batches import batch_indices


def format_seconds(value: float | None) -> str:
    """Seconds with enough digits to be non-zero (a frozen run's head trains in milliseconds): 12.3, 0.0062."""
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Accumulates seconds of `with timer:` blocks, synchronising the device at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._t0


@torch.no_grad()
def inference_throughput(forward, images: torch.Tensor, batch_size: int, device: torch.device,
                         warmup_batches: int = 2) -> float:
    """Images per second of `forward` (stored batch -> logits, preprocessing included; the model already in eval
    mode) over `images`, after `warmup_batches` untimed batches."""
    batches = list(batch_indices(len(images), batch_size, device=images.device))
    for idx in batches[:warmup_batches]:
        forward(images[idx])
    timer = Timer(device)
    with timer:
        for idx in batches:
            forward(images[idx])
    return len(images) / timer.seconds


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                       repeats: int = 3) -> float:
    """The machine's attainable dense FLOP/s: the best of `repeats` timed size×size matmuls (2·size³ FLOPs each).

    This, not a datasheet peak, is what model throughput is compared with: it is what the same BLAS/oneDNN build,
    thread count and clock reach on the best-shaped problem. Default sizes: 2048 on CPU, 8192 on CUDA.
    """
    size = size or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    a @ b  # warm-up: thread pool, BLAS handles, clocks
    best = float("inf")
    for _ in range(repeats):
        timer = Timer(device)
        with timer:
            a @ b
        best = min(best, timer.seconds)
    return 2.0 * size**3 / best


def _proc_status(field: str) -> int | None:
    """A `kB` field of /proc/self/status in bytes (Linux), or None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image so far.

    Linux: VmHWM, the high-water mark of this process since it started (or since `reset_peak_rss`). Not getrusage:
    its ru_maxrss also keeps the RSS of the parent that forked this process before exec, so a child started by a
    1 GiB Python parent reports at least 1 GiB. Elsewhere: ru_maxrss (KiB on Linux/BSD, bytes on macOS).
    """
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux VmRSS), or None where it cannot be read."""
    return _proc_status("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); False if impossible.

    Lets a benchmark measure the peak of one phase (a training loop) apart from what imports left behind.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
