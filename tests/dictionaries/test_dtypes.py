"""bf16 dictionaries train, save, load and splice, on the CPU (both TopK selection paths: the
numba row top-k at d_sae 4096 and torch's below) and on CUDA when present; fp16 dictionaries
save, load and splice, and the trainer refuses them (Adam's second moments underflow in fp16);
codes and reconstructions keep the dictionary's dtype."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sparsecircuits.dictionaries import DictionaryConfig, load, make, save_dictionary
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation.splice import splice
from sparsecircuits.models import load_model
from sparsecircuits.training import TrainConfig, Trainer
from testkit import RepeatBatch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def adapters(tiny_model_dir):
    return {device: load_model(tiny_model_dir("gpt2"), device=device) for device in DEVICES}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(
    ("architecture", "d_sae"),
    [("topk", 64), ("topk", 4096), ("batchtopk", 4096), ("jumprelu", 256)],
)
def test_half_precision_dictionaries_train_save_load_and_splice(
    adapters, tmp_path: Path, device: str, dtype: str, architecture: str, d_sae: int
) -> None:
    adapter = adapters[device]
    width = adapter.hook_dim("blocks.0.hook_mlp_in")
    cfg = DictionaryConfig(
        architecture=architecture,
        kind="transcoder",
        d_in=width,
        d_sae=d_sae,
        d_out=width,
        hook_in="blocks.0.hook_mlp_in",
        hook_out="blocks.0.hook_mlp_out",
        k=8,
        dtype=dtype,
        device=device,
        seed=1,
    )
    dictionary = make(cfg)
    half = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, width, generator=g).to(device, half)
    y = torch.tanh(x.float() @ torch.randn(width, width, generator=g).to(device)).to(half)
    batches = RepeatBatch({"blocks.0.hook_mlp_in": x, "blocks.0.hook_mlp_out": y})
    train = TrainConfig(total_tokens=96 * 4, batch_tokens=96, lr=1e-3, quiet=True, warmup_steps=1)
    before = dictionary.W_dec.detach().clone()
    if dtype == "float16":
        with pytest.raises(SparseCircuitsError, match="float16, which Adam cannot train"):
            Trainer(batches, {"d": dictionary}, train)
        dictionary.init_biases_from_data(x, y)
    else:
        result = Trainer(batches, {"d": dictionary}, train).train()
        assert result.steps == 4 and math.isfinite(result.metrics["d"]["loss"])
        assert not torch.equal(before, dictionary.W_dec)
    loss, _ = dictionary.loss(x, y)
    assert torch.isfinite(loss) and loss.dtype == half
    codes, recon = dictionary.encode(x), dictionary.reconstruct(x)
    assert codes.dtype == recon.dtype == half and codes.shape == (96, d_sae)

    folder = save_dictionary(dictionary, tmp_path / "d")
    loaded = load(folder, device=device)
    for name, tensor in dictionary.state_dict().items():
        assert loaded.state_dict()[name].dtype == tensor.dtype
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded.reconstruct(x), recon)

    ids = adapter.tokenize(["the cat sat on the mat and looked at the dog"])
    with splice(adapter, loaded) as spliced:
        logits = spliced.model(ids).logits
    assert torch.isfinite(logits).all()
