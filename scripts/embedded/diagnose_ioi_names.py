"""Where the held-out IOI misses come from: which name tokens the IOI circuit copies, and why.

Prints JSON with three measurements on one model (default: the shipped embedded model):

* `by_pool`: logit diff / accuracy on IOI prompts whose two names come from each token pool
  (training names, held-out names, arbitrary lowercase words, other capitalised tokens), with
  the training templates and with the held-out ones (held-out places and objects throughout).
* `logits`: mean logit of IO, S and a third name absent from the prompt, training vs held-out
  names: how far the circuit lifts an in-context name above an absent one.
* `membership_shift`: held-out IOI (`run_tasks`, n = `--n`) after adding `alpha` times the
  difference of the mean *input* embeddings (training names minus held-out names) to the
  held-out names only (controls: alpha -0.5; a random direction as long as half the offset;
  half the offset measured on one half of the held-out names, added to the other half only);
  the output side is left as it is (a shift common to IO and S cannot change their logit
  difference). A diagnosis, never a way to build the model: it uses the held-out list.

Usage: python scripts/embedded/diagnose_ioi_names.py [--model DIR] [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.models.embedded import embedded_dir  # noqa: E402
from sparsecircuits.tasks import ioi, run_tasks  # noqa: E402
from sparsecircuits.tasks.common import batch_token_lists, encode  # noqa: E402


def word_pools(vocab: dict[str, int]) -> dict[str, list[str]]:
    """Return single-token word pools (" word" form) by kind; held-out task words excluded."""
    spaced = [p[1:] for p in vocab if p.startswith("Ġ") and p[1:].isascii() and p[1:].isalpha()]
    train, held = set(ioi.NAMES_TRAIN), set(ioi.NAMES_HELDOUT)
    held_words = set(ioi.PLACES_HELDOUT + ioi.OBJECTS_HELDOUT)
    return {
        "train_names": sorted(w for w in spaced if w in train),
        "heldout_names": sorted(w for w in spaced if w in held),
        "lowercase_words": sorted(
            w for w in spaced if w.islower() and len(w) >= 3 and w not in held_words
        ),
        "other_capitalised": sorted(
            w for w in spaced if w[0].isupper() and len(w) >= 3 and w not in train | held
        ),
    }


def ioi_batch(
    tok: Any, names: Sequence[str], templates: Sequence[str], n: int, seed: int, third: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (input_ids [n, L], last_pos [n], answer ids [n, 3]: IO, S, an absent name).

    Even rows ABBA, odd rows BABA; places and objects from the held-out pools.
    """
    vocab = tok.get_vocab()
    rng = random.Random(seed)
    lists, answers = [], []
    for i in range(n):
        io, s, absent = rng.sample(list(names), 3) if third else [*rng.sample(list(names), 2), ""]
        full = ioi.ioi_sentence(
            rng.choice(templates),
            io,
            s,
            rng.choice(ioi.PLACES_HELDOUT),
            rng.choice(ioi.OBJECTS_HELDOUT),
            "BABA" if i % 2 else "ABBA",
        )
        lists.append(encode(tok, full[: -len(" " + io)]))
        answers.append([vocab["Ġ" + io], vocab["Ġ" + s], vocab["Ġ" + (absent or s)]])
    ids, last = batch_token_lists(tok, lists, True)
    return ids, last, torch.tensor(answers)


def final_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """Return the logits at each prompt's last position, `[n, vocab]`."""
    with torch.no_grad():
        return forward(ids)[torch.arange(ids.shape[0]), last]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=embedded_dir())
    p.add_argument("--n", type=int, default=1000, help="prompts for the membership shift")
    p.add_argument("--per-pool", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(embedded_dir())
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    forward = lambda x: model(input_ids=x).logits  # noqa: E731
    pools = word_pools(tok.get_vocab())
    report: dict[str, Any] = {"model": str(args.model), "pool_sizes": {}, "by_pool": {}}
    for kind, templates in (("train", ioi.TEMPLATES_TRAIN), ("heldout", ioi.TEMPLATES_HELDOUT)):
        for name, pool in pools.items():
            report["pool_sizes"][name] = len(pool)
            ids, last, ans = ioi_batch(tok, pool, templates, args.per_pool, 1, third=False)
            lg = final_logits(forward, ids, last)
            rows = torch.arange(len(ans))
            ld = lg[rows, ans[:, 0]] - lg[rows, ans[:, 1]]
            report["by_pool"][f"{kind}_templates/{name}"] = {
                "logit_diff": round(ld.mean().item(), 2),
                "accuracy_abba": round((ld[0::2] > 0).float().mean().item(), 3),
                "accuracy_baba": round((ld[1::2] > 0).float().mean().item(), 3),
            }
    report["logits"] = {}
    for name in ("train_names", "heldout_names"):
        ids, last, ans = ioi_batch(tok, pools[name], ioi.TEMPLATES_TRAIN, 400, 2, third=True)
        lg = final_logits(forward, ids, last)
        picked = lg.gather(1, ans)
        report["logits"][name] = dict(
            zip(("io", "s", "absent"), (round(v, 2) for v in picked.mean(0).tolist()), strict=True)
        )
    vocab = tok.get_vocab()
    train_ids = torch.tensor([vocab["Ġ" + w] for w in pools["train_names"]])
    held_ids = torch.tensor([vocab["Ġ" + w] for w in pools["heldout_names"]])
    weight = model.transformer.wte.weight.detach().clone()
    offset = weight[train_ids].mean(0) - weight[held_ids].mean(0)
    report["membership_offset_norm"] = round(offset.norm().item(), 3)
    report["train_names_mean_norm"] = round(weight[train_ids].mean(0).norm().item(), 3)
    random_dir = torch.randn(offset.shape, generator=torch.Generator().manual_seed(0))
    shifts = {"0.0": 0.0 * offset, "0.5": 0.5 * offset, "1.0": offset, "-0.5": -0.5 * offset}
    # control: a random direction as long as half the offset
    shifts["random_0.5"] = random_dir / random_dir.norm() * 0.5 * offset.norm()
    # split half: the offset measured on the first half of the held-out names, added to the
    # other half only (all held-out names still evaluated)
    first, second = held_ids[: len(held_ids) // 2], held_ids[len(held_ids) // 2 :]
    half_offset = weight[train_ids].mean(0) - weight[first].mean(0)
    cases = [(alpha, held_ids, shift) for alpha, shift in shifts.items()]
    cases.append(("split_half_0.5", second, 0.5 * half_offset))
    report["membership_shift"] = []
    for alpha, rows, shift in cases:
        shifted = weight.clone()
        shifted[rows] += shift

        def shifted_forward(x: torch.Tensor, e: torch.Tensor = shifted) -> torch.Tensor:
            hidden = model.transformer(inputs_embeds=e[x]).last_hidden_state
            return model.lm_head(hidden)

        res = run_tasks(shifted_forward, tok, n=args.n, seed=0, prose_contexts=5)
        report["membership_shift"].append({"alpha": alpha, **res["ioi"]})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
