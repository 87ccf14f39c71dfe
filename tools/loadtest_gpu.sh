#!/usr/bin/env bash
# The load-test sweep on a GPU machine: start tritonserver on a built model repository, run
# `python -m loadtest.run` against it, and leave everything in $OUT (the device tool brings $OUT back).
#
#   OUT=/path tools/loadtest_gpu.sh [more loadtest.run flags, e.g. --protocol http_stream,grpc_stream]
#
# Run from the repository root, with the repository built (`python -m build ... --model-repo model_repo`)
# and Triton installed under .triton/ (the tarball of `make triton-tarball`).  Settings (environment):
#   OUT                    output folder (default logs/loadtest-gpu); gets run.json, summary.csv, requests.csv,
#                          server_timeseries.csv, triton.log, env.txt, and report.html + plots/ where
#                          matplotlib is installed (else render it later: python -m loadtest.report $OUT)
#   MODEL_REPO             the built model repository (default model_repo)
#   TRITON_PY              the Python the server's models run in: numpy<2, torch (default .venv/bin/python
#                          if present, else python3); see docs/loadtest.md
#   LOADTEST_PY            a Python with locust, gevent, geventhttpclient and tritonclient; default: made
#                          as .venv-loadtest (system site-packages + the wheels in LOADTEST_WHEELS)
#   LOADTEST_WHEELS        wheels of `make loadtest-wheels` (default artifacts/wheels-loadtest)
#   START_SERVER           1 (default): start and stop tritonserver here; 0: use the one already on the ports
#   TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT   (default 8000 / 8001 / 8002)
#   LOADTEST_CONCURRENCY   (default 1,4,16,64,256)   LOADTEST_DURATION seconds per level (default 40)
#   LOADTEST_WORKLOAD      fixed | sharegpt | multiturn (default fixed)
#   LOADTEST_INPUT_LEN / LOADTEST_OUTPUT_LEN   fixed lengths (default 128 / 128, the targets' shape)
#   LOADTEST_PROTOCOL      (default http_stream)     LOADTEST_WARMUP requests before the sweep (default 8)
#   OFFLINE_JSON           {"<concurrency>": offline engine output tok/s} for target T3 in the report
#   BATCH1_STEP_MS         the engine's batch-1 step in ms, for target T5's ITL line in the report
# The default sweep takes about 5 levels x (40 s + the drain) + the server's start: keep it under the
# device tool's 10 minutes per command (lower LOADTEST_DURATION or the levels otherwise).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-logs/loadtest-gpu}
MODEL_REPO=${MODEL_REPO:-model_repo}
START_SERVER=${START_SERVER:-1}
LOADTEST_WHEELS=${LOADTEST_WHEELS:-artifacts/wheels-loadtest}
export TRITON_HTTP_PORT=${TRITON_HTTP_PORT:-8000}
export TRITON_GRPC_PORT=${TRITON_GRPC_PORT:-8001}
export TRITON_METRICS_PORT=${TRITON_METRICS_PORT:-8002}
if [[ -z "${TRITON_PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then TRITON_PY=.venv/bin/python; else TRITON_PY=$(command -v python3); fi
fi
mkdir -p "$OUT"
log() { echo "[loadtest-gpu] $*"; }

# -- the client's Python ----------------------------------------------------------------------------
client_ok() { "$1" -c "import locust, gevent, geventhttpclient, tritonclient.grpc" >/dev/null 2>&1; }
if [[ -z "${LOADTEST_PY:-}" ]]; then
  for candidate in .venv-loadtest/bin/python "$TRITON_PY" python3; do
    if client_ok "$candidate"; then LOADTEST_PY=$candidate; break; fi
  done
fi
if [[ -z "${LOADTEST_PY:-}" ]]; then
  if [[ ! -d "$LOADTEST_WHEELS" ]]; then
    log "no Python with locust/gevent/tritonclient and no wheels in $LOADTEST_WHEELS (make loadtest-wheels)"
    exit 2
  fi
  log "making .venv-loadtest from $(command -v python3) and the wheels in $LOADTEST_WHEELS"
  python3 -m venv --system-site-packages .venv-loadtest
  # protobuf 6 in the venv shadows the image's protobuf 7, which tritonclient's generated code predates
  .venv-loadtest/bin/python -m pip install --quiet --no-index --find-links "$LOADTEST_WHEELS" \
    locust gevent geventhttpclient "tritonclient[grpc]" "protobuf<7"
  LOADTEST_PY=.venv-loadtest/bin/python
  client_ok "$LOADTEST_PY" || { log "the client environment does not import"; exit 2; }
fi
log "client: $LOADTEST_PY; server models: $TRITON_PY"

# -- what ran where -------------------------------------------------------------------------------------
{
  echo "date: $(date -Is)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "host: $(hostname)  cpus: $(nproc)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  "$LOADTEST_PY" -c "import locust, gevent, tritonclient, grpc, google.protobuf as p; \
print('locust', locust.__version__, 'gevent', gevent.__version__, 'grpcio', grpc.__version__, 'protobuf', p.__version__)"
} > "$OUT/env.txt" 2>&1 || true

# -- the server --------------------------------------------------------------------------------------------
PID_FILE="$OUT/tritonserver.pid"
stop_server() {
  if [[ "$START_SERVER" == 1 ]]; then
    "$TRITON_PY" tools/triton_server.py --pid-file "$PID_FILE" stop || true
  fi
}
if [[ "$START_SERVER" == 1 ]]; then
  trap stop_server EXIT
  log "starting tritonserver on $MODEL_REPO (ports $TRITON_HTTP_PORT/$TRITON_GRPC_PORT/$TRITON_METRICS_PORT)"
  "$TRITON_PY" tools/triton_server.py --pid-file "$PID_FILE" start --model-repository "$MODEL_REPO" \
    --python "$TRITON_PY" --http-port "$TRITON_HTTP_PORT" --grpc-port "$TRITON_GRPC_PORT" \
    --metrics-port "$TRITON_METRICS_PORT" --log-file "$OUT/triton.log" --timeout 300
fi

# -- the sweep ----------------------------------------------------------------------------------------------
WORKLOAD=${LOADTEST_WORKLOAD:-fixed}
LEN_ARGS=()
if [[ "$WORKLOAD" == fixed ]]; then
  LEN_ARGS=(--input-len "${LOADTEST_INPUT_LEN:-128}" --output-len "${LOADTEST_OUTPUT_LEN:-128}")
fi
status=0
"$LOADTEST_PY" -m loadtest.run --concurrency "${LOADTEST_CONCURRENCY:-1,4,16,64,256}" \
  --duration "${LOADTEST_DURATION:-40}" --warmup "${LOADTEST_WARMUP:-8}" --workload "$WORKLOAD" ${LEN_ARGS[@]+"${LEN_ARGS[@]}"} \
  --protocol "${LOADTEST_PROTOCOL:-http_stream}" --ready-timeout 60 --no-report \
  --label "qwen-triton on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo GPU)" \
  --out "$OUT" "$@" || status=$?

# -- the report (where matplotlib is installed) ---------------------------------------------------------
REPORT_ARGS=()
[[ -n "${OFFLINE_JSON:-}" ]] && REPORT_ARGS+=(--offline "$OFFLINE_JSON")
[[ -n "${BATCH1_STEP_MS:-}" ]] && REPORT_ARGS+=(--batch1-step-ms "$BATCH1_STEP_MS")
if [[ -f "$OUT/run.json" ]]; then
  if "$LOADTEST_PY" -c "import matplotlib" >/dev/null 2>&1; then
    "$LOADTEST_PY" -m loadtest.report "$OUT" ${REPORT_ARGS[@]+"${REPORT_ARGS[@]}"} || status=$?
  else
    log "no matplotlib here: render the report on the CPU machine: python -m loadtest.report <fetched OUT> ${REPORT_ARGS[*]}"
  fi
fi
log "done (status $status): $OUT"
exit "$status"
