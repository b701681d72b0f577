"""Per-head residual writes: head h of layer L writes `z_h W_O^h` (`[d_model]`) at each position.

Heads are numbered layer-major, `index = layer * n_heads + head`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsecircuits.models import ModelAdapter
from sparsecircuits.tasks.common import TaskPrompts


def head_label(index: int, n_heads: int) -> str:
    """Return "L.H" for a layer-major head index."""
    return f"{index // n_heads}.{index % n_heads}"


def z_hooks(adapter: ModelAdapter) -> list[str]:
    """Return the `blocks.L.attn.hook_z` names of every layer."""
    return [f"blocks.{layer}.attn.hook_z" for layer in range(adapter.n_layers)]


@torch.no_grad()
def head_outputs(adapter: ModelAdapter, prompts: TaskPrompts, batch_size: int = 64) -> Tensor:
    """Return every head's residual write averaged over each prompt's real positions:
    `[n_prompts, n_layers * n_heads, d_model]` (float32, CPU)."""
    w_o = torch.stack([adapter.W_O(layer) for layer in range(adapter.n_layers)]).float()
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = prompts.input_ids[start : start + batch_size]
        last = prompts.last_pos[start : start + batch_size]
        mask = (torch.arange(ids.shape[1])[None, :] <= last[:, None]).float()  # 0 at padding
        _, cache = adapter.run_with_cache(ids.to(adapter.device), z_hooks(adapter))
        z = torch.stack([cache[name].float().cpu() for name in z_hooks(adapter)], dim=2)
        writes = torch.einsum("bplhd,lhdm->bplhm", z, w_o.cpu())  # [b, p, L, H, d_model]
        mean = (writes * mask[:, :, None, None, None]).sum(1) / mask.sum(1)[:, None, None, None]
        out.append(mean.flatten(1, 2))
    return torch.cat(out)
