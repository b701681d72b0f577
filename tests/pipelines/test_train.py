"""Train runs with a cross-layer transcoder beside a per-layer transcoder: one forward feeds
both, both are saved and load back bit-exactly, and bad CLT specs are clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sparsecircuits.dictionaries import (
    CrossLayerTranscoder,
    Dictionary,
    load,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import load_model
from sparsecircuits.models.tiny import tokenizer_corpus
from sparsecircuits.pipelines import (
    DictionarySpec,
    RunConfig,
    build_dictionaries,
    check_compatible,
    load_dictionaries,
    train_run,
)


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir: Callable[[str], Path]):  # type: ignore[no-untyped-def]
    return load_model(tiny_model_dir("gpt2"), device="cpu")


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_train_run_trains_a_clt_and_a_transcoder_from_one_forward(
    family: str,
    tiny_model_dir: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    gpt2 = load_model(tiny_model_dir(family), device="cpu")  # the adapter harvested from
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(tokenizer_corpus(300, seed=5)))
    cfg = RunConfig(
        model=str(tiny_model_dir(family)),
        dataset=str(data),
        out=str(tmp_path / "run"),
        device="cpu",
        context_size=32,
        contexts_per_forward=8,
        buffer_tokens=1024,
        eval_contexts=2,
        dictionaries=[
            {"kind": "clt", "architecture": "topk", "n_layers": 2, "d_sae": 32, "k": 4},
            {"kind": "transcoder", "architecture": "topk", "layer": 1, "d_sae": 32, "k": 4},
        ],
        train={"total_tokens": 1024, "batch_tokens": 128, "lr": 3e-3},
    )
    requested: list[list[str]] = []
    original = gpt2.run_with_cache

    def recording(ids, hooks, stop_after_last=True):  # type: ignore[no-untyped-def]
        requested.append(list(hooks))
        return original(ids, hooks, stop_after_last)

    gpt2.run_with_cache = recording
    try:
        dictionaries, result, _ = train_run(cfg, quiet=True, adapter=gpt2)
    finally:
        del gpt2.run_with_cache
    assert set(dictionaries) == {"clt-topk-L0-1-32-k4", "transcoder-topk-L1-32-k4"}
    assert result.steps == 8 and set(result.metrics) == set(dictionaries)
    # every harvest forward fed both: it asked for all four CLT hooks and the transcoder's
    needed = {f"blocks.{layer}.mlp.hook_{io}" for layer in (0, 1) for io in ("in", "out")}
    assert requested and all(set(hooks) == needed for hooks in requested)
    clt = dictionaries["clt-topk-L0-1-32-k4"]
    assert isinstance(clt, CrossLayerTranscoder) and clt.n_layers == 2
    assert clt.cfg.hook_in == "blocks.{layer}.mlp.hook_in" and clt.d_in == gpt2.d_model
    assert clt.cfg.training["dictionaries"][0]["kind"] == "clt"
    folder = Path(cfg.out) / "dictionaries"
    loaded_clt = load(folder / "clt-topk-L0-1-32-k4")
    loaded_tc = load(folder / "transcoder-topk-L1-32-k4")
    for trained, loaded in (
        (clt, loaded_clt),
        (dictionaries["transcoder-topk-L1-32-k4"], loaded_tc),
    ):
        assert type(loaded) is type(trained) and loaded.cfg == trained.cfg
        for (name, tensor), restored in zip(
            trained.state_dict().items(), loaded.state_dict().values(), strict=True
        ):
            assert torch.equal(tensor, restored), name
    assert all(
        torch.isfinite(torch.tensor(v)) for v in result.metrics["clt-topk-L0-1-32-k4"].values()
    )
    both = load_dictionaries([str(folder)])
    assert isinstance(both["clt-topk-L0-1-32-k4"], CrossLayerTranscoder)
    assert isinstance(both["transcoder-topk-L1-32-k4"], Dictionary)
    check_compatible(gpt2, both)


def test_clt_spec_defaults_to_every_layer(gpt2) -> None:  # type: ignore[no-untyped-def]
    ((name, clt),) = build_dictionaries(
        gpt2, [DictionarySpec(kind="clt", d_sae=16, k=2)], 0
    ).items()
    assert isinstance(clt, CrossLayerTranscoder)
    assert clt.n_layers == gpt2.n_layers == 3 and name == "clt-topk-L0-2-16-k2"
    assert clt.cfg.layer_hooks()[1][-1] == "blocks.2.mlp.hook_out"


BAD_SPECS = [
    ({"kind": "clt", "n_layers": 4}, "out of range"),
    ({"kind": "clt", "n_layers": 0}, "out of range"),
    ({"kind": "clt", "hook_in": "blocks.1.hook_mlp_in"}, "templates with {layer}"),
    ({"kind": "clt", "hook_in": "blocks.{layer}.mlp.hook_out"}, "use kind sae"),
    (
        {
            "kind": "clt",
            "hook_in": "blocks.{layer}.hook_mlp_out",
            "hook_out": "blocks.{layer}.hook_resid_mid",
        },
        "must come before",
    ),
    ({"kind": "clt", "hook_in": "blocks.{layer}.hook_nonsense"}, "unknown hook name"),
    ({"kind": "clt", "layer": 1}, "takes no layer"),
    ({"kind": "clt", "architecture": "mp"}, "for SAEs only"),
    ({"kind": "transcoder", "n_layers": 2}, "n_layers is for cross-layer"),
]


@pytest.mark.parametrize(("spec", "expected"), BAD_SPECS)
def test_bad_clt_spec_is_one_clear_error(gpt2, spec: dict, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SparseCircuitsError, match=None) as info:
        build_dictionaries(gpt2, [DictionarySpec(d_sae=16, k=2, **spec)], 0)
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_check_compatible_rejects_a_clt_deeper_than_the_model(gpt2) -> None:  # type: ignore[no-untyped-def]
    from sparsecircuits.dictionaries import DictionaryConfig, make

    clt = make(
        DictionaryConfig(
            architecture="topk",
            kind="clt",
            d_in=gpt2.d_model,
            d_sae=8,
            k=2,
            n_layers=5,
            hook_in="blocks.{layer}.hook_mlp_in",
            hook_out="blocks.{layer}.hook_mlp_out",
        )
    )
    with pytest.raises(SparseCircuitsError, match="over 5 layers but the model has 3"):
        check_compatible(gpt2, {"deep": clt})
