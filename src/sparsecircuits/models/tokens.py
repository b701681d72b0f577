"""The BOS rule, in one place: which id starts a prompt or a packed context."""

from __future__ import annotations

from typing import Any


def bos_token_id(tokenizer: Any, config: Any = None) -> int | None:
    """Return the id prepended as BOS: the tokenizer's BOS, else the model config's (when a
    config is given), else the tokenizer's EOS (GPT-2 and Qwen have no BOS); None when there is
    none of them."""
    for source, attr in (
        (tokenizer, "bos_token_id"),
        (config, "bos_token_id"),
        (tokenizer, "eos_token_id"),
    ):
        token_id = getattr(source, attr, None) if source is not None else None
        if token_id is not None:
            return int(token_id)
    return None
