# Quick start: `make demo` (set up + run the demo), `make test` (set up + lint + type-check + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck pytest browser-deps compat-deps bench-env bench bench-quick bench-compete crosscheck embedded clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; a looser pin would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsecircuits demo --out out/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

# Browser tests (tests/viewer, marker `browser`): Debian's chromium + chromedriver and the playwright
# Python package. No `playwright install`: the tests launch /usr/bin/chromium, so no browser download.
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install -q playwright

# SAELens, so the test that loads our dictionaries with `sae_lens.SAE.load_from_disk` runs.
compat-deps: $(STAMP)
	@$(BIN)/python -c "import sae_lens" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 -e '.[compat]'

# Rebuild the embedded model (corpus -> tokenizer -> model; a GPU makes the model step minutes)
# and its transcoders. See src/sparsecircuits/models/embedded/MODEL_CARD.md.
embedded: $(STAMP)
	$(BIN)/python scripts/embedded/build_all.py
	$(BIN)/sparsecircuits train --config configs/embedded_transcoders.yaml
	$(BIN)/python scripts/embedded/ship_transcoders.py

# Benchmarks (docs/performance.md). Two environments, because circuit-tracer 0.5.0 pins
# transformers<=4.57.3 and TransformerLens 2.x (which pins numpy<2), while sparsecircuits,
# eai-sparsify and SAELens run on the current transformers. torch is installed first and pinned
# in every step, so no library can pull another (CUDA) build; override BENCH_TORCH for a GPU box.
BENCH_TORCH ?= torch==2.13.0
BENCH := .venv-bench
BENCH_CT := .venv-bench-ct

$(BENCH)/.installed: pyproject.toml
	test -x $(BENCH)/bin/python || $(PY) -m venv $(BENCH)
	echo '*' > $(BENCH)/.gitignore
	$(BENCH)/bin/python -m pip install -q --upgrade pip
	$(BENCH)/bin/python -m pip install -q $(BENCH_TORCH)
	$(BENCH)/bin/python -m pip install -q $(BENCH_TORCH) -e . eai-sparsify==1.3.3 sae-lens==6.54.12
	touch $@

$(BENCH_CT)/.installed: pyproject.toml
	test -x $(BENCH_CT)/bin/python || $(PY) -m venv $(BENCH_CT)
	echo '*' > $(BENCH_CT)/.gitignore
	$(BENCH_CT)/bin/python -m pip install -q --upgrade pip
	$(BENCH_CT)/bin/python -m pip install -q $(BENCH_TORCH)
	$(BENCH_CT)/bin/python -m pip install -q $(BENCH_TORCH) circuit-tracer==0.5.0 \
		transformers==4.57.3 'transformer-lens>=2.16.1,<3' 'pyarrow<22' numba
	# sparsecircuits itself asks for transformers>=5; its worker here needs only the modules
	# circuit-tracer's environment already has, so it goes in without its dependencies
	$(BENCH_CT)/bin/python -m pip install -q --no-deps -e .
	touch $@

bench-env: $(BENCH)/.installed $(BENCH_CT)/.installed

bench: bench-env
	mkdir -p out/bench
	$(BENCH)/bin/python benchmarks/run.py --json --out out/bench/results.jsonl

bench-quick: bench-env
	mkdir -p out/bench
	$(BENCH)/bin/python benchmarks/run.py --json --quick --out out/bench/quick.jsonl

# The train-step and graph pairs, each side timed alone and beside one competing CPU-bound
# process (COMPETE=spin: a Python busy loop; COMPETE=gemm: a 1-thread numpy matmul loop)
COMPETE ?= spin
bench-compete: bench-env
	mkdir -p out/bench
	$(BENCH)/bin/python benchmarks/run.py --json --quick --only train_step,graph \
		--compete $(COMPETE) --out out/bench/compete-$(COMPETE).jsonl

# Cross-checks against independent implementations on the same weights. Hooks: every hook of ours
# on tiny random GPT-2, GPT-NeoX, Llama and Gemma-2 models against TransformerLens's hook of the
# same name (unprocessed weights, max abs difference <= 1e-5 in fp32); ours are dumped here,
# TransformerLens runs in the circuit-tracer environment, which pins its transformers.
# Attributions: our graphs against circuit-tracer's `attribute` on tiny random GPT-2 and Llama
# models with the same transcoder files, entry by entry, pruning and scores; one JSON line per
# model and prompt (docs/validation.md).
CROSSCHECK := out/crosscheck
crosscheck: $(STAMP) $(BENCH_CT)/.installed
	$(BIN)/python scripts/crosscheck/hooks_vs_transformer_lens.py dump --out $(CROSSCHECK)/hooks
	$(BENCH_CT)/bin/python scripts/crosscheck/hooks_vs_transformer_lens.py compare --dir $(CROSSCHECK)/hooks
	$(BIN)/python scripts/crosscheck/attributions_vs_circuit_tracer.py dump --out $(CROSSCHECK)/attributions
	$(BENCH_CT)/bin/python scripts/crosscheck/attributions_vs_circuit_tracer.py compare --dir $(CROSSCHECK)/attributions

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
