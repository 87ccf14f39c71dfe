"""Triton model `preprocessing`: text or chat messages -> prompt ids and word lists.

Thin: tensors in and out; the logic is qwen_triton.serving.preprocess.
"""
import logging

import triton_python_backend_utils as pb_utils

from qwen_triton.chat.template import DEFAULT_SYSTEM
from qwen_triton.errors import QwenTritonError
from qwen_triton.serving import contract as c
from qwen_triton.serving.preprocess import Preprocessor, preprocess_arrays
from qwen_triton.serving.triton_io import model_parameters, read_inputs, resolve_path

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit = lambda key: int(params[key]) if params.get(key) else None  # noqa: E731
        self.pre = Preprocessor.from_dir(
            resolve_path(params[c.PARAM_TOKENIZER_DIR], args),
            default_system=params.get(c.PARAM_DEFAULT_SYSTEM) or DEFAULT_SYSTEM,
            max_input_len=limit(c.PARAM_MAX_INPUT_LEN), max_output_len=limit(c.PARAM_MAX_OUTPUT_LEN))

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            inputs = read_inputs(c.PREPROCESSING_INPUTS, lambda n: pb_utils.get_input_tensor_by_name(request, n))
            outputs = preprocess_arrays(self.pre, inputs)
        except QwenTritonError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        except Exception as exc:  # never crash the model on a request
            log.exception("preprocessing failed")
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing failed: {exc}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
