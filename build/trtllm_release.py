"""The TensorRT-LLM release the production path is written for, and the checks the generated engine build
script makes before it runs anything.

One release everywhere: Dockerfile.triton's TensorRT-LLM image, the flags the build script writes (checked in
tests/test_trtllm_flags.py against tests/upstream/tensorrt_llm_flags.json) and the C++ backend's config.pbtxt
fields (tests/upstream/tensorrtllm_backend_v0.19.0.json). An engine only loads in the TensorRT-LLM version that
built it, so the script refuses another version unless told otherwise.
"""
from __future__ import annotations

TRTLLM_VERSION = "0.19.0"
# NVIDIA's Triton image that ships it (Triton's release compatibility matrix: 25.05 <-> TensorRT-LLM 0.19.0)
TRTLLM_IMAGE = "nvcr.io/nvidia/tritonserver:25.05-trtllm-python-py3"
TRTLLM_REPO = "https://github.com/NVIDIA/TensorRT-LLM"
NOT_INSTALLED_EXIT = 3


def preflight() -> str:
    """Shell lines that stop the script, with a message and exit status 3, where TensorRT-LLM is missing or is
    another release than TRTLLM_VERSION (TRTLLM_ALLOW_OTHER_VERSION=1 goes on anyway). Nothing has run then."""
    q = NOT_INSTALLED_EXIT
    return (
        'if ! command -v trtllm-build >/dev/null 2>&1 || ! python3 -c "import tensorrt_llm" >/dev/null 2>&1; then\n'
        f'    echo "TensorRT-LLM is not installed here (no trtllm-build, or python3 cannot import tensorrt_llm):'
        f' nothing was built. Run this script on a GPU machine inside {TRTLLM_IMAGE}'
        f' (TensorRT-LLM {TRTLLM_VERSION})." >&2\n'
        f"    exit {q}\n"
        "fi\n"
        # importing tensorrt_llm prints a banner first: the version is the last line
        'TRTLLM_FOUND=$(python3 -c "import tensorrt_llm; print(tensorrt_llm.__version__)" 2>/dev/null | tail -n 1)\n'
        f'if [ "$TRTLLM_FOUND" != "{TRTLLM_VERSION}" ] && [ "${{TRTLLM_ALLOW_OTHER_VERSION:-0}}" != 1 ]; then\n'
        f'    echo "TensorRT-LLM $TRTLLM_FOUND is installed, but these commands are written and checked for'
        f' {TRTLLM_VERSION} ({TRTLLM_IMAGE}); TRTLLM_ALLOW_OTHER_VERSION=1 runs them anyway." >&2\n'
        f"    exit {q}\n"
        "fi\n"
    )


def examples_check() -> str:
    """Shell lines that stop the script when the converter it needs is not under $TRTLLM_EXAMPLES."""
    return (
        'if [ ! -f "$CONVERT" ]; then\n'
        f'    echo "no convert_checkpoint.py under $TRTLLM_EXAMPLES: use the examples/ folder of TensorRT-LLM'
        f' v{TRTLLM_VERSION} (git clone -b v{TRTLLM_VERSION} {TRTLLM_REPO})" >&2\n'
        "    exit 2\n"
        "fi\n"
    )
