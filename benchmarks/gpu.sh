#!/usr/bin/env bash
# The GPU benchmark set, for a machine with one NVIDIA GPU (planned on an H200: about 15.5 minutes in all, so run it
# in two calls of under 10 minutes with --only, see below).
#
#   bash benchmarks/gpu.sh --fetch-wheels    # HERE, once, in the repo root, with network: Python packages the
#                                            # GPU machine lacks (pydantic & co.) as wheels into .whl/ (git-ignored)
#   bash benchmarks/gpu.sh OUT_DIR           # ON THE GPU MACHINE, in the repo root (carry .whl along)
#   bash benchmarks/gpu.sh OUT_DIR --smoke   # anywhere (CPU): tiny models, every stage end to end in ~3 minutes
#   bash benchmarks/gpu.sh OUT_DIR --only train_step_S2,train_step_B2   # only these stages (comma list)
#
# Two calls that each fit a 10-minute limit on an H200 (each writes its own OUT_DIR):
#   --only train_step_S2,train_step_B2,train_step_B2_compile,train_step_L2,train_step_L2_compile,routing_overhead_B2,train_buckets_B2
#   --only sample_B2,compile_check,routing_sites_B2,accumulation_L2_XL2
#
# Writes OUT_DIR/README.md (status of every stage, every table, the target check) and OUT_DIR/results-gpu.tar.gz
# (one .json + .md per stage and each stage's log; unpack it into benchmarks/results-gpu/ and run
# `python benchmarks/check_targets.py`). The tarball is rewritten after every stage, so a run stopped early
# keeps what finished.
#
# Set-up, only while dtr_plugins does not import with its plugins: the wheels in .whl/ (if any) into a private
# folder on PYTHONPATH, then this repo with `pip install --no-deps --no-build-isolation -e .` (for the plugin
# entry points). Nothing is downloaded.
#
# Stages (bf16 autocast; each under its own time limit, 1025 s in all; a stage that reaches its limit gets
# SIGINT and reports the rounds it finished; one stage failing does not stop the others). Strategies come
# from the plugin registry: a new strategy is benchmarked with no edit here. Compiled variants have stages of
# their own, so a slow inductor compile cannot cost the eager tables.
#   train_step_S2          DiT-S/2, batch 256, eager: every strategy, pub_vanilla, pub_dtr                (40 s)
#   train_step_B2          DiT-B/2, batch 256, eager: every strategy, pub_vanilla, pub_dtr                (50 s)
#   train_step_B2_compile  DiT-B/2, batch 256: dtr+compile, vanilla+compile (inductor), pub_dtr@fp16
#                          (the published recipe: fp16 autocast, eager, default AdamW)                    (140 s)
#   train_step_L2          DiT-L/2, batch 256, eager: vanilla, dtr, pub_vanilla, pub_dtr                  (55 s)
#   train_step_L2_compile  DiT-L/2, batch 256: dtr+compile (MFU, peak memory)                            (120 s)
#   sample_B2              DDIM-50, DiT-B/2, 256 images per call, vanilla and dtr, cfg 1 and 4            (90 s)
#   routing_overhead_B2    routing cost per DiT-B/2 block at batch 256 (component level)                  (20 s)
#   compile_check          torch.compile recompiles, DiT x every strategy (aot_eager: dynamo decides)     (80 s)
#   routing_sites_B2       routing_sites.py, DiT-B/2: sampling and training speed per routing site       (130 s)
#   accumulation_L2_XL2    DiT-L/2 and XL/2, dtr, global batch 256: train.grad_accum_steps k = 1, 2, 4 and
#                          activation checkpointing (k = 1, 2): peak memory and images/s per variant    (180 s)
#   train_buckets_B2       train_buckets.py, DiT-S/2 and B/2, 32x32 latents, batch 256, fp32 (TF32): training
#                          step with train.timestep_buckets auto/2/4 vs masked vs vanilla, beta 0.8, 0.5  (120 s)
# (The 2026-11-30 H200 run hit the earlier limits in S2 25 s, B2 30 s, L2 40 s, sample 30 s, compile_check
# 25 s and routing_sites 60 s; docs/benchmarks.md says what each finished.)
set -u -o pipefail

OUT=""
SMOKE=0
FETCH=0
ONLY=""
WANT_ONLY=0
for arg in "$@"; do
  if [ $WANT_ONLY -eq 1 ]; then ONLY=",$arg,"; WANT_ONLY=0; continue; fi
  case "$arg" in
    --only) WANT_ONLY=1 ;;
    --only=*) ONLY=",${arg#--only=}," ;;
    --smoke) SMOKE=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option '$arg' (--smoke, --only STAGES, --fetch-wheels, --help)" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# ------------------------------------------------------------------------------------------ --fetch-wheels
if [ $FETCH -eq 1 ]; then
  # The GPU image has torch, numpy, pyyaml, pluggy, tqdm, matplotlib, scikit-learn, pillow; not pydantic.
  # Versions pinned to the ones installed here, for Python 3.12 on x86-64 Linux (the GPU machine's).
  pkgs=()
  for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
    v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
      echo "gpu.sh: $name is not installed for $PY; cannot pin its version" >&2; exit 2; }
    pkgs+=("$name==$v")
  done
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pkgs[@]}" || exit 1
  ls -l .whl
  echo "gpu.sh: wheels in .whl/ (git-ignored); give 'carry': ['.whl'] to the GPU run" >&2
  exit 0
fi

STAGES=",train_step_S2,train_step_B2,train_step_B2_compile,train_step_L2,train_step_L2_compile,sample_B2,routing_overhead_B2,compile_check,routing_sites_B2,accumulation_L2_XL2,train_buckets_B2,"
for want in ${ONLY//,/ }; do
  if [[ "$STAGES" != *",$want,"* ]]; then
    echo "gpu.sh: --only: unknown stage '$want' (stages: $(echo "${STAGES:1:-1}" | sed 's/,/, /g'))" >&2; exit 2
  fi
done
if [ -z "$OUT" ]; then echo "gpu.sh: give an output folder: bash benchmarks/gpu.sh OUT_DIR [--smoke]" >&2; exit 2; fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dtr-bench.XXXXXX")"
STATUS="$WORK/.status"
: > "$STATUS"
START=$(date +%s)
log() { echo "[gpu.sh $(( $(date +%s) - START ))s] $*" >&2; }

# ------------------------------------------------------------------------------------------------ set-up
has_package() {
  "$PY" - <<'EOF' > /dev/null 2>&1
import warnings
warnings.simplefilter("ignore")
from dtr_plugins.core.plugins import default_registry
assert "dit" in default_registry().names("backbone") and "dtr" in default_registry().names("strategy")
EOF
}
if ! has_package && ls .whl/*.whl > /dev/null 2>&1; then
  log "installing $(ls .whl/*.whl | wc -l) carried wheels into $WORK/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
    || log "WARNING: installing the carried wheels failed"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! has_package; then
  log "installing this repo (pip install --no-deps --no-build-isolation -e .)"
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$WORK/install.log" 2>&1 \
    || { log "pip install -e . failed:"; tail -n 5 "$WORK/install.log" >&2; }
fi
if ! has_package; then
  log "dtr_plugins does not import with its plugins; the stages will fail. Did the run carry .whl? The error:"
  "$PY" -c "from dtr_plugins.core.plugins import default_registry; default_registry()" 2>&1 | tail -n 3 >&2
fi
pack() {  # the tarball and README in OUT, rewritten after each stage
  tar -czf "$OUT/.results-gpu.tar.gz.tmp" -C "$WORK" --exclude=site --exclude=.status . \
    && mv "$OUT/.results-gpu.tar.gz.tmp" "$OUT/results-gpu.tar.gz"
}

# stage NAME LIMIT_S SCRIPT ARGS...: one benchmark under a time limit; records how it ended
stage() {
  local name="$1" limit="$2"; shift 2
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then echo "| $name | not selected (--only) | - |" >> "$STATUS"; return; fi
  local t0=$(date +%s)
  log "=== $name (limit ${limit}s): $*"
  PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=15 "$limit" "$PY" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then echo "| $name | ok | ${took}s |" >> "$STATUS"
  elif [ $rc -eq 124 ]; then echo "| $name | time limit ${limit}s reached: partial results (its table says how many rounds) | ${took}s |" >> "$STATUS"
  elif [ $rc -eq 137 ]; then echo "| $name | KILLED after the ${limit}s limit, no table (see $name.log) | ${took}s |" >> "$STATUS"
  else echo "| $name | FAILED, exit $rc (see $name.log) | ${took}s |" >> "$STATUS"
  fi
  grep -E "FAILED|failed:|Error" "$WORK/$name.log" | tail -n 3 >&2
  tail -n 2 "$WORK/$name.log" >&2
  log "$name: exit $rc after ${took}s"
  pack
}

if [ $SMOKE -eq 1 ]; then
  COMMON=(--device auto --threads 1)
  TRAIN=(--smoke --compile-backend aot_eager)
  S2=(--size tiny); B2=(--size tiny); L2=(--size tiny)
  SAMPLE=(--smoke); RO=(--smoke); CC=(--smoke --strategies vanilla,dtr)
  LIMIT_S2=120; LIMIT_B2=120; LIMIT_B2C=180; LIMIT_L2=120; LIMIT_L2C=180; LIMIT_S=60; LIMIT_RO=60; LIMIT_CC=120
  ACC=(--smoke --threads 1); LIMIT_ACC=120
  RS=(--size S/2 --input-size 8 --num-images 2 --steps-per-call 2 --reps 1 --warmup 1 --train-reps 1); LIMIT_RS=120
  TB=(--quick --threads 1); LIMIT_TB=120
else
  COMMON=(--device cuda)
  TRAIN=(--precision bf16 --batch 256 --steps 20 --warmup 3)
  S2=(--size S/2); B2=(--size B/2); L2=(--size L/2 --steps 10 --warmup 2)
  SAMPLE=(--size B/2 --num-images 256 --reps 2 --warmup 1 --precision bf16)
  RO=(--size B/2 --batch 256 --reps 20 --op-reps 200 --precision bf16)
  CC=(--backend aot_eager --precision bf16)
  LIMIT_S2=40; LIMIT_B2=50; LIMIT_B2C=140; LIMIT_L2=55; LIMIT_L2C=120; LIMIT_S=90; LIMIT_RO=20; LIMIT_CC=80
  RS=(--size B/2 --num-images 64 --steps-per-call 50 --reps 5 --warmup 1 --train-reps 10); LIMIT_RS=130
  ACC=(--device cuda --sizes L/2,XL/2 --batch 256 --precision bf16 --steps 5 --warmup 2
       --variants k1,k2,k4,k1+ckpt,k2+ckpt); LIMIT_ACC=180
  TB=(--sizes S/2,B/2 --input-size 32 --batch 256 --rounds 10 --warmup 2 --budget-s 100); LIMIT_TB=120
fi
# the device, and every registered strategy (vanilla first), as the benchmarks list them
STRATEGIES=$("$PY" - <<'EOF'
import sys
import warnings

import torch

warnings.simplefilter("ignore")
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""), file=sys.stderr, flush=True)
from dtr_plugins.core.plugins import default_registry
print(",".join(sorted(default_registry().names("strategy"), key=lambda n: n != "vanilla")))
EOF
)
STRATEGIES="${STRATEGIES:-vanilla,dtr}"
log "strategies from the registry: $STRATEGIES"

stage train_step_S2 $LIMIT_S2 benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${S2[@]}" --backbones dit \
  --variants "$STRATEGIES,pub_vanilla,pub_dtr" --out-dir "$WORK" --tag S2
stage train_step_B2 $LIMIT_B2 benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${B2[@]}" --backbones dit \
  --variants "$STRATEGIES,pub_vanilla,pub_dtr" --out-dir "$WORK" --tag B2
stage train_step_B2_compile $LIMIT_B2C benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${B2[@]}" \
  --backbones dit --variants "dtr+compile,pub_dtr@fp16,vanilla+compile" --out-dir "$WORK" --tag B2_compile
stage train_step_L2 $LIMIT_L2 benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${L2[@]}" --backbones dit \
  --variants "vanilla,dtr,pub_vanilla,pub_dtr" --out-dir "$WORK" --tag L2
stage train_step_L2_compile $LIMIT_L2C benchmarks/train_step.py "${COMMON[@]}" "${TRAIN[@]}" "${L2[@]}" \
  --backbones dit --variants "dtr+compile" --out-dir "$WORK" --tag L2_compile
stage sample_B2 $LIMIT_S benchmarks/sample.py "${COMMON[@]}" "${SAMPLE[@]}" --backbone dit --cfg-scales 1.0,4.0 \
  --variants vanilla,dtr --out-dir "$WORK" --tag B2
stage routing_overhead_B2 $LIMIT_RO benchmarks/routing_overhead.py "${COMMON[@]}" "${RO[@]}" --out-dir "$WORK" --tag B2
stage compile_check $LIMIT_CC benchmarks/compile_check.py --device auto "${CC[@]}" --backbones dit --out-dir "$WORK"
stage routing_sites_B2 $LIMIT_RS benchmarks/routing_sites.py "${COMMON[@]}" "${RS[@]}" --out "$WORK/routing_sites_B2.json"
stage accumulation_L2_XL2 $LIMIT_ACC benchmarks/accumulation.py "${ACC[@]}" --out-dir "$WORK" --tag L2_XL2
stage train_buckets_B2 $LIMIT_TB benchmarks/train_buckets.py --device auto "${TB[@]}" --out-dir "$WORK" --tag B2

TOTAL=$(( $(date +%s) - START ))
"$PY" benchmarks/check_targets.py --results "gpu=$WORK" --device gpu --json "$WORK/check_targets.json" \
  > "$WORK/check_targets.md" 2> "$WORK/check_targets.log"
CHECK_RC=$?
{
  echo "# GPU benchmarks"
  echo
  echo "Produced by \`bash benchmarks/gpu.sh $*\` in ${TOTAL}s, finished $(date -u +%Y-%m-%dT%H:%M:%SZ);"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown; true) (each JSON file records its own, and a hash of the source)."
  if command -v nvidia-smi > /dev/null 2>&1; then
    echo "Card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)."
  fi
  [ $SMOKE -eq 1 ] && echo && echo "**Smoke run**: tiny models, a few steps, on $($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'); the numbers and verdicts mean nothing."
  echo
  echo "| stage | result | time |"
  echo "|---|---|---|"
  cat "$STATUS"
  echo
  echo "## Targets (check_targets.py, exit $CHECK_RC)"
  echo
  cat "$WORK/check_targets.md" "$WORK/check_targets.log"
  for f in train_step_S2 train_step_B2 train_step_B2_compile train_step_L2 train_step_L2_compile sample_B2 \
      routing_overhead_B2 compile_check routing_sites_B2 accumulation_L2_XL2 train_buckets_B2; do
    if [ -f "$WORK/$f.md" ]; then echo; echo "## $f"; echo; cat "$WORK/$f.md"; fi
    if [ "$f" = routing_sites_B2 ] && [ -f "$WORK/$f.log" ]; then echo; echo "## $f (log)"; echo; tail -n 40 "$WORK/$f.log"; fi
  done
} > "$WORK/README.md"
cp "$WORK/README.md" "$OUT/.README.md.tmp" && mv "$OUT/.README.md.tmp" "$OUT/README.md"
pack
rm -rf "$WORK"
log "done in ${TOTAL}s: $OUT/README.md and $OUT/results-gpu.tar.gz"
grep -q "FAILED\|KILLED" "$OUT/README.md" && exit 1
exit 0
