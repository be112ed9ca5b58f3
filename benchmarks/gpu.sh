#!/usr/bin/env bash
# Everything GPU-side in one command, for whoever has a card: tables (Markdown + JSON) into one folder.
#
#   bash benchmarks/gpu.sh [OUT_DIR] [--smoke]
#
# OUT_DIR defaults to benchmarks/results-gpu. Budget: under 8 minutes on one H100. Each stage runs under its own
# `timeout`, so the whole script stays inside the budget even if one stage is slower than planned; a stage that
# ran out of time or failed is named in OUT_DIR/README.md, and the others' tables are kept.
#
# Stages (bf16 autocast unless noted; every training table interleaves its variants in one process on shared
# weights, so the ratios in a table come from one run; limits in seconds sum to 450):
#   1. DiT-B/2 training step, batch 256 (limit 130): vanilla, dtr, random, task_specific_sharing and the
#      published-style baseline (pub_vanilla, pub_dtr), eager; dtr with torch.compile; pub_dtr with fp16 autocast,
#      eager, torch's default AdamW (the published recipe) for the end-to-end comparison.
#   2. DiT-L/2 training step, eager, batch 128 (limit 50): vanilla, dtr, pub_vanilla, pub_dtr. Eager bf16 at batch
#      256 needs ~77 GB of saved activations alone (measured per token on CPU autocast), more than an H100 has.
#   3. DiT-L/2 training step, compiled, batch 256 (limit 150): vanilla and dtr (MFU, memory, overhead).
#   4. DDIM-50 sampling, DiT-B/2, 256 images, with and without guidance (cfg 4) (limit 50).
#   5. ADM-64 training step (guided-diffusion's 64x64 ImageNet model), batch 64, channels_last (limit 35).
#   6. Routing cost per DiT-B/2 block (component level) at batch 256 (limit 20).
#   7. FID time with the offline digits-classifier extractor (limit 15; skipped if it is not available).
# A stage that hits its limit gets SIGINT and writes the rounds it completed (its table says so).
# With --smoke every stage shrinks to a tiny model and a few steps on whatever device there is (CPU here), and
# compile uses the aot_eager backend: it proves the script and its python invocations run end to end.
set -u -o pipefail

OUT="benchmarks/results-gpu"
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) OUT="$arg" ;;
  esac
done
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
mkdir -p "$OUT"
STATUS="$OUT/.status"
: > "$STATUS"
START=$(date +%s)

# stage NAME TIMEOUT_S ARGS...: run one python benchmark under a time limit and record how it ended
stage() {
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*" >&2
  timeout --signal=INT --kill-after=15 "$limit" "$PY" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then echo "| $name | ok | ${took}s |" >> "$STATUS"
  elif [ $rc -eq 124 ]; then echo "| $name | TIME LIMIT ${limit}s reached: partial results (its table says how many rounds) | ${took}s |" >> "$STATUS"
  elif [ $rc -eq 137 ]; then echo "| $name | KILLED after the ${limit}s limit, no table (see $name.log) | ${took}s |" >> "$STATUS"
  else echo "| $name | FAILED, exit $rc (see $name.log) | ${took}s |" >> "$STATUS"
  fi
  tail -n 3 "$OUT/$name.log" >&2
}

if [ $SMOKE -eq 1 ]; then
  COMMON=(--device auto --threads 1)
  TRAIN=(--smoke --compile-backend aot_eager)
  B2=(--model tiny); L2E=(--model tiny); L2C=(--model tiny)
  SAMPLE=(--smoke); ADM=(--adm-preset small); RO=(--smoke); EVAL=(--smoke)
  LIMIT_B2=300; LIMIT_L2E=300; LIMIT_L2C=300; LIMIT_S=120; LIMIT_ADM=120; LIMIT_RO=120; LIMIT_EVAL=120
else
  COMMON=(--device cuda)
  TRAIN=(--steps 30 --warmup 3)
  B2=(--model B/2 --batch 256 --input-size 32)
  L2E=(--model L/2 --batch 128 --input-size 32)
  L2C=(--model L/2 --batch 256 --input-size 32)
  SAMPLE=(--model B/2 --input-size 32 --num-images 256 --reps 2 --warmup 1)
  ADM=(--adm-preset adm-64 --adm-batch 64 --channels-last)
  RO=(--model B/2 --batch 256 --input-size 32 --reps 20 --op-reps 200)
  EVAL=(--num-samples 10000)
  LIMIT_B2=130; LIMIT_L2E=50; LIMIT_L2C=150; LIMIT_S=50; LIMIT_ADM=35; LIMIT_RO=20; LIMIT_EVAL=15
fi

stage train_step_B2 $LIMIT_B2 benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${B2[@]}" --backbone dit \
  --precision bf16 --out-dir "$OUT" --tag B2 \
  --variants vanilla,dtr,random,task_specific_sharing,pub_vanilla,pub_dtr,dtr+compile,pub_dtr@fp16
stage train_step_L2_eager $LIMIT_L2E benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${L2E[@]}" --backbone dit \
  --precision bf16 --out-dir "$OUT" --tag L2_eager --variants vanilla,dtr,pub_vanilla,pub_dtr
stage train_step_L2_compile $LIMIT_L2C benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${L2C[@]}" --backbone dit \
  --precision bf16 --compile --out-dir "$OUT" --tag L2_compile --variants vanilla,dtr
stage sample_B2 $LIMIT_S benchmarks/sample.py "${COMMON[@]}" "${SAMPLE[@]}" --precision bf16 --cfg-scales 1.0,4.0 \
  --variants vanilla,dtr --out-dir "$OUT" --tag B2
stage train_step_adm64 $LIMIT_ADM benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${ADM[@]}" --backbone adm \
  --precision bf16 --variants vanilla,dtr,random,task_specific_sharing --out-dir "$OUT" --tag adm64
stage routing_overhead_B2 $LIMIT_RO benchmarks/routing_overhead.py "${COMMON[@]}" "${RO[@]}" --precision bf16 \
  --out-dir "$OUT" --tag B2
stage eval_fid $LIMIT_EVAL benchmarks/eval.py "${COMMON[@]}" "${EVAL[@]}" --out-dir "$OUT"

TOTAL=$(( $(date +%s) - START ))
{
  echo "# GPU benchmarks"
  echo
  echo "Produced by \`bash benchmarks/gpu.sh $*\` in ${TOTAL}s on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
  if command -v nvidia-smi > /dev/null 2>&1; then
    echo "Card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)."
  fi
  [ $SMOKE -eq 1 ] && echo && echo "**Smoke run**: tiny models, a few steps; the numbers mean nothing."
  echo
  echo "| stage | result | time |"
  echo "|---|---|---|"
  cat "$STATUS"
  for f in train_step_B2 train_step_L2_eager train_step_L2_compile sample_B2 train_step_adm64 routing_overhead_B2 eval; do
    if [ -f "$OUT/$f.md" ]; then echo; cat "$OUT/$f.md"; fi
  done
  if [ -f "$OUT/eval_fid.log" ] && grep -q "skipped" "$OUT/eval_fid.log"; then echo; grep "skipped" "$OUT/eval_fid.log"; fi
} > "$OUT/README.md.tmp" && mv "$OUT/README.md.tmp" "$OUT/README.md"
rm -f "$STATUS"
echo "gpu.sh: ${TOTAL}s; tables in $OUT/README.md" >&2
if grep -q "FAILED\|TIME LIMIT\|KILLED" "$OUT/README.md"; then exit 1; fi
