"""Triton model `tensorrt_llm` (our engine, Python backend; decoupled or not, as the build renders it).

It keeps tensorrtllm_backend's I/O contract. One engine per model instance runs its step loop on a
background thread, so concurrent requests are batched inflight. Triton's clients get their responses
through each request's response sender (allowed for models that are not decoupled since Triton 24.06, one
response each); our entry models reach the same engine over the engine link (a Unix socket in the run
directory, qwen_triton.serving.link_server), not through Triton. This file only converts tensors, sends
responses, starts the link and exports metrics; the logic is qwen_triton.serving.engine_service.
"""
import json
import logging
import os
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

from qwen_triton.config import EngineConfig
from qwen_triton.errors import InvalidRequestError, QwenTritonError
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_metrics import MetricsExporter, counter_totals, gauge_values
from qwen_triton.serving.engine_request import is_stop_request, wants_ack
from qwen_triton.serving.engine_service import EngineService, ServiceOptions
from qwen_triton.serving.engine_watch import announce_process, release_pid_file, run_dir
from qwen_triton.serving.link_server import LinkServer
from qwen_triton.serving.link_wire import link_path
from qwen_triton.serving.triton_io import (
    as_bool,
    error_code,
    model_parameters,
    read_inputs,
    resolve_path,
    triton_error,
)

log = logging.getLogger(__name__)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _failure(message, code, acked):
    """A failed request's response: an error response, or after an acknowledgement an OUT_ERROR output."""
    if not acked:
        return pb_utils.InferenceResponse(error=triton_error(pb_utils, message, code))
    text = json.dumps({"code": code, "message": message}).encode()
    return pb_utils.InferenceResponse([pb_utils.Tensor(c.OUT_ERROR, np.array([text], dtype=np.object_))])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(args)
        self.engine_config = EngineConfig(**json.loads(params.get(c.PARAM_ENGINE_CONFIG) or "{}"))
        tokenizer_dir = params.get(c.PARAM_TOKENIZER_DIR)
        self.labels = {"model": args["model_name"], "version": args["model_version"]}
        self.stopping = False
        self.metrics = self._metrics_exporter()
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        options = ServiceOptions(
            exclude_input_default=as_bool(params.get(c.PARAM_EXCLUDE_INPUT), False),
            decoupled=self.decoupled,
            poll_period_s=int(params.get(c.PARAM_CANCEL_PERIOD_MS) or 100) / 1000.0)
        self.service = EngineService(
            resolve_path(params[c.PARAM_MODEL_PATH], args), self.engine_config,
            tokenizer_dir=resolve_path(tokenizer_dir, args) if tokenizer_dir else None,
            options=options, on_poll=self._on_poll)
        self._export_metrics()  # the gauges exist once the model is ready, not a poll period later
        self.link = LinkServer(self.service, link_path(run_dir(args["model_repository"]), args["model_name"],
                                                        args["model_instance_name"]))
        # the entry models find the link by this file, and watch it: if this process dies they fail what
        # waits on it (engine_watch.py)
        self.pid_file = announce_process(args)

    def execute(self, requests):
        for request in requests:
            self._submit(request)
        return None  # every response goes out through the request's response sender

    def finalize(self):
        self.stopping = True
        release_pid_file(self.pid_file)
        self.link.close()
        self.service.shutdown()

    def _submit(self, request):
        client_id = request.request_id()
        sender = request.get_response_sender()
        # a BLS caller may ask for an empty first response at once (contract.REQUEST_PARAM_ACK); after it,
        # errors go out as OUT_ERROR outputs: the Python backend loses error responses later in a BLS stream
        acked = []
        parameters = request.parameters()
        ack = self.decoupled and wants_ack(parameters)

        def accepted():
            if ack:
                sender.send(pb_utils.InferenceResponse([]))
                acked.append(True)

        try:
            inputs = read_inputs(c.ENGINE_INPUTS, lambda n: pb_utils.get_input_tensor_by_name(request, n))
            if is_stop_request(inputs):
                if not client_id:
                    raise InvalidRequestError(c.IN_STOP, "a stop request needs the id of the request to stop")
                self.service.stop(client_id)
                sender.send(pb_utils.InferenceResponse([]), flags=FINAL)  # as upstream: an empty response
                return
            key = f"{client_id or 'req'}-{uuid.uuid4().hex[:12]}"
            self.service.submit(key, inputs, lambda resp: self._send(sender, resp, bool(acked)),
                                client_id=client_id, is_cancelled=request.is_cancelled, accepted=accepted)
        except QwenTritonError as exc:
            sender.send(_failure(str(exc), error_code(exc), bool(acked)), flags=FINAL)
        except Exception as exc:  # never crash the model on a request
            log.exception("submitting a request failed")
            sender.send(_failure(f"engine error: {exc}", "INTERNAL", bool(acked)), flags=FINAL)

    @staticmethod
    def _send(sender, resp, acked):
        flags = FINAL if resp.final else 0
        if resp.cancelled:
            sender.send(_failure("request cancelled", "CANCELLED", acked), flags=FINAL)
        elif resp.error is not None:
            sender.send(_failure(resp.error, "INTERNAL", acked), flags=FINAL)
        elif resp.arrays is not None:
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in resp.arrays.items()]),
                        flags=flags)
        else:
            sender.send(flags=flags)

    # -- metrics ---------------------------------------------------------------------------------------

    def _metrics_exporter(self):
        try:
            return MetricsExporter(pb_utils, self.labels)
        except Exception:  # metrics disabled on this server
            log.warning("custom metrics unavailable", exc_info=True)
            return None

    def _on_poll(self):
        """Every poll period: a dead step loop ends this process, so that the supervisor restarts the
        engine (a stub with a dead engine would answer every request with an error, and stay ready)."""
        service = getattr(self, "service", None)
        if service is not None and not service.engine.is_alive and not self.stopping:
            log.critical("the engine's step loop died; exiting so that the engine model is restarted")
            os._exit(70)
        self._export_metrics()

    def _export_metrics(self):
        service = getattr(self, "service", None)
        if self.metrics is None or service is None:
            return
        stats, cfg = service.stats(), self.engine_config
        self.metrics.export(gauge_values(stats, cfg.block_size, cfg.max_num_seqs, service.rejected),
                            counter_totals(stats), service.latency.drain())
