#!/usr/bin/env bash
# The reliability soak (python -m loadtest.soak) on a GPU machine at Qwen-7B's shapes: the supervised server
# (qwen_triton.runtime: tritonserver behind the HTTP front, restarts on death) on a model repository rendered
# on the CPU machine, then the soak against it; everything lands in $OUT.
#
# Carry (a gitignored folder, default .carry; see tools/gpu_serve_check.py for how each is made):
#   triton-py312.tar.xz        Triton from the pytriton wheel (`make triton-tarball`, recompressed with xz)
#   numpy-1.26.4-cp312-*.whl   the Python backend stub needs numpy 1.x (the image has 2.x)
#   soakwheels/                the client's and the front's wheels the image lacks: tritonclient 2.73, protobuf 6,
#                              requests, starlette, uvicorn, httpx (and their dependencies)
#   qwen7b-random/             Qwen-7B's config.json + random_weights.json (a 7B-shape checkpoint drawn on the GPU)
#   gpu_repo7b/                python -m build --model-repo .carry/gpu_repo7b --model .carry/qwen7b-random
#                                --set device=cuda --set max_num_seqs=256 ...  (its paths are relative to it)
#
#   OUT=/path PYTHONPATH=. tools/soak_gpu.sh [more loadtest.soak flags]
# Settings (environment): SOAK_ROUNDS (4) SOAK_REQUESTS (400 per round) SOAK_CONCURRENCY (64)
#   SOAK_DURATION (200 s) SOAK_SEED (11) SOAK_TIMEOUT (240 s: a request not ended by then hangs)
#   SOAK_BURST_EVERY (400 jobs: a burst of 7B's KV pool is ~60k tokens, one per round keeps them apart)
#   CARRY (.carry) MODEL_REPO ($CARRY/gpu_repo7b)
# Greedy replies are compared with --greedy-drift: bf16 kernels differ with the batch size on the GPU.
# $OUT/monitor.txt samples /dev/shm and each process's resident memory every 10 s.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-logs/soak-gpu}
CARRY=${CARRY:-.carry}
MODEL_REPO=${MODEL_REPO:-$CARRY/gpu_repo7b}
PORTS=(18000 18001 18002)
mkdir -p "$OUT"
log() { echo "[soak-gpu] $(date +%T) $*"; }

# -- Triton, the stub's Python (numpy 1.x before the image's packages), the client's Python ---------------
log "unpacking Triton into .triton/"
tar -xJf "$CARRY"/triton-py312.tar.xz
STUB_PY=$(PYTHONPATH=. python3 -c "from pathlib import Path; from tools.gpu_serve_check import stub_env; \
print(stub_env(Path('$CARRY')))" | tail -1)
SOAK_ENV=/tmp/soakenv
python3 -m venv --without-pip "$SOAK_ENV"
SOAK_SITE=$(echo "$SOAK_ENV"/lib/python3*/site-packages)
# the venv's own site-packages first: protobuf 6 there shadows the image's 7, which tritonclient predates
python3 -m pip install -q --no-index --no-deps --target "$SOAK_SITE" "$CARRY"/soakwheels/*.whl
IMAGE_SITE=$(python3 -c "import torch, pathlib; print(pathlib.Path(torch.__file__).resolve().parents[1])")
printf '%s\n%s\n' "$IMAGE_SITE" "$PWD" > "$SOAK_SITE/zz_image.pth"
SOAK_PY=$SOAK_ENV/bin/python
"$SOAK_PY" -c "import tritonclient.grpc, starlette, uvicorn, httpx, requests, qwen_triton" \
  || { log "the client environment does not import"; exit 2; }

{
  echo "date: $(date -Is)"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "host: $(hostname)  cpus: $(nproc)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} > "$OUT/env.txt"

# -- the supervised server --------------------------------------------------------------------------------
PID_FILE=$OUT/server.pid
stop_server() { "$SOAK_PY" -m qwen_triton.runtime --pid-file "$PID_FILE" stop || true; }
trap stop_server EXIT
log "starting the supervised server on $MODEL_REPO"
start=$(date +%s)
"$SOAK_PY" -m qwen_triton.runtime --pid-file "$PID_FILE" start --model-repository "$MODEL_REPO" \
  --python "$STUB_PY" --http-port "${PORTS[0]}" --grpc-port "${PORTS[1]}" --metrics-port "${PORTS[2]}" \
  --log-file "$OUT/tritonserver.log" --timeout 400
log "ready after $(( $(date +%s) - start )) s"

# -- the soak -----------------------------------------------------------------------------------------------
( while sleep 10; do
    echo "== $(date +%T) $(df -h /dev/shm | tail -1)"
    ps -eo pid,rss,args | grep -E "[t]ritonserver|[t]riton_python_backend_stub|[q]wen_triton.runtime" | cut -c1-160
  done ) > "$OUT/monitor.txt" 2>&1 &
MONITOR=$!
status=0
"$SOAK_PY" -m loadtest.soak --http-port "${PORTS[0]}" --grpc-port "${PORTS[1]}" --metrics-port "${PORTS[2]}" \
  --rounds "${SOAK_ROUNDS:-4}" --requests-per-round "${SOAK_REQUESTS:-400}" \
  --concurrency "${SOAK_CONCURRENCY:-64}" --duration "${SOAK_DURATION:-200}" --seed "${SOAK_SEED:-11}" \
  --timeout "${SOAK_TIMEOUT:-240}" --burst-every "${SOAK_BURST_EVERY:-400}" \
  --greedy-drift --out "$OUT/report.json" "$@" || status=$?
kill "$MONITOR" 2>/dev/null || true
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv > "$OUT/gpu_processes.csv" || true
log "done (status $status): $OUT"
exit "$status"
