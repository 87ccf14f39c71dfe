"""Triton model `ensemble` (Python backend): the public entry point, with the inputs and outputs of
tensorrtllm_backend's ensemble.

It runs upstream's pipeline (preprocessing -> engine -> postprocessing) in code rather than as a
platform ensemble, because Triton 2.51's ensemble does not pass a client's cancellation to the running
engine step. Thin: the logic is shared with `tensorrt_llm_bls` in qwen_triton.serving.entry_model.
"""
import triton_python_backend_utils as pb_utils

from qwen_triton.serving.entry_model import triton_model

TritonPythonModel = triton_model(pb_utils)
