"""`SAE`: a sparse autoencoder, `d_in -> d_sae -> d_in` on one hook (`hook_in == hook_out`)."""

from __future__ import annotations

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.errors import SparseCircuitsError


class SAE(Dictionary):
    """Sparse autoencoder: reconstructs its input; `loss(x)` needs no target."""

    def __init__(self, cfg: DictionaryConfig, init: bool = True) -> None:
        if cfg.kind != "sae":
            raise SparseCircuitsError(
                f"SAE needs kind='sae' (got {cfg.kind!r}); use Transcoder or make_dictionary"
            )
        super().__init__(cfg, init=init)
