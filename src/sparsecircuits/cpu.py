"""What this CPU computes natively: bf16 matrix products run on AVX-512 BF16 or AMX units, and
are emulated (at a few per cent of float32's speed, or far less) everywhere else on x86."""

from __future__ import annotations

import functools
import logging
import platform

import torch

__all__ = ["has_fast_bf16", "slow_bf16_warning", "warn_if_slow_bf16"]

_log = logging.getLogger("sparsecircuits")


def _flags_of(cpuinfo: str) -> frozenset[str]:
    """The flags on the first `flags` line of a /proc/cpuinfo text (every core lists the same)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """This CPU's flags from /proc/cpuinfo on Linux x86, else None (unknown); read once, since
    the TopK step asks on every encoder call and the file grows with the core count."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            return _flags_of(f.read())
    except OSError:
        return None


def has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX-512 BF16 or AMX flags in /proc/cpuinfo)."""
    flags = _cpu_flags()
    return flags is not None and ("avx512_bf16" in flags or "amx_bf16" in flags)


def slow_bf16_warning(what: str, dtype: torch.dtype, device: str | torch.device) -> str | None:
    """A one-line warning when `what` would run in bf16 on an x86 CPU that emulates bf16 matrix
    products, else None (another dtype or device, a CPU with bf16 units, or flags unknown)."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return None
    if _cpu_flags() is None or has_fast_bf16():
        return None
    return (
        f"{what} is bfloat16 on a CPU without AVX-512 BF16 or AMX, where bf16 matrix products "
        "are emulated (over 100x slower than float32 on an AVX2 EPYC); use float32 on this CPU"
    )


def warn_if_slow_bf16(what: str, dtype: torch.dtype, device: str | torch.device) -> None:
    """Log `slow_bf16_warning`'s line, if any, on the `sparsecircuits` logger."""
    message = slow_bf16_warning(what, dtype, device)
    if message is not None:
        _log.warning(message)
