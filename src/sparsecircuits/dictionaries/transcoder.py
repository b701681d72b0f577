"""`Transcoder`: predicts a module's output from its input, `d_in -> d_sae -> d_out`.

Typically `hook_in = blocks.L.hook_mlp_in`, `hook_out = blocks.L.hook_mlp_out` (Dunefsky et
al. 2024). `kind="skip_transcoder"` adds a linear skip `out += x @ W_skip.T` with `W_skip
[d_out, d_in]` zero-initialised (Paulo, Shabalin & Belrose 2025).
"""

from __future__ import annotations

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.errors import SparseCircuitsError


class Transcoder(Dictionary):
    """Transcoder (or skip transcoder): `loss(x, target)` needs the output-hook activations."""

    def __init__(self, cfg: DictionaryConfig, init: bool = True) -> None:
        if cfg.kind not in ("transcoder", "skip_transcoder"):
            raise SparseCircuitsError(
                f"Transcoder needs kind 'transcoder' or 'skip_transcoder' (got {cfg.kind!r}); use SAE or make_dictionary"
            )
        super().__init__(cfg, init=init)

    @property
    def layer(self) -> int | None:
        """Layer number parsed from `hook_in` (`blocks.{L}....`), or None when it has none."""
        parts = self.cfg.hook_in.split(".")
        if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
            return int(parts[1])
        return None
