"""Triton model `postprocessing`: token ids -> text (special tokens skipped).

Thin: tensors in and out; the logic is qwen_triton.serving.postprocess.
"""
import logging

import triton_python_backend_utils as pb_utils

from qwen_triton.serving import contract as c
from qwen_triton.serving.postprocess import Postprocessor, postprocess_arrays
from qwen_triton.serving.triton_io import as_bool, model_parameters, read_inputs, resolve_path

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.post = Postprocessor.from_dir(resolve_path(params[c.PARAM_TOKENIZER_DIR], args),
                                           skip_special=as_bool(params.get(c.PARAM_SKIP_SPECIAL), True))

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            inputs = read_inputs(c.POSTPROCESSING_INPUTS, lambda n: pb_utils.get_input_tensor_by_name(request, n))
            outputs = postprocess_arrays(self.post, inputs)
        except Exception as exc:  # never crash the model on a request
            log.exception("postprocessing failed")
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"postprocessing failed: {exc}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
