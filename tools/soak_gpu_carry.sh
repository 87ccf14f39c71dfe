#!/usr/bin/env bash
# Make the carry folder tools/soak_gpu.sh needs on the GPU machine (run here, on the CPU machine, after
# `make install`): Triton for the image's Python 3.12, numpy 1.x for the stub, the client's wheels, a
# 7B-shape random checkpoint with the real vocabulary, and the model repository rendered for CUDA.
#
#   tools/soak_gpu_carry.sh [CARRY=.carry]
# Settings (environment): PY (.venv/bin/python), MAX_NUM_SEQS (256), NUM_KV_BLOCKS (4096)
# Everything fits the device tool's 64 MiB per call with the working tree (about 62 MB). While the
# working tree holds unfinished edits, carry a commit's code instead and run from it on the GPU machine:
#   git archive HEAD qwen_triton loadtest tools | xz -9e > .carry/src.tar.xz
#   (there) mkdir /tmp/src && tar xJf .carry/src.tar.xz -C /tmp/src && ln -s $PWD/.carry /tmp/src/.carry
set -euo pipefail

cd "$(dirname "$0")/.."
CARRY=${1:-.carry}
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d /tmp/soak-carry.XXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CARRY"
log() { echo "[soak-carry] $(date +%T) $*"; }
WHEEL_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
            --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)

log "Triton for Python 3.12"
"$PY" -m qwen_triton.runtime.install --python 3.12 --dest "$WORK/t312/.triton" --tarball "$WORK/triton-py312.tar.gz"
gunzip -c "$WORK/triton-py312.tar.gz" | xz -T2 -9e > "$CARRY/triton-py312.tar.xz"

log "numpy 1.x for the stub, the client's wheels"
"$PY" -m pip download -q "${WHEEL_ARGS[@]}" --no-deps -d "$CARRY" numpy==1.26.4
rm -rf "$CARRY/soakwheels"
"$PY" -m pip download -q "${WHEEL_ARGS[@]}" -d "$CARRY/soakwheels" "tritonclient[grpc]==2.73.0" \
  "protobuf==6.33.6" requests starlette uvicorn httpx
# the image has its own numpy 2 (the client runs on it); the stub's numpy 1.x is the wheel above
rm -f "$CARRY"/soakwheels/numpy-*.whl

log "a 7B-shape random checkpoint with the real vocabulary"
rm -rf "$CARRY/qwen7b-random" "$CARRY/gpu_repo7b"
"$PY" -c "
from tools.benchmark import QWEN_7B
from qwen_triton.models.loader import write_random_checkpoint
write_random_checkpoint('$CARRY/qwen7b-random', QWEN_7B)"
"$PY" -c "
import shutil, dashscope, pathlib
src = next(pathlib.Path(dashscope.__file__).parent.rglob('qwen.tiktoken'))
shutil.copy(src, '$CARRY/qwen7b-random/qwen.tiktoken')"

log "the model repository for CUDA"
"$PY" -m build -q --model "$CARRY/qwen7b-random" --model-repo "$CARRY/gpu_repo7b" --artifacts "$WORK/art" \
  --set device=cuda --set max_num_seqs="${MAX_NUM_SEQS:-256}" --set max_num_batched_tokens=8192 \
  --set max_input_len=1024 --set max_output_len=1024 --set num_kv_blocks="${NUM_KV_BLOCKS:-4096}"
du -sh "$CARRY"
