"""Device check for a CUDA machine: sparse == dense TopK gradients on CUDA, and TopK train-step
throughput; writes `$OUT/device_check.json`. Run `python benchmarks/device_check.py` from the
repository root (the package installed, or `src` on the path)."""

import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, "src")
from sparsecircuits.dictionaries import DictionaryConfig, kernels  # noqa: E402
from sparsecircuits.dictionaries import make as make_coder  # noqa: E402

res: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench(f, reps, device):
    f()
    f()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        f()
    sync(device)
    return (time.perf_counter() - t) / reps


def kernel_path(sparse):
    """The sparse kernels, or (`sparse=False`) the dense reference they are checked against."""
    return contextlib.nullcontext() if sparse else kernels.dense_reference()


def make(kind, d_in, d_sae, k, device):
    cfg = DictionaryConfig(
        architecture="topk",
        kind=kind,
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        device=device,
        hook_in="a",
        hook_out=None if kind == "sae" else "b",
    )
    return make_coder(cfg)


if torch.cuda.is_available():
    for kind in ("sae", "transcoder"):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 64, generator=g).cuda()
        y = torch.randn(512, 64, generator=g).cuda() if kind != "sae" else None
        dead = torch.zeros(1024, dtype=torch.bool, device="cuda")
        dead[::5] = True
        grads, losses = [], []
        for sparse in (True, False):
            d = make(kind, 64, 1024, 16, "cuda")
            g2 = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in d.parameters():
                    p.copy_(torch.randn(p.shape, generator=g2).cuda() * 0.3)
            with kernel_path(sparse):
                loss, parts = d.loss(x, y, dead_mask=dead)
                loss.backward()
            losses.append(float(loss))
            grads.append([p.grad.clone() for p in d.parameters()])
        res[f"cuda_{kind}_max_rel_grad_diff"] = max(
            float((a - b).abs().max() / b.abs().max()) for a, b in zip(*grads, strict=True)
        )
        res[f"cuda_{kind}_loss_diff"] = abs(losses[0] - losses[1])


def throughput(device, d_in, d_sae, k, n, sparse, reps, dead_fraction=0.1):
    d = make("sae", d_in, d_sae, k, device)
    opt = torch.optim.Adam(d.parameters(), lr=1e-4)
    x = torch.randn(n, d_in, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[: int(d_sae * dead_fraction)] = True

    def step():
        loss, _ = d.loss(x, None, dead_mask=dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        d.before_optimizer_step()
        opt.step()
        d.after_optimizer_step()

    with kernel_path(sparse):
        return round(n / bench(step, reps, device))


def gemm_topk(device, d_in, d_sae, k, n, reps):
    x, W, b = (
        torch.randn(n, d_in, device=device),
        torch.randn(d_in, d_sae, device=device),
        torch.zeros(d_sae, device=device),
    )
    return round(n / bench(lambda: torch.addmm(b, x, W).topk(k, sorted=False), reps, device))


if torch.cuda.is_available():
    for name, cfg in (("small", (256, 4096, 32, 4096)), ("large", (2048, 65536, 64, 8192))):
        res[f"cuda_{name}_gemm_topk_tok_s"] = gemm_topk("cuda", *cfg, 10)
        for sparse in (True, False):
            res[f"cuda_{name}_step_sparse={sparse}_tok_s"] = throughput("cuda", *cfg, sparse, 10)
        res[f"cuda_{name}_step_sparse_nodead_tok_s"] = throughput("cuda", *cfg, True, 10, 0.0)
for threads in (2,):
    torch.set_num_threads(threads)
    res[f"cpu{threads}_small_gemm_topk_tok_s"] = gemm_topk("cpu", 256, 4096, 32, 4096, 3)
    for sparse in (True, False):
        res[f"cpu{threads}_small_step_sparse={sparse}_tok_s"] = throughput(
            "cpu", 256, 4096, 32, 4096, sparse, 3
        )
    res[f"cpu{threads}_small_step_sparse_nodead_tok_s"] = throughput(
        "cpu", 256, 4096, 32, 4096, True, 3, 0.0
    )
print(json.dumps(res, indent=1))
with open(os.path.join(os.environ.get("OUT", "/tmp"), "device_check.json"), "w") as f:
    json.dump(res, f, indent=1)
