#!/usr/bin/env bash
# Install PyTorch into the given Python environment, the CPU build where no
# NVIDIA GPU is present (a plain `pip install torch` would pull several GB of
# CUDA libraries). Keeps a torch that is already there (e.g. the GPU image's).
set -euo pipefail
PY=${1:?usage: install_torch.sh PYTHON}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if "$PY" -c "import torch" 2>/dev/null; then
    echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    exit 0
fi
CPU_INDEX=https://download.pytorch.org/whl/cpu
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
reachable() { "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1/" \
    >/dev/null 2>&1; }
if ! has_gpu && reachable "$CPU_INDEX"; then
    "$PY" -m pip install -q "torch==${TORCH_VERSION}" --extra-index-url "$CPU_INDEX"
else
    # with a GPU; or where only PyPI is reachable (a machine whose pip is set up with a local CPU build)
    "$PY" -m pip install -q "torch==${TORCH_VERSION}"
fi
