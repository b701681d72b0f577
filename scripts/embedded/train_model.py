"""Train the embedded GPT-2-architecture model on runs/embedded/train_tokens.npy.

Contexts are 128 tokens: BOS followed by 127 tokens of the packed corpus stream, visited in a
seeded shuffled order. AdamW, linear warmup then cosine decay to 10%. With --minutes the
schedule runs on wall-clock progress (the run ends at the time budget); with --steps it runs on
steps. Checkpoints (model + tokenizer, safetensors) go to runs/embedded/ckpt every
--ckpt-minutes; the final model is written to src/sparsecircuits/models/embedded/.

Usage: python scripts/embedded/train_model.py --minutes 35
       python scripts/embedded/train_model.py --steps 20 --no-save        # throughput probe
       python scripts/embedded/train_model.py --minutes 10 --resume runs/embedded/ckpt
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.tasks import run_tasks  # noqa: E402

BUILD = ROOT / "runs" / "embedded"
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def model_config(vocab: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab,
        n_positions=256,
        n_embd=256,
        n_layer=4,
        n_head=4,
        n_inner=1024,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )


def save(model: GPT2LMHeadModel, folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if folder != SHIP:
        for name in TOKENIZER_FILES:
            shutil.copy(SHIP / name, folder / name)
    (folder / "train_info.json").write_text(json.dumps(info, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--resume", type=str, default=None, help="folder with a saved model")
    p.add_argument("--data-offset", type=int, default=0, help="skip this many contexts (resume)")
    p.add_argument(
        "--synthetic-extra",
        type=int,
        default=0,
        help="contexts per batch drawn from the synthetic-only stream",
    )
    p.add_argument(
        "--synthetic-file",
        default="synthetic_tokens.npy",
        help="token file under runs/embedded for --synthetic-extra (the fine-tune: task_stream_tokens.npy)",
    )
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda (TF32 matmuls allowed on cuda)")
    p.add_argument(
        "--ship-dir", default=None, help="where the final model goes (default: the package)"
    )
    args = p.parse_args()
    if (args.minutes is None) == (args.steps is None):
        raise SystemExit("give exactly one of --minutes / --steps")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tokens = torch.from_numpy(np.load(BUILD / "train_tokens.npy").astype(np.int64))
    tokenizer = AutoTokenizer.from_pretrained(SHIP)
    bos = tokenizer.bos_token_id
    span = args.ctx - 1
    n_ctx = tokens.numel() // span
    synth = torch.from_numpy(np.load(BUILD / args.synthetic_file).astype(np.int64))
    n_syn_ctx = synth.numel() // span
    syn_order = torch.randperm(n_syn_ctx, generator=torch.Generator().manual_seed(args.seed + 1))
    syn_cursor = args.data_offset
    n_main = args.batch - args.synthetic_extra
    order = torch.randperm(n_ctx, generator=torch.Generator().manual_seed(args.seed))
    if args.resume:
        model = GPT2LMHeadModel.from_pretrained(args.resume)
    else:
        model = GPT2LMHeadModel(model_config(len(tokenizer)))
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}  contexts {n_ctx:,}  corpus tokens {tokens.numel():,}", flush=True)
    # Embeddings are not decayed: rare tokens (held-out task words) would otherwise shrink
    # towards zero between their few occurrences.
    decay = [
        p
        for n, p in model.named_parameters()
        if p.dim() >= 2 and ".wte" not in n and ".wpe" not in n
    ]
    no_decay = [
        p
        for n, p in model.named_parameters()
        if not (p.dim() >= 2 and ".wte" not in n and ".wpe" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int, progress: float) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    t0 = time.time()
    last_ckpt = t0
    step, seen, cursor = 0, 0, args.data_offset
    ema = None
    model.train()
    while True:
        elapsed = time.time() - t0
        progress = elapsed / (args.minutes * 60) if args.minutes else step / args.steps
        if progress >= 1.0:
            break
        idx = order[torch.arange(cursor, cursor + n_main) % n_ctx]
        cursor += n_main
        starts = idx * span
        body = tokens[starts.view(-1, 1) + torch.arange(span).view(1, -1)]
        if args.synthetic_extra:
            sidx = syn_order[
                torch.arange(syn_cursor, syn_cursor + args.synthetic_extra) % n_syn_ctx
            ]
            syn_cursor += args.synthetic_extra
            sbody = synth[(sidx * span).view(-1, 1) + torch.arange(span).view(1, -1)]
            body = torch.cat([body, sbody])
        batch = torch.cat([torch.full((args.batch, 1), bos), body], dim=1).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += batch.numel()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0 or step == 1:
            el = time.time() - t0
            print(
                f"step {step} loss {loss.item():.4f} ema {ema:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"tokens {seen:,} tok/s {seen / el:,.0f} elapsed {el / 60:.1f}m",
                flush=True,
            )
        if not args.no_save and time.time() - last_ckpt > args.ckpt_minutes * 60:
            model.eval()
            with torch.no_grad():
                res = run_tasks(
                    lambda x: model(input_ids=x.to(device)).logits.float().cpu(),
                    tokenizer,
                    n=60,
                    seed=1,
                    prose_contexts=40,
                )
            model.train()
            info = {
                "step": step,
                "tokens": seen,
                "elapsed_s": time.time() - t0,
                "cursor": cursor,
                "ema_train_loss": ema,
                "tasks": res,
            }
            save(model, BUILD / "ckpt", info)
            print("CKPT", json.dumps(info), flush=True)
            last_ckpt = time.time()
    el = time.time() - t0
    print(
        f"done: {step} steps, {seen:,} tokens, {el / 60:.1f} min, {seen / el:,.0f} tok/s",
        flush=True,
    )
    if args.no_save:
        return
    model.eval()
    info = {
        "step": step,
        "tokens": seen,
        "elapsed_s": el,
        "cursor": cursor,
        "ema_train_loss": ema,
        "n_params": n_params,
        "args": vars(args),
    }
    model.to("cpu")
    save(model, BUILD / "ckpt", info)
    save(model, Path(args.ship_dir) if args.ship_dir else SHIP, info)
    print("FINAL", json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
