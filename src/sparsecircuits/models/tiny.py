"""Tiny random-init models of every supported family, saved so `load_model(folder)` works offline.

For tests and examples: 3 layers, d_model 32, 4 heads (2 kv heads where the family has GQA),
weights drawn with a fixed seed, norm gains and all biases randomised so that tests of gains
and biases can fail. A byte-level BPE tokenizer trained on built-in sentences ships with it.

Besides one model per family, `llama3` is a Llama with Llama-3's scaled RoPE (original context
8, so positions past 8 are scaled), `gemma2` soft-caps attention scores and logits at small
values so the caps bite and alternates sliding (window 4) and global layers, and
`gemma3_text` has q/k norms, two sliding layers then a global one with its own rotary base and
linear RoPE scaling (as Gemma-3 4b+ does); `gemma3` is the same language model inside Gemma-3's
image-text class (as 4b+ checkpoints are saved), with a tiny vision tower.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecircuits.errors import SparseCircuitsError

FAMILIES: tuple[str, ...] = (
    "gpt2",
    "gpt_neox",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "llama3",
    "gemma2",
    "gemma3_text",
    "gemma3",
)
SPECIAL_TOKEN = "<|endoftext|>"
_MIN_VOCAB = 300

_SUBJECTS = [
    "the cat",
    "a dog",
    "my friend",
    "the teacher",
    "our neighbour",
    "the old man",
    "a young girl",
    "the scientist",
    "John",
    "Mary",
    "the river",
    "this program",
]
_VERBS = [
    "saw",
    "liked",
    "found",
    "gave",
    "sent",
    "built",
    "wrote",
    "ran to",
    "looked at",
    "thought about",
    "counted",
    "opened",
]
_OBJECTS = [
    "the house",
    "a letter",
    "the mountain",
    "an apple",
    "the garden",
    "two books",
    "the window",
    "a small boat",
    "the answer",
    "the code",
    "ten stones",
    "the door",
]
_ENDINGS = [
    "yesterday",
    "in the morning",
    "after the war",
    "before dinner",
    "because it rained",
    "with great care",
    "near the station",
    "every year",
    "quickly",
    "at night",
]
_CODE = [
    "def add(a, b):\n    return a + b",
    "for i in range(10):\n    print(i)",
    "x = [1, 2, 3]; y = {'k': 4}",
    "if value is None:\n    raise ValueError('missing')",
]


def tokenizer_corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """Return built-in training sentences (prose, numbers, years, a little code)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n_sentences):
        year = rng.randint(1000, 2099)
        texts.append(
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ENDINGS)}, in the year {year} or {rng.randint(0, 99)}."
        )
        if i % 10 == 0:
            texts.append(rng.choice(_CODE))
    return texts


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)
    return tokenizer.to_str()


def _config(
    family: str,
    vocab_size: int,
    n_layers: int,
    d_model: int,
    n_heads: int,
    max_context: int,
    parallel_residual: bool,
) -> Any:
    import transformers

    d_head = d_model // n_heads
    # pad_token_id stays unset: HF warns about padding whenever pad == bos appears in input_ids.
    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0}
    if family == "gpt2":
        return transformers.GPT2Config(
            n_layer=n_layers,
            n_embd=d_model,
            n_head=n_heads,
            n_inner=2 * d_model,
            n_positions=max_context,
            **common,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            num_attention_heads=n_heads,
            intermediate_size=2 * d_model,
            max_position_embeddings=max_context,
            use_parallel_residual=parallel_residual,
            # Pythia rotates only a fraction of each head
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
            },
            attention_bias=True,
            tie_word_embeddings=False,
            **common,
        )
    llama_like: dict[str, Any] = {
        "num_hidden_layers": n_layers,
        "hidden_size": d_model,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_heads // 2,
        "head_dim": d_head,
        "intermediate_size": 2 * d_model,
        "max_position_embeddings": max_context,
        **common,
    }
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "qwen2":
        return transformers.Qwen2Config(**llama_like)  # q/k/v carry biases
    if family == "qwen3":
        return transformers.Qwen3Config(**llama_like)  # per-head q/k RMSNorm
    if family == "mistral":
        return transformers.MistralConfig(
            sliding_window=8, **llama_like
        )  # short window is exercised by tests
    if family == "llama3":
        return transformers.LlamaConfig(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
            **llama_like,
        )
    gemma: dict[str, Any] = {
        **llama_like,
        "pad_token_id": None,
        "query_pre_attn_scalar": 12,  # differs from head_dim: a wrong scale fails the tests
        "sliding_window": 4,
        "hidden_activation": "gelu_pytorch_tanh",
    }
    if family == "gemma2":
        return transformers.Gemma2Config(
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0, **gemma
        )
    if family in ("gemma3_text", "gemma3"):
        layer_types = ["sliding_attention"] * (n_layers - 1) + ["full_attention"]
        text = transformers.Gemma3TextConfig(
            layer_types=layer_types,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            },
            **gemma,
        )
        if family == "gemma3_text":
            return text
        # the image-text class of Gemma-3 4b+, with a one-layer vision tower never run on text
        vision = transformers.SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        )
        return transformers.Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=4,
            boi_token_index=vocab_size - 3,
            eoi_token_index=vocab_size - 2,
            image_token_index=vocab_size - 1,
            **common,
        )
    raise SparseCircuitsError(
        f"unknown tiny model family {family!r}; use one of: {', '.join(FAMILIES)}"
    )


def _randomise_norms_and_biases(model: nn.Module, generator: torch.Generator) -> None:
    # HF initialises gains to 1 and biases to 0, which would let wrong gain/bias handling pass tests.
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
            weight = getattr(module, "weight", None)
            if is_norm and isinstance(weight, nn.Parameter):
                weight.copy_(1 + 0.2 * torch.randn(weight.shape, generator=generator))
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))


def build_tiny_model(
    family: str,
    folder: str | Path,
    *,
    vocab_size: int = 512,
    seed: int = 0,
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    max_context: int = 128,
    parallel_residual: bool = True,
) -> Path:
    """Build a random-init tiny causal LM of `family` with its tokenizer in `folder`; return the folder.

    `parallel_residual` applies to gpt_neox only. Same family, sizes and seed give the same
    weights. BOS = EOS = PAD = "<|endoftext|>" (id 0).
    """
    import transformers
    from tokenizers import Tokenizer

    if vocab_size < _MIN_VOCAB:
        raise SparseCircuitsError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE; use at least {_MIN_VOCAB}"
        )
    config = _config(family, vocab_size, n_layers, d_model, n_heads, max_context, parallel_residual)
    # larger than HF's 0.02 so attention patterns are far from uniform (an image-text config
    # keeps its own value in its text config)
    config.initializer_range = config.get_text_config().initializer_range = 0.2
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise_norms_and_biases(model, torch.Generator().manual_seed(seed + 1))

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        model_max_length=max_context,
    )
    tokenizer.save_pretrained(folder)
    return folder
