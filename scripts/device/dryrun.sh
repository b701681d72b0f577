#!/usr/bin/env bash
# Dry run of scripts/device/run.sh on this machine's CPU: every stage at toy size (2 training
# steps, a 3000-document corpus slice, d_sae 256-512 dictionaries, the tiny benchmark model,
# CUDA tests skipping), in a scratch copy of the repository so the shipped model stays untouched.
# Needs .device/ from prepare.sh and the benchmark environments (.venv-bench, .venv-bench-ct).
#
#   bash scripts/device/dryrun.sh [STAGES]     # default: all seven stages
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
MAIN=${MAIN:-/work/main}
SCRATCH=$(mktemp -d /tmp/sc-dryrun.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/repo"
{ git ls-files; git ls-files --others --exclude-standard; } | while read -r f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$SCRATCH/repo"
mkdir -p "$SCRATCH/repo/.device"
cp -r .device/v3 .device/site-*.tar.xz "$SCRATCH/repo/.device/"
export DEVICE=cpu OUT=$SCRATCH/out WORK=$SCRATCH/work
export PY=${PY:-$MAIN/.venv/bin/python}
export BENCH_PY=${BENCH_PY:-$MAIN/.venv-bench/bin/python}
export SC_BENCH_CT_PYTHON=${SC_BENCH_CT_PYTHON:-$MAIN/.venv-bench-ct/bin/python}
export STAGES=${1:-model tests transcoders train_step graph end_to_end overlap train_step_bf16}
mkdir -p "$OUT"
bash "$SCRATCH/repo/scripts/device/run.sh"
cp -r "$WORK/results" "$OUT/results"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
stages = [json.loads(l) for l in (out / "results" / "stages.jsonl").read_text().splitlines()]
failed = [s["stage"] for s in stages if s["rc"] != 0]
print("dry run:", ", ".join(f"{s['stage']} rc={s['rc']} {s['seconds']}s" for s in stages))
sys.exit(1 if failed else 0)
PY
mkdir -p "$REPO/out"
rm -rf "$REPO/out/device-dryrun"
cp -r "$OUT" "$REPO/out/device-dryrun"
