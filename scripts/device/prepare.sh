#!/usr/bin/env bash
# Prepare everything the device run (scripts/device/run.sh) needs, on this machine, into the
# git-ignored folder .device/ that the device call carries. See scripts/device/README.md.
#
#   bash scripts/device/prepare.sh            # corpus, tokenizer, packages, size check
#   SKIP_CORPUS=1 bash scripts/device/prepare.sh   # keep an existing .device/v3
#
# Writes:
#   .device/v3/             corpus_train.jsonl.xz (the v3 pretraining text, checked for test-split
#                           items), the v3 tokenizer files, corpus_stats.json
#   .device/site-core.tar.xz  packages sparsecircuits needs that the device image lacks
#   .device/site-sae.tar.xz   eai-sparsify, SAELens and what they import (the benchmarks)
#   .device/site-ct.tar.xz    circuit-tracer with the transformers 4.57 it pins (its own tree)
# and prints the size that travels (tracked files + .device) against the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/work/main/.venv/bin/python}
DEV=.device
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=src
mkdir -p "$DEV/v3" "$DEV/wheels"

if [ -z "${SKIP_CORPUS:-}" ]; then
  # The shipped model stays untouched: held-out prose and tokenizer go to .device/v3.
  "$PY" scripts/embedded/build_corpus.py --synthetic-frac 0.4 --seed 0 --ship "$DEV/v3"
  "$PY" scripts/embedded/check_corpus.py runs/embedded/corpus_train.jsonl
  "$PY" scripts/embedded/build_tokenizer.py --vocab 4096 --ship "$DEV/v3"
  rm -f "$DEV/v3/heldout.jsonl"  # the device evaluates on the shipped held-out prose
  cp runs/embedded/corpus_stats.json "$DEV/v3/corpus_stats.json"
  xz -T2 -6 -c runs/embedded/corpus_train.jsonl > "$DEV/v3/corpus_train.jsonl.xz"
fi

# name==version per archive; each was imported by that library's benchmark code path here
# (python -X importtime in .venv-bench / .venv-bench-ct) and is missing from the device image.
CORE="jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19"
SAE="eai-sparsify==1.3.3 sae-lens==6.54.12 transformer-lens==3.9.0 wandb==0.31.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  beartype==0.23.1 better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1
  docstring-parser==0.18.0 simple-parsing==0.1.9 natsort==8.4.0 schedulefree==1.4.1
  platformdirs==4.14.9 sniffio==1.3.1 truststore==0.10.5 httpcore2==2.17.0 httpx2==2.17.0
  googleapis-common-protos==1.76.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2
  opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2"
CT="circuit-tracer==0.5.0 transformer-lens==2.18.0 transformers==4.57.3 tokenizers==0.22.2
  huggingface-hub==0.36.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 beartype==0.14.1 better-abc==0.0.3 fancy-einsum==0.0.3
  typeguard==4.6.1 zstandard==0.25.0 pytz==2026.6
  googleapis-common-protos==1.76.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2
  opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2"
PLATFORMS=""
for n in 17 24 27 28 31 34 35; do PLATFORMS="$PLATFORMS --platform manylinux_2_${n}_x86_64"; done
PLATFORMS="$PLATFORMS --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

fetch() {  # download one pinned wheel for CPython 3.12 on x86-64 Linux (cached in .device/wheels)
  local req=$1 name=${1%%==*} version=${1##*==}
  local stem
  stem=$(echo "$name" | tr '-' '_')
  if ls "$DEV/wheels/" 2>/dev/null | grep -qi "^${stem}-${version}-"; then return; fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLATFORMS -d "$DEV/wheels" "$req"
}

pack() {  # unpack the wheels of a list into one site tree and compress it
  local archive=$1
  shift
  local tree
  tree=$(mktemp -d)
  for req in "$@"; do
    fetch "$req"
    local stem=${req%%==*} version=${req##*==}
    stem=$(echo "$stem" | tr '-' '_')
    unzip -q -o "$(ls "$DEV"/wheels/* | grep -i "/${stem}-${version}-" | head -1)" -d "$tree"
  done
  # wandb is imported by SAELens and never run here (no logging): its service binaries stay out
  rm -rf "$tree/wandb/bin"
  tar -C "$tree" -cf - . | xz -T2 -6 > "$archive"
  rm -rf "$tree"
}

# shellcheck disable=SC2086
pack "$DEV/site-core.tar.xz" $CORE
# shellcheck disable=SC2086
pack "$DEV/site-sae.tar.xz" $SAE
# shellcheck disable=SC2086
pack "$DEV/site-ct.tar.xz" $CT

# Two device calls (README.md): the model call carries v3 + site-core, the benchmark call
# site-core + site-sae + site-ct; each, with the tracked tree, must stay under 64 MiB.
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
base=$((tracked + ${untracked:-0}))
limit=$((64 * 1024 * 1024))
mib() { echo "scale=1; $1 / 1048576" | bc; }
status=0
for call in "model:$DEV/v3 $DEV/site-core.tar.xz" \
  "bench:$DEV/site-core.tar.xz $DEV/site-sae.tar.xz $DEV/site-ct.tar.xz"; do
  name=${call%%:*}
  # shellcheck disable=SC2086
  carry=$(du -cb ${call#*:} | tail -1 | cut -f1)
  total=$((base + carry))
  echo "travelling, $name call: tree $(mib "$base") MiB + carried $(mib "$carry") MiB" \
    "= $(mib "$total") MiB of 64 MiB (carry: ${call#*:})"
  [ "$total" -le "$limit" ] || status=1
done
du -b "$DEV/v3"/* "$DEV"/site-*.tar.xz
if [ "$status" -ne 0 ]; then
  echo "error: a device call would carry more than 64 MiB; drop something from .device" >&2
  exit 1
fi
