"""What the machine's CPU is and offers, read from /proc/cpuinfo without importing torch (the CLI builds its help
from it): the model name, and whether it computes bf16 natively (the flags avx512_bf16 or amx_bf16)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86 flags of native bf16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4 and later), AMX-BF16 (Sapphire Rapids)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU model as the OS reports it (Linux: /proc/cpuinfo), else platform.processor()."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_name() -> str:
    """The CPU model and logical core count, e.g. 'AMD EPYC, 2 cores': how benchmarks name the machine."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def cpu_native_bf16() -> bool | None:
    """Whether the CPU computes bf16 natively, from its /proc/cpuinfo flags; None where there are none to read."""
    flags = _cpuinfo().get("flags")
    return None if flags is None else bool(BF16_FLAGS & set(flags.split()))
