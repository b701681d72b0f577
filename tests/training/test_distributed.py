"""Data-parallel training: two gloo ranks on CPU equal one process on the concatenated batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.training import TrainConfig, Trainer
from sparsecircuits.training.distributed import ShardedContexts

D, D_SAE, BATCH, STEPS = 8, 128, 32, 6

# Run by torchrun in each rank. Batch i of the global stream is the same random tensor on every
# rank; rank r trains on rows [r*B/W, (r+1)*B/W) of it.
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from sparsecircuits.training.distributed import DistributedTrainer, init_distributed
    sys.path.insert(0, sys.argv[2])
    from distributed_case import build, global_batch, train_config

    out = sys.argv[1]
    torch.set_num_threads(1)
    ctx = init_distributed(backend="gloo", device="cpu", timeout_s=60)

    class Shard:
        def __init__(self):
            self.i = 0
        def next_batch(self):
            batch = global_batch(self.i)
            self.i += 1
            n = batch["in"].shape[0] // ctx.world_size
            return {k: v[ctx.rank * n:(ctx.rank + 1) * n] for k, v in batch.items()}
        def state_dict(self):
            return {"i": self.i}
        def load_state_dict(self, state):
            self.i = int(state["i"])

    dicts = build()
    trainer = DistributedTrainer(Shard(), dicts, train_config(), ctx, out_dir=out)
    result = trainer.train()
    weights = {f"{n}.{k}": v.contiguous() for n, d in dicts.items() for k, v in d.state_dict().items()}
    save_file(weights, f"{out}/rank{ctx.rank}.safetensors")
    counters = {n: c.tolist() for n, c in trainer.tokens_since_fired.items()}
    with open(f"{out}/rank{ctx.rank}.json", "w") as fh:
        json.dump({"tokens": result.tokens, "steps": result.steps, "counters": counters}, fh)
    """
)

# Shared by the workers and the single-process reference (imported from the test's tmp dir).
CASE = textwrap.dedent(
    f"""
    import torch
    from sparsecircuits.dictionaries import DictionaryConfig, make
    from sparsecircuits.training import TrainConfig

    D, D_SAE, BATCH, STEPS = {D}, {D_SAE}, {BATCH}, {STEPS}

    def build():
        topk = make(DictionaryConfig(architecture="topk", kind="transcoder", d_in=D,
            d_sae=D_SAE, d_out=D, hook_in="in", hook_out="out", k=4, recon_loss="mse",
            aux_k_coefficient=0.0, seed=1))
        relu = make(DictionaryConfig(architecture="relu", kind="sae", d_in=D,
            d_sae=D_SAE, hook_in="in", l1_coefficient=1e-2, seed=2))
        return {{"topk": topk, "relu": relu}}

    def global_batch(i):
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(BATCH, D, generator=g) * torch.linspace(0.5, 2.0, D)
        return {{"in": x, "out": torch.tanh(x @ torch.ones(D, D) / D + x)}}

    def train_config():
        # dead_tokens small enough that latents die mid-run, so the counters matter.
        return TrainConfig(total_tokens=BATCH * STEPS, batch_tokens=BATCH, lr=1e-2, warmup_steps=2,
                           decay_start=0.5, quiet=True, dead_tokens=3 * BATCH, checkpoint_every=3,
                           log_every=2)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _case_module(folder: Path):
    (folder / "distributed_case.py").write_text(CASE)
    sys.path.insert(0, str(folder))
    try:
        import importlib

        import distributed_case  # type: ignore[import-not-found]

        return importlib.reload(distributed_case)
    finally:
        sys.path.remove(str(folder))


class _Global:
    def __init__(self, case):
        self.case, self.i = case, 0

    def next_batch(self):
        batch = self.case.global_batch(self.i)
        self.i += 1
        return batch

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = int(state["i"])


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    case = _case_module(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(out),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    torch.set_num_threads(1)
    reference = case.build()
    trainer = Trainer(_Global(case), reference, case.train_config(), out_dir=tmp_path / "ref")
    single = trainer.train()
    expected = {f"{n}.{k}": v for n, d in reference.items() for k, v in d.state_dict().items()}

    for rank in (0, 1):
        got = load_file(str(out / f"rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=2e-5, rtol=1e-4, msg=key)
        info = json.loads((out / f"rank{rank}.json").read_text())
        assert info["tokens"] == single.tokens == BATCH * STEPS
        for name, counter in trainer.tokens_since_fired.items():
            assert info["counters"][name] == counter.tolist(), name
    # some latent skipped a step (counted with both ranks' tokens), or the check proved nothing
    assert any((c >= BATCH).any() for c in trainer.tokens_since_fired.values())
    # rank 0 alone wrote checkpoints and the log
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step_000000003", "step_000000006"]
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [2, 4, 6]


def test_sharded_contexts_deal_whole_rounds() -> None:
    stream = [torch.full((4,), i) for i in range(7)] + [torch.stack([torch.full((4,), 7)] * 2)]
    shards = [list(ShardedContexts(stream, r, 3)) for r in range(3)]
    firsts = [[int(c[0]) for c in shard] for shard in shards]
    assert firsts == [[0, 3, 6], [1, 4, 7], [2, 5, 7]]  # 9 contexts: 3 whole rounds
    assert [int(c[0]) for c in ShardedContexts(stream, 0, 4)] == [0, 4]  # the 9th is dropped
    assert list(ShardedContexts(stream, 1, 3))[0][0] == 1  # re-iterable
    with pytest.raises(Exception, match="rank 3"):
        ShardedContexts(stream, 3, 3)


def test_one_process_context_is_plain_trainer() -> None:
    from sparsecircuits.training.distributed import DistributedContext, DistributedTrainer

    d = make(
        DictionaryConfig(architecture="relu", kind="sae", d_in=D, d_sae=D_SAE, hook_in="in", seed=0)
    )
    ref = make(
        DictionaryConfig(architecture="relu", kind="sae", d_in=D, d_sae=D_SAE, hook_in="in", seed=0)
    )

    class Same:
        def next_batch(self):
            g = torch.Generator().manual_seed(5)
            return {"in": torch.randn(BATCH, D, generator=g)}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = TrainConfig(total_tokens=BATCH * 3, batch_tokens=BATCH, lr=1e-2, quiet=True)
    DistributedTrainer(Same(), {"d": d}, cfg, DistributedContext()).train()
    Trainer(Same(), {"d": ref}, TrainConfig(**{**cfg.__dict__})).train()
    for (name, a), b in zip(d.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
