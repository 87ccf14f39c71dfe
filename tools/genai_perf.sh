#!/usr/bin/env bash
# Profile the running server with NVIDIA GenAI-Perf (genai-perf + perf_analyzer), from its own venv.
#
#   tools/genai_perf.sh --setup                 create .venv-genai-perf and check libb64; profile nothing
#   tools/genai_perf.sh                         a short default streaming profile of the ensemble
#   tools/genai_perf.sh [genai-perf profile args ...]   e.g. --streaming --concurrency 4 --request-count 32
#                                                 --synthetic-input-tokens-mean 128 --output-tokens-mean 64
#                                                 --output-tokens-mean-deterministic
#
# It puts `-m ensemble --endpoint-type kserve --backend tensorrtllm -u 127.0.0.1:$TRITON_GRPC_PORT
# --tokenizer DIR --artifact-dir logs/genai-perf/<time>` in front of your arguments (later flags win, so
# yours override these); the console output also goes to <artifact dir>/console.txt.
#
# Environment: TRITON_GRPC_PORT (8001), TRITON_HOST (127.0.0.1), GENAI_PERF_MODEL (ensemble),
# GENAI_PERF_TOKENIZER (default: the default model's folder artifacts/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m-*/
# that `make build-engine` makes; any folder transformers' AutoTokenizer loads), GENAI_PERF_VENV
# (.venv-genai-perf), PYTHON (python3: creates the venv).
#
# Notes (genai-perf 0.0.16, perf_analyzer 2.51.0 from the tritonclient wheel):
# * genai-perf brings its own numpy/pandas/transformers: it never goes into .venv (the Triton stub needs
#   numpy<2 there).  Its `perf-analyzer` dependency is an empty placeholder; the real perf_analyzer comes
#   with tritonclient==2.51.0 (into the venv's bin/) and needs libb64.so.0d (Debian libb64-0d) and
#   libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12).  tritonclient >= 2.52 needs glibc 2.38 (not Debian 12).
# * With --endpoint-type kserve perf_analyzer always uses the gRPC *stream* (genai-perf passes it
#   --streaming); genai-perf's own --streaming only adds the input `stream: true`.  So a profile without
#   --streaming works against the decoupled build too (one response per request), and --streaming against
#   a decoupled=false build fails with our "streaming needs the decoupled engine model" error.
# * Output Sequence Length is genai-perf re-tokenizing the returned text, not the server's token count:
#   with --output-tokens-mean N --output-tokens-mean-deterministic (it sends min_length = max_tokens = N)
#   the server generates exactly N tokens, but a random-weight model's text re-tokenizes to a few more or
#   fewer.  The server's own count: qwen_triton_engine{counter="generated_tokens"} on the metrics port.
# * perf_analyzer 2.51 bug (fixed in 2.52): for each output the model *declares* but a response lacks (our
#   ensemble declares 17, sends text_output only) it copies 0 bytes with `new uint8_t[0]` and then exports
#   4-8 bytes read from that heap block.  When the garbage is a NaN/Inf float its JSON writer stops and
#   profile_export.json is left EMPTY (exit 0); genai-perf then dies with "Input is a zero-length, empty
#   document" (about 1 run in 10 here).  Where a C compiler exists, setup builds a tiny LD_PRELOAD library
#   that zero-fills `new[]` (those outputs then read 0); perf_analyzer runs through the wrapper
#   $VENV/pa-bin/perf_analyzer, which also puts libcudart on LD_LIBRARY_PATH.  Without a compiler, a run
#   whose export came out empty is retried (twice at most).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${GENAI_PERF_VENV:-$ROOT/.venv-genai-perf}"
PYTHON="${PYTHON:-python3}"

PINS=(genai-perf==0.0.16 tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.9.79)
# genai-perf leaves these open: the versions it was checked with
CONSTRAINTS=(numpy==1.26.4 pandas==3.0.6 pyarrow==26.0.1 transformers==5.24.0 tokenizers==0.23.3
  huggingface-hub==2.4.0 plotly==7.1.0 kaleido==1.5.1 rich==15.0.0 statsmodels==0.15.0 scipy==1.17.1
  fastparquet==2026.9.0 pydantic==2.14.4 optuna==3.6.1)
SHIM="$VENV/lib/perf_analyzer_zero_new.so"

say() { echo "[genai-perf] $*" >&2; }

ensure_venv() {
  local want="${PINS[*]} ${CONSTRAINTS[*]}" constraints pa
  if [[ -x "$VENV/bin/genai-perf" && -f "$VENV/.installed" && "$(cat "$VENV/.installed")" == "$want" ]]; then
    return
  fi
  say "installing ${PINS[*]} into $VENV (about 40 s, 1 GB) ..."
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # as Python 3.13's venv does: git leaves the whole folder alone
  "$VENV/bin/python" -m pip install -q --upgrade pip
  constraints="$(mktemp)"
  printf '%s\n' "${CONSTRAINTS[@]}" > "$constraints"
  "$VENV/bin/python" -m pip install -q -c "$constraints" "${PINS[@]}"
  rm -f "$constraints"
  # tritonclient 2.51.0 installs perf_analyzer into bin/; some wheels keep it in tritonclient/bin/ only
  if [[ ! -x "$VENV/bin/perf_analyzer" ]]; then
    pa="$(compgen -G "$VENV/lib/python3*/site-packages/tritonclient/bin/perf_analyzer" | head -n1 || true)"
    [[ -n "$pa" ]] || { say "ERROR: the tritonclient wheel has no perf_analyzer"; exit 1; }
    ln -sf "$pa" "$VENV/bin/perf_analyzer"
  fi
  echo "$want" > "$VENV/.installed"
}

ensure_libb64() {
  if ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    return
  fi
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's libb64-0d (perf_analyzer needs libb64.so.0d) ..."
    apt-get install -y -q libb64-0d >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null; }
    return
  fi
  say "ERROR: perf_analyzer needs libb64.so.0d: install it (Debian/Ubuntu: sudo apt-get install libb64-0d)"
  exit 1
}

cuda_runtime_lib() {
  compgen -G "$VENV/lib/python3*/site-packages/nvidia/cuda_runtime/lib" | head -n1 || true
}

# $VENV/pa-bin/perf_analyzer: the real binary with libcudart on LD_LIBRARY_PATH and, where it could be
# built, the zero-filling new[] preloaded (see the notes above)
ensure_wrapper() {
  local cuda preload=""
  if [[ ! -f "$SHIM" ]] && command -v cc >/dev/null; then
    printf '%s\n' '#include <stdlib.h>' \
      'void *_Znam(size_t n) { void *p = calloc(1, n < 16 ? 16 : n); if (!p) abort(); return p; }' |
      cc -O2 -shared -fPIC -x c -o "$SHIM" - || rm -f "$SHIM"
  fi
  if [[ -f "$SHIM" ]]; then
    preload="export LD_PRELOAD=\"$SHIM\${LD_PRELOAD:+:\$LD_PRELOAD}\""
  else
    say "WARNING: no C compiler: perf_analyzer 2.51 may leave an empty profile export (then retried)"
  fi
  cuda="$(cuda_runtime_lib)"
  mkdir -p "$VENV/pa-bin"
  printf '%s\n' '#!/bin/sh' "export LD_LIBRARY_PATH=\"$cuda\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" \
    "$preload" "exec \"$VENV/bin/perf_analyzer\" \"\$@\"" > "$VENV/pa-bin/perf_analyzer"
  chmod +x "$VENV/pa-bin/perf_analyzer"
  if LD_LIBRARY_PATH="$cuda" ldd "$VENV/bin/perf_analyzer" | grep 'not found' >&2; then
    say "ERROR: perf_analyzer cannot load the libraries above"
    exit 1
  fi
}

default_tokenizer() {
  local found
  if [[ -n "${GENAI_PERF_TOKENIZER:-}" ]]; then
    echo "$GENAI_PERF_TOKENIZER"
    return
  fi
  found="$(compgen -G "$ROOT/artifacts/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m-*/tokenizer.json" | head -n1 || true)"
  [[ -n "$found" ]] || { say "ERROR: no tokenizer: run \`make build-engine\`, or pass --tokenizer DIR"; exit 1; }
  dirname "$found"
}

ensure_venv
ensure_libb64
ensure_wrapper
export PATH="$VENV/pa-bin:$VENV/bin:$PATH"
if [[ "${1:-}" == "--setup" ]]; then
  say "ready: $(genai-perf --version 2>/dev/null | tail -n1), $(perf_analyzer --version 2>&1 | head -n1)"
  exit 0
fi

args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  args=(--streaming --synthetic-input-tokens-mean 128 --synthetic-input-tokens-stddev 0 --output-tokens-mean 64
        --output-tokens-mean-deterministic --concurrency 2 --request-count 16 --warmup-request-count 2)
fi
tokenizer="" artifact_dir=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --tokenizer) tokenizer="${args[i + 1]:-}" ;;
    --tokenizer=*) tokenizer="${args[i]#*=}" ;;
    --artifact-dir) artifact_dir="${args[i + 1]:-}" ;;
    --artifact-dir=*) artifact_dir="${args[i]#*=}" ;;
  esac
done
[[ -n "$tokenizer" ]] || tokenizer="$(default_tokenizer)"
[[ -n "$artifact_dir" ]] || artifact_dir="logs/genai-perf/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$artifact_dir"

cmd=(genai-perf profile -m "${GENAI_PERF_MODEL:-ensemble}" --endpoint-type kserve --backend tensorrtllm
     -u "${TRITON_HOST:-127.0.0.1}:${TRITON_GRPC_PORT:-8001}" --tokenizer "$tokenizer"
     --artifact-dir "$artifact_dir" "${args[@]}")
say "${cmd[*]}"
for attempt in 1 2 3; do
  set +e
  # wide console: genai-perf's rich table wraps every cell at 80 columns otherwise
  COLUMNS="${COLUMNS:-160}" "${cmd[@]}" 2>&1 | tee "$artifact_dir/console.txt"
  rc=${PIPESTATUS[0]}
  set -e
  empty="$(find "$artifact_dir" -name profile_export.json -empty | head -n1)"
  [[ $rc -ne 0 && -n "$empty" && $attempt -lt 3 ]] || break
  say "perf_analyzer 2.51 left $empty empty (its missing-output bug, see $0): retrying"
  rm -f "$empty"
done
say "exit $rc; results under $artifact_dir/"
exit "$rc"
