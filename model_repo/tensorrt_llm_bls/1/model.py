"""Triton model `tensorrt_llm_bls` (Python backend): tensorrtllm_backend's BLS interface, done in code.

Thin: the logic (pipeline, streaming text, cancellation forwarded to the engine) is shared with the
`ensemble` model in qwen_triton.serving.entry_model.
"""
import triton_python_backend_utils as pb_utils

from qwen_triton.serving.entry_model import triton_model

TritonPythonModel = triton_model(pb_utils)
