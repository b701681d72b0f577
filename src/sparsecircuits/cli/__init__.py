"""The `sparsecircuits` command line: one module per subcommand, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
import typing

from sparsecircuits import __version__
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.threads import set_threads

# Subcommand modules under sparsecircuits.cli, in the order `--help` lists them.
COMMANDS = [
    "demo",
    "train",
    "eval",
    "sweep",
    "tc-vs-sae",
    "tasks",
    "paths",
    "case-study",
    "adapters",
    "trace",
    "identify",
    "dashboards",
    "serve",
    "presets",
    "convert",
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one `error:` line (status 2), like every other
    error the CLI reports; subcommand parsers are of this class too."""

    def error(self, message: str) -> typing.NoReturn:
        """Print `error: MESSAGE (see PROG --help)` on stderr and exit with status 2."""
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = Parser(
        prog="sparsecircuits",
        description="Train transcoders and SAEs, trace circuits through them, and look at them.",
    )
    parser.add_argument("--version", action="version", version=f"sparsecircuits {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch and the numba kernels (default: SPARSECIRCUITS_THREADS, "
        "else one per core); goes before the command",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sparsecircuits.cli.{name.replace('-', '_')}").register(sub)
    return parser


def _quiet_third_party() -> None:
    """Silence Hugging Face loading bars and advisory warnings; our own progress bars remain."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    for library_logging in (hf_logging, ds_logging):
        library_logging.set_verbosity_error()
        library_logging.disable_progress_bar()


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and what to check."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}; check the path and its permissions"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for user errors, printed without a traceback)."""
    parser = build_parser()
    _quiet_third_party()
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        return int(args.func(args) or 0)
    except SparseCircuitsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named cannot be read or written
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
