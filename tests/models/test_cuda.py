"""The same hooks on CUDA agree with CPU (skipped on machines without a GPU)."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.models import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_matches_cpu(tiny_model_dir, tiny_family):
    folder = tiny_model_dir(tiny_family)
    cpu, gpu = load_model(folder, device="cpu"), load_model(folder)
    assert gpu.device.type == "cuda"
    ids = cpu.tokenize(["the cat sat on the mat in the year 1732", "a dog"])
    names = cpu.hook_names()
    cpu_logits, cpu_cache = cpu.run_with_cache(ids, names, stop_after_last=False)
    gpu_logits, gpu_cache = gpu.run_with_cache(ids, names, stop_after_last=False)
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-4)
    for name in names:
        torch.testing.assert_close(
            gpu_cache[name].cpu(), cpu_cache[name], rtol=1e-4, atol=1e-4, msg=name
        )
    with gpu.splice("blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", torch.zeros_like):
        assert (gpu.forward(ids) - gpu_logits).abs().max() > 1e-3
    name = "blocks.0.hook_resid_post"
    logits, early = gpu.run_with_cache(ids, [name])
    _, full = gpu.run_with_cache(ids, [name], stop_after_last=False)
    assert logits is None and torch.equal(early[name], full[name])
