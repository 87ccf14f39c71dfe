#!/usr/bin/env bash
# Targets T3 and T5 in one device call: the offline engine (tools/benchmark.py: batch-1 step and 128/128 at
# 256 sequences), then tritonserver under Locust at 1 and 256 users (tools/loadtest_gpu.sh), given the
# offline figures of the same call, so the report's T3 ratio and T5 ITL line compare like with like.
#
#   OUT=/path PYTHONPATH=. tools/served_targets_gpu.sh
# Carry (.carry, see tools/soak_gpu_carry.sh, tools/gpu_envs.sh, tools/gpu_serve_check.py): triton-py312.tar.xz,
# the numpy 1.x wheel (or wheels.tar.xz: tools/wheel_pack.py), frontwheels/,
# wheels/ (make loadtest-wheels LOADTEST_WHEELS=.carry/wheels), qwen7b-random/, gpu_repo7b/ (max_num_seqs 256).
# Settings (environment): LOADTEST_CONCURRENCY (1,256) LOADTEST_DURATION (30 s per level)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/served-targets}
mkdir -p "$OUT"
tools/gpu_envs.sh > "$OUT/envs.log" 2>&1 || { tail -20 "$OUT/envs.log"; exit 2; }
python3 -m tools.benchmark --no-hf --fixed 128/128x1024 --sharegpt 0 --batch1-out 128 --max-num-seqs 256 \
  --out "$OUT/offline.json" > "$OUT/offline.log" 2>&1 || { tail -20 "$OUT/offline.log"; exit 2; }
tail -8 "$OUT/offline.log"
STEP=$(python3 -c "import json; print(round(json.load(open('$OUT/offline.json'))['engine']['batch1']['ms_per_step'], 3))")
python3 -c "import json; d = json.load(open('$OUT/offline.json')); \
print(json.dumps({'256': d['engine']['fixed'][0]['output_tok_s']}))" > "$OUT/offline_rate.json"
OUT=$OUT/loadtest MODEL_REPO=.carry/gpu_repo7b TRITON_PY=/tmp/stubenv/bin/python LOADTEST_PY=/tmp/ltenv/bin/python \
  LOADTEST_CONCURRENCY=${LOADTEST_CONCURRENCY:-1,256} LOADTEST_DURATION=${LOADTEST_DURATION:-30} \
  BATCH1_STEP_MS=$STEP OFFLINE_JSON="$(cd "$OUT" && pwd)/offline_rate.json" tools/loadtest_gpu.sh
