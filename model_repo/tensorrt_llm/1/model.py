"""Triton model `tensorrt_llm` (our engine, Python backend, decoupled).

It keeps tensorrtllm_backend's I/O contract. One engine per model instance
runs its step loop on a background thread, so concurrent Triton requests are
batched inflight. This file only converts tensors, sends responses, polls
cancellation and exports metrics; the logic is qwen_triton.serving.engine_service.
"""
import json
import logging
import threading
import uuid

import triton_python_backend_utils as pb_utils

from qwen_triton.config import EngineConfig
from qwen_triton.errors import InvalidRequestError, QwenTritonError
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_io import is_stop_request
from qwen_triton.serving.engine_service import EngineResponse, EngineService
from qwen_triton.serving.triton_io import (
    as_bool,
    metric_values,
    model_parameters,
    read_inputs,
    resolve_path,
    triton_error,
)

log = logging.getLogger(__name__)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _error(message, cancelled=False):
    return triton_error(pb_utils, message, cancelled)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the tensorrt_llm model must be decoupled")
        params = model_parameters(args)
        model_path = resolve_path(params[c.PARAM_MODEL_PATH], args)
        engine_config = EngineConfig(**json.loads(params.get(c.PARAM_ENGINE_CONFIG) or "{}"))
        tokenizer_dir = params.get(c.PARAM_TOKENIZER_DIR)
        self.service = EngineService(
            model_path, engine_config,
            tokenizer_dir=resolve_path(tokenizer_dir, args) if tokenizer_dir else None,
            exclude_input_default=as_bool(params.get(c.PARAM_EXCLUDE_INPUT), True))
        self.block_size = engine_config.block_size
        self.period_s = int(params.get(c.PARAM_CANCEL_PERIOD_MS) or 100) / 1000.0
        self.live = {}  # our request id -> (Triton request, its client-given id): for cancel and stop
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.metrics = self._metric_families()
        self.metric_cache = {}
        self._export_metrics()  # the gauges exist once the model is ready, not a poll period later
        self.poller = threading.Thread(target=self._poll, name="qwen-triton-poll", daemon=True)
        self.poller.start()

    def execute(self, requests):
        for request in requests:
            self._submit(request)

    def finalize(self):
        self.stopping.set()
        self.service.shutdown()

    # -- requests ------------------------------------------------------------

    def _submit(self, request):
        client_id = request.request_id()
        rid = f"{client_id or 'req'}-{uuid.uuid4().hex[:12]}"
        sender = request.get_response_sender()
        try:
            inputs = read_inputs(c.ENGINE_INPUTS, lambda n: pb_utils.get_input_tensor_by_name(request, n))
            if is_stop_request(inputs):
                self._stop(client_id)
                sender.send(flags=FINAL)
                return
            with self.lock:
                self.live[rid] = (request, client_id)
            self.service.submit(rid, inputs, lambda resp: self._send(rid, sender, resp))
        except QwenTritonError as exc:
            self._forget(rid)
            sender.send(pb_utils.InferenceResponse(error=_error(str(exc))), flags=FINAL)
        except Exception as exc:  # never crash the model on a request
            log.exception("submitting %s failed", rid)
            self._forget(rid)
            sender.send(pb_utils.InferenceResponse(error=_error(f"engine error: {exc}")), flags=FINAL)

    def _send(self, rid, sender, resp: EngineResponse):
        flags = FINAL if resp.final else 0
        if resp.final:
            self._forget(rid)
        if resp.error is not None or resp.cancelled:
            message = "request cancelled" if resp.cancelled else resp.error
            sender.send(pb_utils.InferenceResponse(error=_error(message, resp.cancelled)), flags=FINAL)
        elif resp.arrays is not None:
            tensors = [pb_utils.Tensor(k, v) for k, v in resp.arrays.items()]
            sender.send(pb_utils.InferenceResponse(tensors), flags=flags)
        else:
            sender.send(flags=flags)

    def _stop(self, client_id):
        """`stop`: end every live request that the client sent under this id (upstream semantics)."""
        if not client_id:
            raise InvalidRequestError(c.IN_STOP, "a stop request needs the id of the request to stop")
        with self.lock:
            targets = [rid for rid, (_, cid) in self.live.items() if cid == client_id]
        for rid in targets:
            self._forget(rid)
            self.service.cancel(rid)

    def _forget(self, rid):
        with self.lock:
            self.live.pop(rid, None)

    # -- cancellation and metrics -------------------------------------------------

    def _poll(self):
        while not self.stopping.wait(self.period_s):
            with self.lock:
                cancelled = [rid for rid, (req, _) in self.live.items() if req.is_cancelled()]
            for rid in cancelled:
                self._forget(rid)
                self.service.cancel(rid)
            self._export_metrics()

    def _metric_families(self):
        kinds = {c.METRIC_REQUESTS: "request counts of the engine",
                 c.METRIC_KV_BLOCKS: "KV-cache block counts of the engine",
                 c.METRIC_ENGINE: "qwen-triton engine counters"}
        try:
            return {name: pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
                    for name, text in kinds.items()}
        except Exception:  # metrics disabled on this server
            log.warning("custom metrics unavailable", exc_info=True)
            return None

    def _export_metrics(self):
        if self.metrics is None:
            return
        for label, number in metric_values(self.service.stats(), self.block_size).items():
            metric = self.metric_cache.get(label)
            if metric is None:
                family, key, value = label
                metric = self.metric_cache[label] = self.metrics[family].Metric(labels={key: value})
            metric.set(float(number))
