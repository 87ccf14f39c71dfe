"""The service's one line to Triton: a gRPC stream per request straight to the engine model.

Each request opens its own `ModelStreamInfer` stream with tritonclient's asyncio client
(`tritonclient.grpc.aio`), sends one `tensorrt_llm` request of token ids and reads the token ids back as
the engine produces them. The engine batches these requests with everyone else's (inflight batching);
no Python-backend BLS hop is involved. The stream ends when the request is complete (Triton closes a
stream once the client has sent everything and every response went out). Leaving the iteration early
(the client went away, a stop string matched) cancels the gRPC call: Triton marks the request cancelled
and the engine's poller aborts it within its `cancellation_check_period_ms`, freeing its KV blocks.
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..chat import ids_to_word_list
from ..serving import contract as c
from ..serving.triton_io import ERROR_PREFIXES
from ..wire import triton_dtype
from .errors import APIError


@dataclass(frozen=True)
class EngineCall:
    """One request to the engine model. None leaves a setting to the engine (temperature, top_p: the
    checkpoint's generation_config.json when neither is given). `guide`: (guide type, guide) for
    grammar-constrained decoding (tensorrtllm_backend's guided_decoding_guide_type / _guide). `top_logprobs`:
    how many most probable tokens to return beside each chosen one (needs `logprobs`)."""

    prompt: tuple[int, ...]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop_words: tuple[tuple[int, ...], ...] = ()
    guide: tuple[str, str] | None = None
    streaming: bool = True

    def arrays(self) -> dict[str, np.ndarray]:
        """The engine model's inputs, batch of one: scalars [1, 1], input_ids [1, L], embedding_bias [1, V'],
        stop_words_list [1, 2, N]."""
        def one(value, dtype) -> np.ndarray:
            return np.array([[value]], dtype=dtype)

        out = {c.IN_INPUT_IDS: np.array([self.prompt], np.int32), c.IN_INPUT_LENGTHS: one(len(self.prompt), np.int32),
               c.IN_REQUEST_OUTPUT_LEN: one(self.max_tokens, np.int32), c.IN_STREAMING: one(self.streaming, bool),
               c.IN_EXCLUDE_INPUT: one(True, bool)}
        if self.temperature is not None or self.top_p is not None:
            # OpenAI's defaults for the other one (1, 1). TensorRT-LLM's rules: top_p 0 switches top-p off,
            # and with top_k 0 too decoding is greedy, which is what top_p 0 means in OpenAI's API
            out[c.IN_TEMPERATURE] = one(1.0 if self.temperature is None else self.temperature, np.float32)
            out[c.IN_TOP_P] = one(1.0 if self.top_p is None else self.top_p, np.float32)
        for name, value in ((c.IN_PRESENCE_PENALTY, self.presence_penalty),
                            (c.IN_FREQUENCY_PENALTY, self.frequency_penalty)):
            if value is not None:
                out[name] = one(value, np.float32)
        if self.seed is not None:
            out[c.IN_RANDOM_SEED] = one(self.seed % (1 << 64), np.uint64)
        if self.logprobs:
            out[c.IN_RETURN_LOG_PROBS] = one(True, bool)
        if self.top_logprobs:
            out[c.IN_TOP_LOGPROBS] = one(self.top_logprobs, np.int32)
        if self.logit_bias:
            bias = np.zeros((1, max(self.logit_bias) + 1), np.float32)
            for token, value in self.logit_bias.items():
                bias[0, token] = value
            out[c.IN_EMBEDDING_BIAS] = bias
        if self.stop_words:
            out[c.IN_STOP_WORDS] = np.array([ids_to_word_list([list(w) for w in self.stop_words])], np.int32)
        if self.guide is not None:
            out[c.GUIDE_TYPE] = one(self.guide[0].encode(), object)
            if self.guide[1]:  # "json" takes none
                out[c.GUIDE] = one(self.guide[1].encode(), object)
        return out


TopPairs = tuple[tuple[int, float], ...]  # the most probable (token id, log probability) at one position


@dataclass(frozen=True)
class EngineChunk:
    """Tokens of one engine response (several when a character spans tokens) and, when asked, the log
    probability of each and the most probable tokens at its position (most probable first)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    top_logprobs: tuple[TopPairs, ...] | None = None


def engine_error(message: str) -> APIError:
    """An error the engine model answered: a server fault carries ERROR_PREFIXES (serving/triton_io.py),
    Triton's own words for a dead stub say "is not healthy"; anything else is about the request."""
    if message.startswith(ERROR_PREFIXES["UNAVAILABLE"]) or "is not healthy" in message:
        return APIError(503, message, None, "engine_unavailable")
    if message.startswith(ERROR_PREFIXES["INTERNAL"]):
        return APIError(500, message, None, "engine_error")
    if "Request for unknown model" in message or "is not ready" in message:
        return APIError(503, f"unavailable: {message}", None, "engine_unavailable")
    return APIError(400, message, None, "invalid_value")


class EngineClient:
    """tritonclient's asyncio gRPC client of one Triton server; one stream per request. Its channel is made
    on first use, inside the event loop that serves (a grpc.aio channel belongs to the loop it was made in)."""

    def __init__(self, url: str, model: str = c.ENGINE, timeout_s: float = 600.0):
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self._grpc = None

    @property
    def _client(self):
        if self._grpc is None:
            import tritonclient.grpc.aio as grpcclient

            self._grpc = grpcclient.InferenceServerClient(self.url)
        return self._grpc

    async def close(self) -> None:
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = None

    async def ready(self) -> bool:
        """Whether Triton answers and the engine model is ready."""
        try:
            return bool(await self._client.is_model_ready(self.model))
        except Exception:  # tritonclient raises its own exception for every transport failure
            return False

    def _inputs(self, call: EngineCall) -> list:
        import tritonclient.grpc as grpcclient

        inputs = []
        for name, array in call.arrays().items():
            tensor = grpcclient.InferInput(name, list(array.shape), triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def generate(self, call: EngineCall) -> AsyncIterator[EngineChunk]:
        """The engine's tokens as they come; APIError for an error the engine or Triton answers (503 when
        Triton cannot be reached). Closing the iterator early cancels the request in the engine."""
        from tritonclient.utils import InferenceServerException

        request = {"model_name": self.model, "inputs": self._inputs(call), "request_id": uuid.uuid4().hex}

        async def one_request():
            yield request

        stream = self._client.stream_infer(one_request(), stream_timeout=self.timeout_s)
        try:
            async for result, error in _guarded(stream):
                if error is not None:
                    raise engine_error(error.message())
                yield _chunk(result)
        except InferenceServerException as exc:
            why = f"{exc.status() or 'no status'}: {exc.message()}"
            raise APIError(503, f"unavailable: Triton at gRPC {self.url} did not serve the request ({why})", None,
                           "engine_unavailable") from None
        finally:
            stream.cancel()  # a no-op once the call has ended; else Triton cancels the request


async def _guarded(stream):
    """The stream's items; the end of a gRPC call that failed raises InferenceServerException."""
    import grpc
    from tritonclient.utils import InferenceServerException

    iterator = stream.__aiter__()
    while True:
        try:
            item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            raise InferenceServerException(msg=str(exc.details() if hasattr(exc, "details") else exc),
                                           status=str(code)) from None
        yield item


def _chunk(result) -> EngineChunk:
    ids = result.as_numpy(c.OUT_OUTPUT_IDS)
    logprobs = result.as_numpy(c.OUTPUT_LOG_PROBS)
    tokens = tuple(int(t) for t in ids.reshape(-1)) if ids is not None else ()
    lps = tuple(float(x) for x in logprobs.reshape(-1))[:len(tokens)] if logprobs is not None else None
    top_ids, top_lps = result.as_numpy(c.OUT_TOP_IDS), result.as_numpy(c.OUT_TOP_LOGPROBS)
    top = None
    if top_ids is not None and top_lps is not None:  # [1 (batch), 1 (beam), tokens, k]
        k = top_ids.shape[-1]
        top = tuple(tuple(zip(map(int, i), map(float, v)))
                    for i, v in zip(top_ids.reshape(-1, k), top_lps.reshape(-1, k)))[:len(tokens)]
    return EngineChunk(tokens, lps, top)
