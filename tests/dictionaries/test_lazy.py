"""Dictionaries load as memory maps of their safetensors files."""

from __future__ import annotations

import torch


def test_loaded_dictionaries_map_their_file_and_survive_a_resave(tmp_path):
    """Parameters are views of the (copy-on-write) mapped file: loading does not read or copy
    them, writing to them leaves the file alone, and saving over the folder keeps them valid."""
    from sparsecircuits.dictionaries import DictionaryConfig, make
    from sparsecircuits.dictionaries.io import load, save_dictionary

    cfg = DictionaryConfig(
        architecture="topk",
        kind="transcoder",
        d_in=16,
        d_sae=64,
        k=4,
        hook_in="blocks.0.hook_mlp_in",
        hook_out="blocks.0.hook_mlp_out",
    )
    original = make(cfg)
    save_dictionary(original, tmp_path)
    loaded = load(tmp_path, device="cpu")
    assert not loaded.W_dec.untyped_storage().resizable()  # a view of the map, not an allocation
    torch.testing.assert_close(loaded.W_dec, original.W_dec)
    with torch.no_grad():
        loaded.W_dec.mul_(2.0)
    torch.testing.assert_close(load(tmp_path).W_dec, original.W_dec)  # the file is unchanged
    save_dictionary(original, tmp_path)  # over the mapped file
    torch.testing.assert_close(loaded.W_dec, 2.0 * original.W_dec)
