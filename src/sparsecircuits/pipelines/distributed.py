"""Data-parallel training from a run config, one process per rank, under torchrun (see
`sparsecircuits.training.distributed`); rank 0 prints one JSON line per dictionary."""

from __future__ import annotations

import argparse
import json
import sys

import torch.distributed as dist

from sparsecircuits.config import from_dict, read_config_file
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.pipelines.train import RunConfig, train_run
from sparsecircuits.training.distributed import init_distributed


def main(argv: list[str] | None = None) -> int:
    """`torchrun ... -m sparsecircuits.pipelines.distributed --config run.yaml [--resume]`; returns
    the exit status (2 on a user error)."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsecircuits.pipelines.distributed",
        description="Data-parallel dictionary training; launch with torchrun --nproc_per_node N.",
    )
    parser.add_argument("--config", required=True, help="run config (.yaml/.json), as for `train`")
    parser.add_argument("--out", default=None, help="override the config's output folder")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument(
        "--backend",
        default=None,
        choices=("gloo", "nccl"),
        help="default: nccl with CUDA, else gloo",
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda:LOCAL_RANK under nccl, else cpu"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace another run's checkpoints in --out"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        mapping = read_config_file(args.config)
        if args.out:
            mapping["out"] = args.out
        cfg = from_dict(RunConfig, mapping, where=str(args.config))
        context = init_distributed(args.backend, args.device or cfg.device)
        cfg.device = context.device
        dictionaries, result, _ = train_run(
            cfg, resume=args.resume, quiet=args.quiet, context=context, overwrite=args.overwrite
        )
    except SparseCircuitsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if context.is_main:
        for name in dictionaries:
            print(json.dumps({**result.record(name), "world_size": context.world_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
