"""Triton model `postprocessing`: token ids -> text (special tokens skipped).

Thin: tensors in and out; the logic is qwen_triton.serving.postprocess.
"""
import triton_python_backend_utils as pb_utils

from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_watch import announce_process, release_pid_file
from qwen_triton.serving.postprocess import Postprocessor, postprocess_arrays
from qwen_triton.serving.triton_io import as_bool, model_parameters, resolve_path, respond


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.post = Postprocessor.from_dir(resolve_path(params[c.PARAM_TOKENIZER_DIR], args),
                                           skip_special=as_bool(params.get(c.PARAM_SKIP_SPECIAL), True))
        self.pid_file = announce_process(args)  # the supervisor reloads this model if its process dies

    def execute(self, requests):
        return [respond(pb_utils, r, c.POSTPROCESSING_INPUTS, self._compute, "postprocessing") for r in requests]

    def _compute(self, inputs):
        return postprocess_arrays(self.post, inputs)

    def finalize(self):
        release_pid_file(self.pid_file)
