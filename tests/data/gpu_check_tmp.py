"""One-off GPU check of the data path (deleted after use)."""
import json, os, sys, tempfile, time
from pathlib import Path
import torch
from sparsecircuits.models.tiny import build_tiny_model, tokenizer_corpus
from sparsecircuits.models import load_model
from sparsecircuits.data import *

out = {}
d = tempfile.mkdtemp()
adapter = load_model(build_tiny_model("gpt2", d + "/m", max_context=64), device=os.environ.get("DEV", "cuda"))
texts = tokenizer_corpus(n_sentences=300, seed=2)
Path(d, "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
src = TokenSource(FileSource(Path(d, "t.jsonl")), adapter.tokenizer, 32)
H = ["blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"]
cfg = ActivationStoreConfig(context_size=32, contexts_per_forward=8, batch_tokens=100, buffer_tokens=1000)
full = list(ActivationStore(adapter, src, H, cfg))
out["n_batches"] = len(full); out["batch_device"] = str(full[0][H[0]].device)
a = ActivationStore(adapter, src, H, cfg)
for _ in range(13): next(a)
b = ActivationStore(adapter, src, H, cfg); b.load_state_dict(json.loads(json.dumps(a.state_dict())))
rest = list(b)
out["resume_exact"] = len(rest) == len(full) - 13 and all(torch.equal(x[h], y[h]) for x, y in zip(rest, full[13:]) for h in H)
ctx = torch.stack(list(src))
with torch.no_grad():
    _, c = adapter.run_with_cache(ctx, H)
want = {h: c[h][:, 1:].reshape(-1, c[h].shape[-1]) for h in H}
served_in = torch.cat([x[H[0]] for x in full]); served_out = torch.cat([x[H[1]] for x in full])
nn = torch.cdist(served_in, want[H[0]], compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
out["aligned_maxerr"] = [float((served_in - want[H[0]][nn]).abs().max()), float((served_out - want[H[1]][nn]).abs().max())]
cache = harvest_to_disk(adapter, src, H, d + "/c", 2000, shard_tokens=700, contexts_per_forward=8, progress=False)
out["cache_maxerr"] = float((cache.read(H[1]) - want[H[1]][:2000].cpu()).abs().max())
print(json.dumps(out), flush=True)
if os.environ.get("DEV") == "cpu":
    sys.exit(0)

# throughput on a GPT-2-small-shaped random model
big = load_model(build_tiny_model("gpt2", d + "/big", d_model=768, n_layers=12, n_heads=12, max_context=128), device="cuda")
H = ["blocks.6.hook_mlp_in", "blocks.6.hook_mlp_out"]
g = torch.Generator().manual_seed(0)
ctxs = torch.randint(1, 512, (8192, 128), generator=g); ctxs[:, 0] = 0
def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); r = fn(); torch.cuda.synchronize(); return time.perf_counter() - t, r
def fwd():
    with torch.no_grad():
        for i in range(0, len(ctxs), 64):
            big.run_with_cache(ctxs[i:i + 64], H)
fwd()
res = {}
for dtype in ("float32",):
    t, _ = timed(fwd); res["forward_only_tok_s"] = int(ctxs.numel() / t)
    for dev in ("cuda", "cpu"):
        cfg = ActivationStoreConfig(context_size=128, contexts_per_forward=64, batch_tokens=4096, buffer_tokens=262144, device=dev)
        s = ActivationStore(big, list(ctxs), H, cfg)
        t, n = timed(lambda: sum(1 for _ in s))
        res[f"store_{dev}_tok_s"] = int(ctxs.shape[0] * 127 / t); res[f"store_{dev}_batches"] = n
    t, _ = timed(lambda: harvest_to_disk(big, list(ctxs), H, d + "/bigc", 8192 * 127, contexts_per_forward=64, progress=False))
    res["harvest_tok_s"] = int(ctxs.shape[0] * 127 / t)
print(json.dumps(res), flush=True)
