"""The CPU's bf16 support and the warning when a model or dictionary would run on emulated bf16."""

from __future__ import annotations

import logging

import pytest
import torch

from sparsecircuits import cpu

AVX2_ONLY = "flags\t\t: fpu sse sse2 avx avx2 fma\n"
ZEN4 = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set what `/proc/cpuinfo` reads as (None: not a Linux x86 machine)."""
    return lambda text: monkeypatch.setattr(
        cpu, "_cpu_flags", lambda: None if text is None else cpu._flags_of(text)
    )


@pytest.mark.parametrize(
    ("text", "fast"), [(AVX2_ONLY, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (None, False)]
)
def test_fast_bf16_needs_avx512_bf16_or_amx(flags, text: str | None, fast: bool) -> None:  # type: ignore[no-untyped-def]
    flags(text)
    assert cpu.has_fast_bf16() is fast


def test_bf16_on_an_emulating_cpu_is_the_only_case_warned(flags) -> None:  # type: ignore[no-untyped-def]
    flags(AVX2_ONLY)
    message = cpu.slow_bf16_warning("model gemma", torch.bfloat16, "cpu")
    assert message is not None and message.startswith("model gemma is bfloat16")
    assert "use float32" in message and "\n" not in message
    assert cpu.slow_bf16_warning("model gemma", torch.float32, "cpu") is None
    assert cpu.slow_bf16_warning("model gemma", torch.bfloat16, "meta") is None
    flags(ZEN4)
    assert cpu.slow_bf16_warning("model gemma", torch.bfloat16, "cpu") is None
    flags(None)  # macOS, ARM: unknown, so no claim
    assert cpu.slow_bf16_warning("model gemma", torch.bfloat16, "cpu") is None


def test_loading_a_bf16_model_on_an_emulating_cpu_warns_once(
    flags, tiny_model_dir, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    from sparsecircuits.models import load_model

    flags(AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="sparsecircuits"):
        load_model(tiny_model_dir("llama"), device="cpu", dtype=torch.float32)
        assert not caplog.records
        load_model(tiny_model_dir("llama"), device="cpu", dtype=torch.bfloat16)
    (record,) = [r for r in caplog.records if "bfloat16" in r.getMessage()]
    assert "use float32 on this CPU" in record.getMessage()
