#!/usr/bin/env bash
# Issue 20's GPU work in stages, each with a time budget, for the device machine (one H100 or H200).
# Prepared here by scripts/device/prepare.sh; the plan, the calls and what to do with the results
# are in scripts/device/README.md.
#
#   STAGES="model tests transcoders" bash scripts/device/run.sh   # call 1 (carry .device/v3,
#                                                                  #  .device/site-core.tar.xz)
#   STAGES="train_step graph end_to_end overlap train_step_bf16" bash scripts/device/run.sh
#                                     # call 2 (carry the three .device/site-*.tar.xz)
#   DEVICE=cpu bash scripts/device/dryrun.sh                       # every stage at toy size here
#
# Stages (run in the order given by STAGES; SKIP_<STAGE>=1 skips one, e.g. SKIP_GRAPH=1):
#   model       v3: encode the carried corpus, pretrain (the shipped recipe, 9000 steps on cuda),
#               fine-tune (the recipe's task stream), evaluate; tasks --split dev / test
#   tests       the tests that run on CUDA when present (fp32; bf16 dictionaries), device_check
#   transcoders the shipped transcoders retrained on v3 (configs/embedded_transcoders.yaml)
#   train_step  benchmarks/run.py train_step: TopK k 64, d_sae 16k and 65k, d_model 2304
#               (random Gemma-2 of Gemma-2-2B's width, GEMMA_LAYERS layers), vs eai-sparsify
#               and SAELens, fp32
#   graph       attribution graphs, 32 and 256 tokens, d_sae 16k, vs circuit-tracer, same model
#   train_step_bf16  the train_step lines in bf16
#   train_step_tf32  (optional) the fp32 lines with TF32 matmuls allowed
#   end_to_end  harvest + training on that model, vs sparsify and SAELens
#   overlap     benchmarks/bench_overlap on that model (issue 21): harvest-only, train-only and
#               end-to-end tokens/s with the background fill on a side stream and without it
#   tc_vs_sae   (optional, issue 17) sparsecircuits tc-vs-sae on the embedded model in the tree
#               (v3 after the model stage): k 16/32/64, every layer, 3 seeds, budgets doubling
#               to 16.8M tokens or the 1 %-per-doubling stop
# Budgets (seconds) BUDGET_<STAGE> cut a stage that runs long; what it wrote so far is kept.
# What comes back, under $OUT: log, summary.json (stages, task numbers, test counts, ratio lines)
# and device-results.tar in parts of at most 15 MiB (device-results.tar.part-00, -01, ...):
# results/ (stages.jsonl, tasks_*.json, pytest-*.xml, device_check.json, bench-*.jsonl) and,
# after the model or transcoders stage, v3-embedded/ (the model folder to ship).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$REPO/out/device}
mkdir -p "$OUT"
PY=${PY:-python3}
BENCH_PY=${BENCH_PY:-$PY}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$([ "$DEVICE" = cpu ] && echo 1 || echo 8)}
SITE=${SITE:-/tmp/site}
SITE_CT=${SITE_CT:-/tmp/site-ct}
WORK=${WORK:-/tmp/sc-device}
RES=$WORK/results  # everything but the log and summary.json; packed into $OUT at the end
mkdir -p "$RES"
GEMMA_LAYERS=${GEMMA_LAYERS:-6}  # Gemma-2-2B's width; 26 layers would not fit the budget
SHIP=src/sparsecircuits/models/embedded
declare -A BUDGET=([model]=${BUDGET_MODEL:-420} [tests]=${BUDGET_TESTS:-150}
  [transcoders]=${BUDGET_TRANSCODERS:-150} [train_step]=${BUDGET_TRAIN_STEP:-150}
  [graph]=${BUDGET_GRAPH:-180} [train_step_bf16]=${BUDGET_TRAIN_STEP_BF16:-100}
  [train_step_tf32]=${BUDGET_TRAIN_STEP_TF32:-100}
  [end_to_end]=${BUDGET_END_TO_END:-100} [overlap]=${BUDGET_OVERLAP:-120}
  [tc_vs_sae]=${BUDGET_TC_VS_SAE:-300})
if [ "$DEVICE" = cpu ]; then  # toy sizes: every command line once, in minutes on 2 cores
  TOY=1
  for stage in "${!BUDGET[@]}"; do BUDGET[$stage]=$((BUDGET[$stage] * 3)); done
  PRETRAIN=(--steps 2)
  FINETUNE=(--finetune-steps 2 --finetune-stream-mb 0.05)
  EVAL=(--eval-n 8 --eval-prose-contexts 4)
  TASK_N=(--n 8)
  TRAIN_CASES=topk:512:8
  GRAPH=(--graph-lengths 8,12 --graph-d-sae 256 --graph-k 8 --graph-theirs-batch-sizes 64)
  BENCH_MODEL=(--model tiny)
else
  TOY=
  PRETRAIN=()
  FINETUNE=()
  EVAL=()
  TASK_N=()
  TRAIN_CASES=topk:16384:64,topk:65536:64
  GRAPH=(--graph-lengths 32,256 --graph-d-sae 16384 --graph-k 64 --graph-theirs-max 256
    --graph-theirs-batch-sizes 256,1024)
  BENCH_MODEL=()
fi
export PYTHONPATH=$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}
[ -z "$TOY" ] && export PYTHONPATH=$PYTHONPATH:$SITE

say() { echo "=== [$(date -u +%H:%M:%S)] $*"; }
run_stage() {  # run_stage NAME: the stage's function under its budget
  local name=$1 skip
  skip=SKIP_$(echo "$name" | tr a-z A-Z)
  if [ -n "${!skip:-}" ]; then say "$name skipped ($skip)"; return; fi
  say "$name start (budget ${BUDGET[$name]} s)"
  local start=$SECONDS
  # the stage and its watchdog run in process groups of their own, so each ends all of the other
  set -m
  ( "stage_$name" ) &
  local pid=$!
  ( sleep "${BUDGET[$name]}"; echo "budget of $name spent: stopping it"; kill -TERM -- "-$pid" ) &
  local watchdog=$!
  set +m
  wait "$pid"
  local rc=$?
  kill -TERM -- "-$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  say "$name end rc=$rc after $((SECONDS - start)) s"
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$RES/stages.jsonl"
}

install_site() {  # install_site ARCHIVE... TARGET: unpack carried package trees into TARGET
  local target=${*: -1}
  mkdir -p "$target"
  for archive in "${@:1:$#-1}"; do
    [ -f "$archive" ] && tar -C "$target" -xJf "$archive"
  done
}

corpus_ready() {  # the carried v3 corpus at runs/embedded/corpus_train.jsonl (a slice when toy)
  [ -s runs/embedded/corpus_train.jsonl ] && return 0
  mkdir -p runs/embedded
  if [ -n "$TOY" ]; then  # shuffled documents: prose, code and synthetic ones
    (xz -dc .device/v3/corpus_train.jsonl.xz || true) | head -n 3000 > runs/embedded/corpus_train.jsonl
  else
    xz -dc .device/v3/corpus_train.jsonl.xz > runs/embedded/corpus_train.jsonl
  fi
}

stage_model() {
  set -e
  corpus_ready
  cp .device/v3/tokenizer.json .device/v3/tokenizer_config.json \
    .device/v3/special_tokens_map.json "$SHIP/"
  cp .device/v3/corpus_stats.json runs/embedded/corpus_stats.json
  $PY scripts/embedded/build_tokenizer.py --encode-only
  local want got
  want=$($PY -c "import json; print(json.load(open('.device/v3/corpus_stats.json'))['train_tokens'])")
  got=$($PY -c "import json; print(json.load(open('runs/embedded/corpus_stats.json'))['train_tokens'])")
  if [ -z "$TOY" ] && [ "$want" != "$got" ]; then
    echo "error: $got corpus tokens here, $want when prepared: tokenizers differ" >&2
    return 1
  fi
  $PY scripts/embedded/check_corpus.py runs/embedded/corpus_train.jsonl
  $PY scripts/embedded/build_all.py --device "$DEVICE" --skip-corpus --skip-tokenizer \
    --skip-finetune "${PRETRAIN[@]}" "${EVAL[@]}"
  cp "$SHIP/train_info.json" "$SHIP/train_info_pretrain.json"
  cp "$SHIP/eval_results.json" "$SHIP/eval_results_pretrain.json"
  $PY scripts/embedded/build_all.py --device "$DEVICE" --skip-corpus --skip-tokenizer \
    --skip-pretrain "${FINETUNE[@]}" "${EVAL[@]}"
  for split in dev test; do
    $PY -m sparsecircuits tasks --model embedded --device "$DEVICE" --split $split --json \
      "${TASK_N[@]}" > "$RES/tasks_$split.json"
    cat "$RES/tasks_$split.json"
  done
}

stage_tests() {
  local files=(tests/models/test_cuda.py tests/dictionaries/test_dtypes.py
    tests/dictionaries/test_kernels.py tests/models/test_loading.py)
  [ -n "$TOY" ] && files=(tests/models/test_cuda.py tests/models/test_loading.py)
  $PY -m pytest -q -p no:cacheprovider -rs "${files[@]}" --junitxml="$RES/pytest-cuda.xml"
  local rc=$?
  if [ -z "$TOY" ]; then OUT=$RES $PY benchmarks/device_check.py || rc=1; fi
  if [ -n "${FULL_SUITE:-}" ]; then
    $PY -m pytest -q -p no:cacheprovider -m "not browser" -n 8 --junitxml="$RES/pytest-all.xml" || rc=1
  fi
  return $rc
}

stage_transcoders() {
  set -e
  local config=configs/embedded_transcoders.yaml
  if [ -n "$TOY" ]; then
    config=$WORK/embedded_transcoders.yaml
    mkdir -p "$WORK"
    sed -e 's/total_tokens: .*/total_tokens: 8192/' -e 's/buffer_tokens: .*/buffer_tokens: 8192/' \
      -e 's/eval_contexts: .*/eval_contexts: 4/' -e 's/d_sae: 2048/d_sae: 256/g' \
      configs/embedded_transcoders.yaml > "$config"
  fi
  corpus_ready
  rm -rf runs/embedded_transcoders
  $PY -m sparsecircuits train --config "$config" --device "$DEVICE"
  $PY scripts/embedded/ship_transcoders.py --contexts "$([ -n "$TOY" ] && echo 4 || echo 64)"
}

ct_python() {  # circuit-tracer's worker: its own tree (transformers 4.57) before the image's
  mkdir -p "$WORK"
  cat > "$WORK/ct-python" <<EOF
#!/usr/bin/env bash
export PYTHONPATH=$SITE_CT:$REPO/src:$REPO
exec $PY "\$@"
EOF
  chmod +x "$WORK/ct-python"
  echo "$WORK/ct-python"
}

bench_setup() {  # the packages (once per machine), circuit-tracer's interpreter, the model
  if [ -z "$TOY" ]; then
    if [ ! -f "$SITE/.bench" ]; then
      install_site .device/site-sae.tar.xz "$SITE" || return 1
      install_site .device/site-core.tar.xz .device/site-ct.tar.xz "$SITE_CT" || return 1
      touch "$SITE/.bench"
    fi
    SC_BENCH_CT_PYTHON=${SC_BENCH_CT_PYTHON:-$(ct_python)}
    export SC_BENCH_CT_PYTHON
    local model
    model=$($BENCH_PY -m benchmarks.scale_model "$WORK" --gemma2-width \
      --n-layers "$GEMMA_LAYERS" | tail -1) || return 1
    BENCH_MODEL=(--model "$model")
  else  # the wheels are for CPython 3.12: unpack them to prove the archives, import from venvs
    install_site .device/site-core.tar.xz .device/site-sae.tar.xz "$WORK/site" || return 1
    install_site .device/site-core.tar.xz .device/site-ct.tar.xz "$WORK/site-ct" || return 1
    ls "$WORK/site/sae_lens" "$WORK/site-ct/circuit_tracer" > /dev/null || return 1
  fi
  $BENCH_PY -c "import sparsify, sae_lens; print('sae_lens', sae_lens.__version__)"
  "${SC_BENCH_CT_PYTHON:-$BENCH_PY}" -c "import circuit_tracer, transformer_lens, transformers
print('circuit-tracer; transformers', transformers.__version__)"
  return 0
}

bench() {  # bench NAME ARGS...: one benchmarks/run.py call, JSON lines to $RES/bench-NAME.jsonl
  local name=$1
  shift
  $BENCH_PY benchmarks/run.py --json --device "$DEVICE" "${BENCH_MODEL[@]}" \
    --workdir "$WORK/bench" --out "$RES/bench-$name.jsonl" "$@"
}

stage_train_step() {
  bench_setup || return 1
  local quick=()
  [ -n "$TOY" ] && quick=(--repeats 3)
  bench train_step-fp32 --only train_step --train-cases "$TRAIN_CASES" "${quick[@]}"
}

stage_train_step_bf16() {
  bench_setup || return 1
  local quick=()
  [ -n "$TOY" ] && quick=(--repeats 3)
  bench train_step-bf16 --only train_step --train-cases "$TRAIN_CASES" --dtype bfloat16 \
    "${quick[@]}"
}

stage_train_step_tf32() {  # optional: fp32 weights with TF32 matmuls (not in the default call)
  bench_setup || return 1
  local quick=()
  [ -n "$TOY" ] && quick=(--repeats 3)
  bench train_step-tf32 --only train_step --train-cases "$TRAIN_CASES" --tf32 "${quick[@]}"
}

stage_graph() {
  bench_setup || return 1
  bench graph --only graph "${GRAPH[@]}" $([ -n "$TOY" ] && echo --quick)
}

stage_end_to_end() {
  bench_setup || return 1
  bench end_to_end --only end_to_end $([ -n "$TOY" ] && echo --quick)
}

stage_overlap() {  # the harvest and training overlap on the device, d_sae 16k, the same model
  bench_setup || return 1
  local size=(--steps 64 --rounds 2 --d-sae 16384)
  [ -n "$TOY" ] && size=(--quick --d-sae 512)
  $BENCH_PY -m benchmarks.bench_overlap --device "$DEVICE" "${BENCH_MODEL[@]}" "${size[@]}" \
    > "$RES/bench-overlap.jsonl"
}

stage_tc_vs_sae() {  # results.jsonl is appended per budget: a budget cut keeps what finished
  corpus_ready
  local sizes=(--max-budget 16777216)
  [ -n "$TOY" ] && sizes=(--layers 0 --ks 8 --seeds 2 --d-sae 64 --first-budget 4096
    --max-budget 8192 --eval-contexts 4 --buffer-tokens 4096 --batch-tokens 1024)
  $PY -m sparsecircuits tc-vs-sae --out "$RES/tc-vs-sae" --device "$DEVICE" \
    --dataset runs/embedded/corpus_train.jsonl --quiet "${sizes[@]}"
  local rc=$?
  rm -rf "$RES"/tc-vs-sae/seed*  # checkpoints: too large to bring back, not needed for the report
  return $rc
}

pack_results() {  # results (and the v3 model) -> one tar in parts of 15 MiB, summary.json, log
  local pack=$WORK/pack
  rm -rf "$pack"
  mkdir -p "$pack/v3-embedded"
  cp -r "$RES" "$pack/results"
  if grep -q -E '"stage": "(model|transcoders)"' "$RES/stages.jsonl" 2>/dev/null; then
    for f in model.safetensors config.json generation_config.json tokenizer.json \
      tokenizer_config.json special_tokens_map.json train_info.json train_info_pretrain.json \
      eval_results.json eval_results_pretrain.json; do
      [ -f "$SHIP/$f" ] && cp "$SHIP/$f" "$pack/v3-embedded/"
    done
    [ -d "$SHIP/transcoders" ] && cp -r "$SHIP/transcoders" "$pack/v3-embedded/"
    [ -f runs/embedded/corpus_stats.json ] && cp runs/embedded/corpus_stats.json "$pack/v3-embedded/"
  fi
  tar -C "$pack" -cf - results v3-embedded | split -b 15M -d - "$OUT/device-results.tar.part-"
  $PY - "$RES" "$OUT/summary.json" <<'EOF'
import json, pathlib, sys
import xml.etree.ElementTree as ET

res, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
summary = {"stages": [json.loads(l) for l in (res / "stages.jsonl").read_text().splitlines()]}
for split in ("dev", "test"):
    f = res / f"tasks_{split}.json"
    if f.is_file() and f.stat().st_size:
        summary[f"tasks_{split}"] = json.loads(f.read_text())
if (res / "device_check.json").is_file():
    summary["device_check"] = json.loads((res / "device_check.json").read_text())
for report in sorted(res.glob("pytest-*.xml")):
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    summary[report.stem] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
overlap = res / "bench-overlap.jsonl"
if overlap.is_file():
    summary["overlap"] = [json.loads(l) for l in overlap.read_text().splitlines() if l.strip()]
summary["ratios"] = [
    record
    for f in sorted(res.glob("bench-*.jsonl"))
    for record in map(json.loads, f.read_text().splitlines())
    if record.get("kind") == "ratio"
]
target.write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k != "ratios"}, indent=1))
print(len(summary["ratios"]), "ratio lines")
EOF
  ls -la "$OUT"
}

main() {
  rm -rf "$RES"
  mkdir -p "$RES"
  : > "$RES/stages.jsonl"
  if [ -z "$TOY" ] && [ -f .device/site-core.tar.xz ]; then
    install_site .device/site-core.tar.xz "$SITE"  # what sparsecircuits imports, every call
  fi
  say "device $DEVICE; stages ${STAGES:-model tests transcoders}; out $OUT"
  if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv || true; fi
  for stage in ${STAGES:-model tests transcoders}; do
    run_stage "$stage"
  done
  pack_results
}

main 2>&1 | tee "$OUT/log"
