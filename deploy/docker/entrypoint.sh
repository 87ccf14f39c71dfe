#!/usr/bin/env bash
# The container's entrypoint (Dockerfile.triton). With no arguments it serves $MODEL_REPO:
#   QWEN_TRITON_ENGINE=qwen_triton  the supervisor: Triton 2.51 behind our HTTP front on 8000, gRPC 8001,
#                                   metrics 8002, the OpenAI-compatible API on $OPENAI_PORT (empty: none)
#   QWEN_TRITON_ENGINE=tensorrtllm  tritonserver of the image (TensorRT-LLM's C++ backend) on 8000/8001/8002
# `openai` runs the OpenAI-compatible API alone against Triton's gRPC at $TRITON_GRPC; any other
# command runs as given (e.g. python3 -m build ... to render the repository).
# SIGTERM drains: Triton finishes in-flight requests for up to $TRITON_EXIT_TIMEOUT seconds.
set -euo pipefail
timeout="${TRITON_EXIT_TIMEOUT:-35}"
if [ "$#" -gt 0 ] && [ "$1" = openai ]; then
    shift
    exec python3 -m qwen_triton.openai_api --host 0.0.0.0 --port "${OPENAI_PORT:-9000}" \
        --triton-grpc "${TRITON_GRPC:-127.0.0.1:8001}" --model-repository "$MODEL_REPO" "$@"
fi
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
if [ ! -f "$MODEL_REPO/ensemble/config.pbtxt" ]; then
    echo "no model repository at $MODEL_REPO: render it first (python3 -m build --model-repo $MODEL_REPO ...)" >&2
    exit 2
fi
mkdir -p /tmp/logs
if [ "${QWEN_TRITON_ENGINE:-qwen_triton}" = tensorrtllm ]; then
    exec tritonserver --model-repository="$MODEL_REPO" --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
        --exit-timeout-secs="$timeout"
fi
openai=()
if [ -n "${OPENAI_PORT:-}" ]; then
    openai=(--openai-port "$OPENAI_PORT")
fi
exec python3 -m qwen_triton.runtime --pid-file /tmp/logs/tritonserver.pid start --foreground \
    --model-repository "$MODEL_REPO" --host 0.0.0.0 --log-file /tmp/logs/tritonserver.log "${openai[@]}" \
    -- "--exit-timeout-secs=$timeout"
