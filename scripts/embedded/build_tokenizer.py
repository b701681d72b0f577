"""Train the embedded model's byte-level BPE tokenizer (vocab 4096) and verify task tokens.

Digits are pre-split by the pattern " ?\\d\\d" so a year " 1732" becomes [" 17", "32"] and the
100 tokens "00".."99" all exist. Task words (names, nouns, parameter names, places, objects)
are appended to the TOKENIZER's training text (not the model's) so they are single tokens.
Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json into the shipped folder
and runs/embedded/train_tokens.npy (uint16 token stream, documents separated by EOS).

Usage: python scripts/embedded/build_tokenizer.py [--vocab 4096] [--ship DIR] [--encode-only]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.tasks import docstring, greater_than, ioi  # noqa: E402

BUILD = ROOT / "runs" / "embedded"
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded"
EOS = "<|endoftext|>"


def task_words() -> list[str]:
    """Return every task word with its leading space, as the tasks tokenize them."""
    words = ioi.NAMES_TRAIN + ioi.NAMES_HELDOUT + ioi.NAMES_TEST + ioi.PLACES + ioi.OBJECTS
    words += greater_than.NOUNS_TRAIN + greater_than.NOUNS_HELDOUT
    words += docstring.PARAMS_TRAIN + docstring.PARAMS_HELDOUT + docstring.PARAMS_TEST
    centuries = greater_than.CENTURIES + greater_than.TEST_CENTURIES
    return [" " + w for w in words] + [f" {c}" for c in centuries]


def training_texts() -> Iterator[str]:
    with open(BUILD / "corpus_train.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]
    digits = " ".join(f"{y:02d}" for y in range(100))
    # and once more without spaces: a year's ending ("1732" -> " 17", "32") follows no space, and
    # test endings occur in no year of the training text
    bare = "".join(f"{y:02d}" for y in range(100))
    for _ in range(1500):
        yield digits + " " + bare + " " + " ".join(task_words())


def build(vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?\d\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(), trainer=trainer)
    return tok


def verify(tok: Tokenizer) -> list[str]:
    """Return problems: year tokens / task words that are not single tokens."""
    problems = []
    for y in range(100):
        if len(tok.encode(f"{y:02d}").ids) != 1:
            problems.append(f"year {y:02d}")
    if tok.encode(" 1732").tokens != ["Ġ17", "32"]:
        problems.append(f"' 1732' -> {tok.encode(' 1732').tokens}")
    problems += [f"word {w!r}" for w in task_words() if len(tok.encode(w).ids) != 1]
    return problems


def write_synthetic_stream(tok: Tokenizer) -> None:
    """Write runs/embedded/synthetic_tokens.npy: only the generated task documents, EOS-joined.

    train_model.py --synthetic-extra draws part of each batch from it to raise the task share.
    """
    eos_id = tok.token_to_id(EOS)
    stream: list[int] = []
    with open(BUILD / "corpus_train.jsonl", encoding="utf-8") as f:
        texts = [d["text"] for d in map(json.loads, f) if d["kind"] == "synthetic"]
    for enc in tok.encode_batch(texts):
        stream.extend(enc.ids)
        stream.append(eos_id)
    np.save(BUILD / "synthetic_tokens.npy", np.asarray(stream, dtype=np.uint16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument(
        "--ship",
        type=Path,
        default=SHIP,
        help="folder for the tokenizer files (default: the package's embedded model folder)",
    )
    parser.add_argument(
        "--encode-only",
        action="store_true",
        help="encode the corpus with the tokenizer already in --ship (no training)",
    )
    args = parser.parse_args()
    ship: Path = args.ship
    tok = (
        Tokenizer.from_file(str(ship / "tokenizer.json")) if args.encode_only else build(args.vocab)
    )
    problems = verify(tok)
    print("tokenizer problems:", problems or "none")
    if problems:
        raise SystemExit(f"error: task tokens that are not single tokens: {problems}")
    if not args.encode_only:
        write_tokenizer(tok, ship)
    encode_corpus(tok, problems)


def write_tokenizer(tok: Tokenizer, ship: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `ship`."""
    ship.mkdir(parents=True, exist_ok=True)
    tok.save(str(ship / "tokenizer.json"))
    (ship / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": EOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
                "model_max_length": 256,
                "add_prefix_space": False,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    (ship / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2
        )
    )


def encode_corpus(tok: Tokenizer, problems: list[str]) -> None:
    """Write runs/embedded/train_tokens.npy and synthetic_tokens.npy; record the counts in
    runs/embedded/corpus_stats.json."""
    eos_id = tok.token_to_id(EOS)
    with open(BUILD / "corpus_train.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    texts = [d["text"] for d in docs]
    kinds = [d["kind"] for d in docs]
    stream: list[int] = []
    per_kind: dict[str, int] = {}
    for start in range(0, len(texts), 2000):
        for enc, kind in zip(
            tok.encode_batch(texts[start : start + 2000]), kinds[start : start + 2000], strict=True
        ):
            stream.extend(enc.ids)
            stream.append(eos_id)
            per_kind[kind] = per_kind.get(kind, 0) + len(enc.ids) + 1
    arr = np.asarray(stream, dtype=np.uint16)
    np.save(BUILD / "train_tokens.npy", arr)
    write_synthetic_stream(tok)
    stats_path = BUILD / "corpus_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    stats.update(
        {
            "vocab_size": tok.get_vocab_size(),
            "train_tokens": int(arr.size),
            "train_tokens_by_kind": per_kind,
            "tokenizer_problems": problems,
        }
    )
    stats_path.write_text(json.dumps(stats, indent=2))
    print(json.dumps({k: stats[k] for k in ("vocab_size", "train_tokens", "train_tokens_by_kind")}))


if __name__ == "__main__":
    main()
