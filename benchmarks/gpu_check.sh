#!/usr/bin/env bash
# The GPU check (issue 16) in one device call: clinic's speed and memory claims, measured.
#
#   1. install   benchmarks/gpu_prepare.py install: the wheels in .whl/ that the device image lacks
#                (trl, datasets, dill, multiprocess; pyarrow, fsspec, peft only if its own fail
#                their requirement) into a --target folder put first on PYTHONPATH with src/
#   2. preflight versions, CUDA, every clinic import                          -> env.json
#   3. sink      SDPA sink attention vs eager output_attentions, fp32 + bf16,
#                fused kernels, nothing T×T saved (SmolLM2-135M shape)        -> sink_check.json
#   4. smoke     clinic align (T-Vaccine) / finetune (Surgery) / evaluate / sink / export (+ reload
#                with plain transformers) / a 2-stage grid through --executor local, all on CUDA in
#                bf16, random-init SmolLM2-135M shape; then evaluate of a Llama-3.2-1B shape in bf16,
#                HF batched vs vLLM (when it imports): prompts/s, same greedy answers -> smoke.json
#   5. alignment benchmarks/alignment_cost.py at the Llama-2-7B shape, LoRA  -> alignment_cost.json
#   6. surgery   benchmarks/surgery_cost.py at the Llama-3.2-1B shape, 10x512 and 2x2048
#                                                                             -> surgery_cost.json
#   7. summary   benchmarks/gpu_summary.py: one screen against the goals     -> summary.json
# plus gpu_check.log (everything printed) and steps.tsv (step, exit status, seconds, limit): 8 files,
# the most the device tool brings back. Each step runs under its own time limit (and each
# benchmark subprocess under --worker-timeout), so one stuck part cannot eat the rest; the
# benchmarks rewrite their JSON after every variant and the summary reads whatever finished.
# Limits add up to 535 s (the goal: the whole check within 9 minutes).
#
# On the device machine (the device tool's `run`, from the repository root):
#   command: bash benchmarks/gpu_check.sh
#   carry:   [".whl"]            timeout_s: 590
# .whl/ must exist in the checkout that travels: `python benchmarks/gpu_prepare.py download`
# (benchmarks/gpu_wheels.txt lists the wheels, sizes and pip commands). Results: `python
# benchmarks/gpu_summary.py --install <files_at>` copies them into benchmarks/results/.
#
# CPU rehearsal here (same steps and code, tiny shapes, a few steps; also installs the device's
# transformers 5.17 / huggingface_hub 1.33 from .whl-dryrun/ and records every module each Python
# process imports, then checks each against the device image's package list + the carried wheels):
#   GPU_CHECK_PYTHON=/path/to/venv/python OMP_NUM_THREADS=1 bash benchmarks/gpu_check.sh --dry-run
# OUT defaults to a new temporary folder; the python defaults to ./.venv/bin/python, else python3.
set -u -o pipefail

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "gpu_check.sh: error: unknown argument '$1' (only --dry-run)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$(mktemp -d /tmp/gpu-check-out.XXXXXX)}
mkdir -p "$OUT"
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then PY=$GPU_CHECK_PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
SCRATCH=$(mktemp -d /tmp/gpu-check.XXXXXX)
[[ -n "${GPU_CHECK_KEEP:-}" ]] || trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export CLINIC_CACHE_DIR=$SCRATCH/cache
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
: > "$OUT/steps.tsv"
T0=$(date +%s)

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under a time limit, record exit status and seconds
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "=== $name (limit ${limit} s, $((start - T0)) s into the check)"
  timeout -k 5 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" "$limit" >> "$OUT/steps.tsv"
  [[ $rc -eq 0 ]] || echo "=== $name: exit status $rc"
}

if [[ $DRY -eq 1 ]]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  step install 120 "$PY" benchmarks/gpu_prepare.py install --target "$SCRATCH/site" --dry-run \
    --import-log "$SCRATCH/imports"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  step install 30 "$PY" benchmarks/gpu_prepare.py install --target "$SCRATCH/site"
fi
export PYTHONPATH=$SCRATCH/site:$ROOT/src

step preflight 30 "$PY" benchmarks/gpu_prepare.py preflight --out "$OUT/env.json"
if [[ $DRY -eq 1 ]]; then
  step sink 120 "$PY" benchmarks/gpu_sink_check.py --device cpu --shape tiny --out "$OUT/sink_check.json"
  step smoke 300 "$PY" benchmarks/gpu_smoke.py --shape tiny --stage-timeout 120 --work "$SCRATCH/smoke" \
    --out "$OUT/smoke.json"
  step alignment 300 "$PY" benchmarks/alignment_cost.py --device cpu --shape small --steps 1 --batch 2 --seq 200 \
    --threads 1 --worker-timeout 120 --out "$OUT/alignment_cost.json"
  step surgery 300 "$PY" benchmarks/surgery_cost.py --device cpu --shape small --batches 2x64 --steps 1 --warmup 1 \
    --memory-steps 1 --probe-lengths 16,12 --worker-timeout 120 --output "$OUT/surgery_cost.json"
  step audit 60 "$PY" benchmarks/gpu_prepare.py audit --import-log "$SCRATCH/imports" --out "$OUT/import_audit.json"
  step summary 30 "$PY" benchmarks/gpu_summary.py "$OUT" --dry-run
else
  step sink 45 "$PY" benchmarks/gpu_sink_check.py --device cuda --out "$OUT/sink_check.json"
  step smoke 200 "$PY" benchmarks/gpu_smoke.py --stage-timeout 60 --work "$SCRATCH/smoke" --out "$OUT/smoke.json"
  step alignment 110 "$PY" benchmarks/alignment_cost.py --device cuda --worker-timeout 35 \
    --out "$OUT/alignment_cost.json"
  step surgery 110 "$PY" benchmarks/surgery_cost.py --device cuda --worker-timeout 35 --output "$OUT/surgery_cost.json"
  step summary 10 "$PY" benchmarks/gpu_summary.py "$OUT"
fi
echo "=== done in $(($(date +%s) - T0)) s; files in $OUT:"
ls -l "$OUT"
sleep 1  # let tee write the last lines of gpu_check.log before the device tool collects $OUT
