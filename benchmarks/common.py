"""Shared plumbing for the benchmarks: JSON output, interleaved timing, memory, models, batches.

Every benchmark prints records through `emit`, one JSON object per line on the real stdout.
Anything else (library banners, progress bars) goes to stderr: `redirect_library_output`
points `sys.stdout` at stderr while benchmarks run, so the JSON stream stays parseable.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_JSON_OUT = sys.stdout
_RECORDS: list[dict[str, Any]] = []


@dataclass
class BenchOptions:
    """Command-line options every benchmark sees."""

    quick: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    tf32: bool = False
    repeats: int = 5
    min_time_s: float = 0.4
    model: str = "auto"  # "auto" | "embedded" | "tiny" | a local model folder
    threads: int | None = None
    compete: str | None = None  # a `Competitor` kind: measure each pair alone and beside it
    train_cases: str | None = None  # "ARCHITECTURE:D_SAE,...": the train_step cases to run
    # TopK train steps: this fraction of the latents held dead, so AuxK runs on both sides
    dead_frac: float = 0.0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sc-bench-")))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The `torch.dtype` named by `dtype`."""
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]

    def base_config(self) -> dict[str, Any]:
        """Fields every record's `config` carries."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "tf32": self.tf32,
            "threads": torch.get_num_threads(),
        }


# ------------------------------------------------------------------------------------ output


def emit(record: dict[str, Any]) -> dict[str, Any]:
    """Print `record` as one JSON line on the real stdout (and keep it for the summary)."""
    _RECORDS.append(record)
    _JSON_OUT.write(json.dumps(record, sort_keys=False) + "\n")
    _JSON_OUT.flush()
    return record


def records() -> list[dict[str, Any]]:
    """Every record emitted so far in this process."""
    return list(_RECORDS)


def skipped(name: str, library: str, config: dict[str, Any], reason: str) -> dict[str, Any]:
    """Emit a record saying a measurement was not made, and why."""
    return emit({"name": name, "library": library, "config": config, "skipped": reason})


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """`{"median", "min", "max"}` of `values`, rounded to `digits` decimals."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """`numerator[i] / denominator[i]` for each repetition `i` (the pairs of one round)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"unpaired samples: {len(numerator)} vs {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def ratio(
    what: str, vs: str, config: dict[str, Any], values: float | Sequence[float], **extra: Any
) -> dict[str, Any]:
    """Emit a ratio record: ours/theirs for speeds, theirs/ours for memory (>1 = we win).

    `values` are the per-repetition ratios, each from one interleaved pair (ours and theirs
    measured back to back in the same round); the record's `ratio` is their median, with
    `ratio_min`, `ratio_max` and `repeats` beside it. A single float is one repetition.
    """
    samples = [float(values)] if isinstance(values, int | float) else [float(v) for v in values]
    stats = spread(samples)
    return emit(
        {
            "kind": "ratio",
            "what": what,
            "vs": vs,
            "config": config,
            "ratio": stats["median"],
            "ratio_min": stats["min"],
            "ratio_max": stats["max"],
            "repeats": len(samples),
            **extra,
        }
    )


@contextlib.contextmanager
def redirect_library_output() -> Iterator[None]:
    """Send `print`s of third-party code to stderr so stdout carries only JSON lines."""
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process since start or the last `reset_peak_rss`, MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now, MiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`), so RSS growth is honest."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux `clear_refs` 5); False where unsupported.

    Freed heap memory is returned to the OS first, so the next peak measures new allocations.
    """
    release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def reset_peak_device_memory(device: str) -> None:
    """Reset CUDA's peak-allocation counter (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_device_memory_mb(device: str) -> float | None:
    """Peak CUDA memory allocated since the last reset, MiB; None on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def memory_fields(device: str) -> dict[str, Any]:
    """`peak_rss_mb` (and `peak_gpu_mb` on CUDA) for a record."""
    out: dict[str, Any] = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    gpu = peak_device_memory_mb(device)
    if gpu is not None:
        out["peak_gpu_mb"] = round(gpu, 1)
    return out


# ------------------------------------------------------------------------------------ timing


def synchronize(device: str) -> None:
    """Wait for queued device work (CUDA) so wall-clock timings are honest."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _iterations_for(fn: Callable[[], Any], device: str, min_time_s: float, warm: bool) -> int:
    """Run `fn` once (warm-up, unless `warm`) and return how many calls fill about `min_time_s`."""
    if not warm:
        fn()
        synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(min_time_s / once))


def time_rounds(
    fns: dict[str, Callable[[], Any]],
    device: str,
    repeats: int,
    min_time_s: float,
    warm: bool = False,
    competitor: Competitor | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of each function in each of `repeats` interleaved rounds.

    Each function is warmed up and calibrated to about `min_time_s` per round; then every
    round times each function in turn (A, B, A, B, ...), so slow drifts of the machine's load
    hit all of them alike and round `i` of A pairs with round `i` of B. `warm=True` skips the
    warm-up call (the caller already ran each function). With a `competitor`, each function is
    timed twice per round, alone and then with the competing process running. Returns
    `({name: [seconds per call, one per round]}, {name: [... under competition]})`; the
    second dict is empty without a competitor.
    """
    iterations = {name: _iterations_for(fn, device, min_time_s, warm) for name, fn in fns.items()}
    alone: dict[str, list[float]] = {name: [] for name in fns}
    contested: dict[str, list[float]] = {name: [] for name in fns} if competitor else {}

    def once(fn: Callable[[], Any], n: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(device)
        return (time.perf_counter() - start) / n

    for _ in range(repeats):
        for name, fn in fns.items():
            alone[name].append(once(fn, iterations[name]))
            if competitor is not None:
                with competitor.running():
                    contested[name].append(once(fn, iterations[name]))
    return alone, contested


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: str,
    repeats: int,
    min_time_s: float,
    warm: bool = False,
) -> dict[str, float]:
    """Median seconds per call of each function over `time_rounds`' interleaved rounds."""
    alone, _ = time_rounds(fns, device, repeats, min_time_s, warm)
    return {name: statistics.median(values) for name, values in alone.items()}


# ------------------------------------------------------------------------------------ competition


class Competitor:
    """One CPU-bound process (`python -m benchmarks.compete KIND`) beside the benchmark.

    It starts once, pinned to no core, and is stopped (SIGSTOP) except inside `running()`
    (SIGCONT), so "alone" and "under competition" measurements can alternate round by round
    without paying a process start each time. `kind` is "spin" (a pure-Python busy loop) or
    "gemm" (a single-threaded numpy matrix-multiply loop).
    """

    def __init__(self, kind: str = "spin"):
        import subprocess

        if kind not in COMPETITOR_KINDS:
            raise ValueError(f"competitor kind must be one of {COMPETITOR_KINDS}, got {kind!r}")
        self.kind = kind
        repo = Path(__file__).resolve().parent.parent
        env = {**os.environ, **{var: "1" for var in _THREAD_VARS}}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.compete", kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=repo,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()  # the loop starts right after this line
        if ready.strip() != "ready":
            self.close()
            raise RuntimeError(f"the competing process did not start (got {ready!r})")
        atexit.register(self.close)
        self.pause()

    def pause(self) -> None:
        """Stop the competing process."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let the competing process run."""
        os.kill(self.proc.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run the competitor for the duration of the `with` block."""
        self.resume()
        time.sleep(0.02)  # let the scheduler put it on a core before the timing starts
        try:
            yield
        finally:
            self.pause()

    def close(self) -> None:
        """End the competing process."""
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
            self.proc.wait()

    def __enter__(self) -> Competitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


COMPETITOR_KINDS = ("spin", "gemm")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def slowdowns(alone: Sequence[float], contested: Sequence[float]) -> dict[str, float]:
    """`spread` of the per-round slowdowns `contested[i] / alone[i]` (above 1: slower)."""
    return spread(paired_ratios(contested, alone))


# ------------------------------------------------------------------------------------ environment


# CPU features that change which GEMM kernels run (AMX makes the bf16 ceiling ~4x the AVX-512 one)
GEMM_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine_summary() -> dict[str, Any]:
    """CPU model and its GEMM-relevant features (`GEMM_FEATURES` present), core count, memory,
    torch build and threads, GPU name if any."""
    cpu = platform.processor() or platform.machine()
    features: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                features = [f for f in GEMM_FEATURES if f in flags]
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_features": features,
        "cpus": os.cpu_count(),
        "mem_gb": mem_gb,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg": [round(v, 2) for v in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def library_versions() -> dict[str, str | None]:
    """Installed versions of the compared libraries (None where absent)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    ct_python = Path(__file__).resolve().parent.parent / ".venv-bench-ct" / "bin" / "python"
    ct_python = Path(os.environ.get("SC_BENCH_CT_PYTHON", ct_python))
    if ct_python.exists() and Path(sys.prefix).resolve() != ct_python.parent.parent.resolve():
        import subprocess

        probe = subprocess.run(
            [
                str(ct_python),
                "-c",
                "import importlib.metadata as m; print(m.version('circuit-tracer'))",
            ],
            capture_output=True,
            text=True,
        )
        out["circuit-tracer (.venv-bench-ct)"] = probe.stdout.strip() or None
    for dist in (
        "sparsecircuits",
        "eai-sparsify",
        "sae-lens",
        "circuit-tracer",
        "transformers",
        "transformer-lens",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def apply_precision(options: BenchOptions) -> None:
    """Set TF32 (CUDA) and CPU thread settings from the options."""
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = options.tf32
        torch.backends.cudnn.allow_tf32 = options.tf32
    torch.set_float32_matmul_precision("high" if options.tf32 else "highest")


# ------------------------------------------------------------------------------------ models


def tiny_gpt2_folder(workdir: Path) -> Path:
    """A random-init GPT-2 of the embedded model's shape (4 layers, d_model 256, vocab 4096)."""
    from benchmarks.scale_model import fast_tokenizer_class
    from sparsecircuits.models.tiny import build_tiny_model

    folder = workdir / "tiny-gpt2-256"
    if not (folder / "config.json").is_file():
        build_tiny_model(
            "gpt2", folder, d_model=256, n_layers=4, n_heads=4, vocab_size=4096, max_context=256
        )
        fast_tokenizer_class(folder)  # circuit-tracer's transformers 4.x reads it too
    return folder


def model_source(options: BenchOptions) -> str:
    """The model every benchmark uses: the embedded model when installed, else the tiny GPT-2."""
    if options.model not in ("auto", "embedded", "tiny"):
        return options.model
    if options.model in ("auto", "embedded"):
        try:
            from sparsecircuits.models.loading import embedded_model_dir

            return str(embedded_model_dir())
        except Exception:  # noqa: BLE001 - not installed yet: fall back
            if options.model == "embedded":
                raise
    return str(tiny_gpt2_folder(options.workdir))


def load_adapter(options: BenchOptions) -> Any:
    """The `ModelAdapter` of `model_source(options)` on the benchmark device and dtype."""
    from sparsecircuits.models import load_model

    return load_model(model_source(options), device=options.device, dtype=options.torch_dtype)


def model_label(path: str) -> str:
    """Short name for a model path in records."""
    return "embedded" if "models/embedded" in path.replace(os.sep, "/") else Path(path).name


def random_contexts(
    vocab_size: int, n_contexts: int, context_size: int, seed: int = 0, bos_id: int = 0
) -> torch.Tensor:
    """`[n_contexts, context_size]` random token ids, each context starting with BOS."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (n_contexts, context_size), generator=generator)
    ids[:, 0] = bos_id
    return ids


def text_contexts(adapter: Any, n_contexts: int, context_size: int) -> torch.Tensor:
    """`[n, context_size]` packed contexts of the embedded corpus (random tokens if unavailable)."""
    try:
        from sparsecircuits.data import TokenSource, make_source

        source = TokenSource(
            make_source("embedded"),
            adapter.tokenizer,
            context_size,
            max_context=adapter.max_context,
        )
        contexts = []
        for ctx in source:
            contexts.append(ctx)
            if len(contexts) == n_contexts:
                return torch.stack(contexts)
    except Exception:  # noqa: BLE001 - no corpus: random tokens measure the same work
        pass
    return random_contexts(adapter.vocab_size, n_contexts, context_size)
