"""Triton model `tensorrt_llm_bls` (Python, decoupled): the ensemble's
interface, done in code so that a cancelled or disconnected client stops the
engine at once (the ensemble cannot: see qwen_triton/serving/bls.py).

Thin: each request is served on its own thread, calling the engine model
through BLS; the logic is qwen_triton.serving.bls and .preprocess.
"""
import logging
import threading
import uuid

import triton_python_backend_utils as pb_utils

from qwen_triton.errors import QwenTritonError
from qwen_triton.serving import bls
from qwen_triton.serving import contract as c
from qwen_triton.serving.preprocess import Preprocessor
from qwen_triton.serving.triton_io import as_bool, model_parameters, read_inputs, resolve_path, triton_error

log = logging.getLogger(__name__)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _tensors(arrays):
    return [pb_utils.Tensor(k, v) for k, v in arrays.items()]


def _error(message, cancelled=False):
    return triton_error(pb_utils, message, cancelled)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.pre = Preprocessor.from_parameters(params, lambda p: resolve_path(p, args))
        self.skip_special = as_bool(params.get(c.PARAM_SKIP_SPECIAL), True)

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            inputs = read_inputs(c.ENSEMBLE_INPUTS, lambda n: pb_utils.get_input_tensor_by_name(request, n))
            engine_inputs = bls.engine_inputs(self.pre, inputs)
            self._generate(request, sender, engine_inputs, bls.is_streaming(inputs))
        except QwenTritonError as exc:
            sender.send(pb_utils.InferenceResponse(error=_error(str(exc))), flags=FINAL)
        except Exception as exc:  # never crash the model on a request
            log.exception("tensorrt_llm_bls failed")
            sender.send(pb_utils.InferenceResponse(error=_error(f"tensorrt_llm_bls failed: {exc}")), flags=FINAL)

    def _generate(self, request, sender, engine_inputs, streaming):
        rid = f"bls-{uuid.uuid4().hex}"
        decoder = bls.ResponseDecoder(self.pre.tokenizer, self.skip_special)
        parts, cancelled = [], False
        call = pb_utils.InferenceRequest(model_name=c.ENGINE, inputs=_tensors(engine_inputs),
                                         requested_output_names=list(bls.ENGINE_OUTPUT_NAMES), request_id=rid)
        for response in call.exec(decoupled=True):
            if not cancelled and request.is_cancelled():
                cancelled = True
                self._stop(rid)  # the engine frees the request's KV blocks; keep draining its responses
            if response.has_error():
                if not cancelled:
                    sender.send(pb_utils.InferenceResponse(error=response.error()), flags=FINAL)
                    return
                continue
            outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
            if outputs and not cancelled:
                part = decoder.push(outputs)
                parts.append(part)
                if streaming:
                    sender.send(pb_utils.InferenceResponse(_tensors(part)))
        if cancelled:
            sender.send(pb_utils.InferenceResponse(error=_error("request cancelled", True)), flags=FINAL)
            return
        tail = decoder.finish(parts[-1] if parts else None)
        if streaming:
            sender.send(pb_utils.InferenceResponse(_tensors(tail)) if tail[c.TEXT_OUTPUT][0, 0] else None,
                        flags=FINAL)
        else:
            sender.send(pb_utils.InferenceResponse(_tensors(bls.join_outputs(parts + [tail]))), flags=FINAL)

    def _stop(self, rid):
        stop = pb_utils.InferenceRequest(model_name=c.ENGINE, inputs=_tensors(bls.stop_inputs()),
                                         requested_output_names=list(bls.ENGINE_OUTPUT_NAMES), request_id=rid)
        for _ in stop.exec(decoupled=True):
            pass
