"""A family defined here (one class, one registry entry, one setting of its own) trains as an SAE,
a transcoder and a cross-layer transcoder through the trainer, and saves and loads, with no other
edit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from sparsecircuits.dictionaries import (
    ACTIVATIONS,
    DictionaryConfig,
    ForwardOutput,
    load,
    make,
)
from sparsecircuits.dictionaries.activations.base import (
    Activation,
    ActivationParams,
    require_nonnegative,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.pipelines import DictionarySpec
from sparsecircuits.training import TrainConfig, Trainer
from testkit import SyntheticStore

D = 16


@dataclass
class ShrinkParams(ActivationParams):
    shrink: float = 0.05  # subtracted from every pre-activation before the ReLU

    def resolve(self, cfg: DictionaryConfig) -> None:
        require_nonnegative(self, "shrink")


class ShrinkActivation(Activation):
    """`f = ReLU(u - shrink)`: a soft threshold, the shrinkage itself keeps codes sparse."""

    name = "shrink"
    Params = ShrinkParams
    params: ShrinkParams

    def encode(self, dictionary, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:  # type: ignore[no-untyped-def]
        pre_acts = torch.addmm(dictionary.b_enc, x_in, dictionary.W_enc)
        return ForwardOutput(
            dense_acts=(pre_acts - self.params.shrink).relu(), d_sae=self.cfg.d_sae
        )


@pytest.fixture
def shrink_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ACTIVATIONS, ShrinkActivation.name, ShrinkActivation)


def _config(kind: str, **settings: object) -> DictionaryConfig:
    hooks = {"hook_in": "in"} if kind == "sae" else {"hook_in": "in", "hook_out": "out"}
    if kind == "clt":  # two layers, each reading "in" and writing "out" of the synthetic store
        settings = {"n_layers": 2, **settings}
    return DictionaryConfig(architecture="shrink", kind=kind, d_in=D, d_sae=64, **hooks, **settings)


def test_the_family_setting_is_routed_and_validated(shrink_family: None) -> None:
    cfg = _config("transcoder", shrink=0.2, k=7)  # k: another family's setting, ignored
    assert isinstance(cfg.params, ShrinkParams) and cfg.params.shrink == cfg.shrink == 0.2
    assert (cfg.decoder_norm, cfg.recon_loss) == ("free", "mse")  # the base class's defaults
    assert not hasattr(cfg, "k")
    with pytest.raises(SparseCircuitsError, match="shrink must be >= 0"):
        _config("sae", shrink=-1.0)
    with pytest.raises(SparseCircuitsError, match="valid keys: .*shrink"):
        _config("sae", shrinkage=0.1)
    spec = DictionarySpec(kind="sae", architecture="shrink", d_sae=64, shrink=0.3)
    assert spec.settings == {"shrink": 0.3} and spec.params() == ShrinkParams(shrink=0.3)
    with pytest.raises(SparseCircuitsError, match="unknown key"):
        DictionarySpec(architecture="shrink", shrinkage=0.3)


def _first_batch_loss(dictionary) -> float:  # type: ignore[no-untyped-def]
    x, target = dictionary.inputs_from(SyntheticStore(d=D).next_batch())
    with torch.no_grad():
        return float(dictionary.loss(x, target)[0])


@pytest.mark.parametrize("kind", ["sae", "transcoder", "clt"])
def test_a_new_family_trains_saves_and_loads(
    shrink_family: None, kind: str, tmp_path: Path
) -> None:
    dictionary = make(_config(kind, shrink=0.02))
    train = TrainConfig(
        total_tokens=64 * 120, batch_tokens=64, lr=1e-2, warmup_steps=3, quiet=True, seed=0
    )
    before = _first_batch_loss(dictionary)
    result = Trainer(SyntheticStore(d=D), {"new": dictionary}, train, out_dir=tmp_path).train()
    assert result.steps == 120
    assert result.metrics["new"]["fvu"] < 0.5
    assert _first_batch_loss(dictionary) < before
    assert result.final_checkpoint is not None
    loaded = load(result.final_checkpoint / "dictionaries" / "new")
    families = loaded.activations if kind == "clt" else [loaded.activation]
    assert all(isinstance(f, ShrinkActivation) for f in families) and loaded.cfg.shrink == 0.02
    x = torch.randn(8, 2, D) if kind == "clt" else torch.randn(8, D)
    torch.testing.assert_close(loaded(x).out, dictionary(x).out)
