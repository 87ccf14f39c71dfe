"""Triton model `preprocessing`: text or chat messages -> prompt ids and word lists.

Thin: tensors in and out; the logic is qwen_triton.serving.preprocess.
"""
import triton_python_backend_utils as pb_utils

from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_watch import announce_process, release_pid_file
from qwen_triton.serving.preprocess import Preprocessor, preprocess_arrays
from qwen_triton.serving.triton_io import model_parameters, resolve_path, respond


class TritonPythonModel:
    def initialize(self, args):
        self.pre = Preprocessor.from_parameters(model_parameters(args), lambda p: resolve_path(p, args))
        self.pid_file = announce_process(args)  # the supervisor reloads this model if its process dies

    def execute(self, requests):
        return [respond(pb_utils, r, c.PREPROCESSING_INPUTS, self._compute, "preprocessing") for r in requests]

    def _compute(self, inputs):
        return preprocess_arrays(self.pre, inputs)

    def finalize(self):
        release_pid_file(self.pid_file)
