"""How an entry model reaches its engine: our engine over the engine link (link_client.py), the TensorRT-LLM
C++ engine over Triton's BLS. Both give one request's engine responses the same way, so the entry model
(entry_model.py) decodes, streams and cancels identically: `responses` yields each response's output arrays
(an empty dict for one that carries none) and at most one Failure, which ends the request; `stop` ends a
request early (tensorrtllm_backend's stop: the engine ends it with a normal final response).

Why not BLS for our engine: under a few hundred concurrent streams, Triton 2.51's BLS decoupled response
path crashed the entry models' stub processes (GPU soak, docs/reliability.md), and it needed workarounds:
an acknowledgement, errors in an output tensor, a bound on the calls waiting at once.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from . import bls
from . import link_wire as w
from .link_client import GONE, LinkClient
from .triton_io import Arrays

# BLS calls waiting at once per instance: the Python backend's 32 parent threads less 8 for response sends
BLS_CALL_SLOTS = 24


@dataclass(frozen=True)
class Failure:
    """The engine failed a request: a Triton error code name and message, or Triton's own error object."""

    message: str = ""
    code: str = "INTERNAL"
    triton_error: object | None = None  # pb_utils.TritonError of a failed BLS response, passed on as is


class LinkEngine:
    """Our engine, over the engine link: no bound on the requests in flight."""

    def __init__(self, link: LinkClient):
        self.link = link

    def responses(self, rid: str, inputs: Arrays) -> Iterator[Arrays | Failure]:
        for event in self.link.call(rid, inputs):
            if event.kind == w.RESPONSE:
                yield event.arrays
            elif event.kind == w.ERROR:
                yield Failure(event.message, event.code)
            elif event.kind == w.CANCELLED:
                yield Failure("request cancelled", "CANCELLED")
            elif event.kind == GONE:
                yield Failure(f"{event.message} while serving this request", "UNAVAILABLE")

    def stop(self, rid: str) -> None:
        self.link.stop(rid)

    def close(self) -> None:
        self.link.close()


class BlsEngine:
    """The TensorRT-LLM engine model, over BLS: the Python backend serves a stub's BLS calls and response
    sends on one pool of 32 threads per instance, and a call holds its thread until the engine's first
    response, so at most BLS_CALL_SLOTS calls wait at once (leaving threads for the sends)."""

    def __init__(self, pb, engine_model: str, decoupled: bool):
        self.pb, self.engine_model, self.decoupled = pb, engine_model, decoupled
        self.call_slots = threading.BoundedSemaphore(BLS_CALL_SLOTS)

    def responses(self, rid: str, inputs: Arrays) -> Iterator[Arrays | Failure]:
        call = self.pb.InferenceRequest(model_name=self.engine_model,
                                        inputs=[self.pb.Tensor(k, v) for k, v in inputs.items()],
                                        requested_output_names=list(bls.ENGINE_OUTPUT_NAMES), request_id=rid)
        with self.call_slots:  # exec returns at the engine's first response
            stream = call.exec(decoupled=True) if self.decoupled else [call.exec()]
        for response in stream:
            if response.has_error():
                yield Failure(triton_error=response.error())
                return
            yield {t.name(): t.as_numpy() for t in response.output_tensors()}

    def stop(self, rid: str) -> None:
        for _ in self.responses(rid, bls.stop_inputs()):
            pass

    def close(self) -> None:
        pass
