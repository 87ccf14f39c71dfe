"""What the engine hands back to its callers after each step."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TopLogprobs:
    """The k most probable tokens at each of n output positions, most probable first: token_ids int32
    [n, k] and logprobs float32 [n, k], from the distribution the chosen token's log probability comes
    from (Sampler: after the grammar mask, logit bias, penalties and temperature, before top-k / top-p)."""

    token_ids: np.ndarray
    logprobs: np.ndarray

    def __len__(self) -> int:
        return self.token_ids.shape[0]

    @property
    def k(self) -> int:
        return self.token_ids.shape[1]

    def head(self, n: int) -> TopLogprobs:
        """The first n positions."""
        return TopLogprobs(self.token_ids[:n], self.logprobs[:n])

    @staticmethod
    def join(*parts: TopLogprobs | None) -> TopLogprobs | None:
        """Consecutive positions of one request as one (None parts skipped; None when all are)."""
        given = [p for p in parts if p is not None]
        if len(given) < 2:
            return given[0] if given else None
        return TopLogprobs(np.concatenate([p.token_ids for p in given]), np.concatenate([p.logprobs for p in given]))


@dataclass(frozen=True)
class SampledToken:
    """The model runner's answer for a sequence that sampled this step."""

    token_id: int
    logprob: float | None = None  # log prob of token_id when the request asked for it
    # float32 [vocab]: the raw model logits it was sampled from, when the request asked for generation logits
    logits: np.ndarray | None = None
    top_logprobs: TopLogprobs | None = None  # [1, k] when the request asked for k > 0 top log probabilities


@dataclass(frozen=True)
class StepOutput:
    """What the model runner computed in one step, by request id (Scheduler.update's input).

    sampled: the token of every sequence whose chunk reached its end. context_logits: float32
    [len(ScheduledSeq.context_positions), vocab] numpy, the logits of the prompt positions the
    scheduler asked for (only requests that want context logits appear).
    """

    sampled: dict[str, SampledToken]
    context_logits: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestMetrics:
    """Per-request timing and KV-cache figures (TensorRT-LLM's request perf metrics).

    Times are wall-clock nanoseconds since the epoch (time.time_ns): arrival when the engine
    accepted the request, first_scheduled when it first ran, first_token / last_token when its first
    and latest output tokens were sampled (0: not yet). Blocks: new_blocks allocated for it, blocks
    reused from a prefix cache (0 while there is none), total_blocks it holds or held at most.
    """

    arrival_time_ns: int
    first_scheduled_time_ns: int = 0
    first_token_time_ns: int = 0
    last_token_time_ns: int = 0
    kv_new_blocks: int = 0
    kv_reused_blocks: int = 0
    kv_total_blocks: int = 0


@dataclass(frozen=True)
class RequestOutput:
    """The tokens one request gained in one step (a delta), and whether it ended.

    finish_reason is "stop", "length", "abort" or "error" once finished; `error`
    then carries the message of an engine failure.

    When the request asked for them: `context_logits` float32 [prompt tokens, vocab], the logits at
    every prompt position, on the output that carries the first token (once); `generation_logits`
    float32 [len(new_token_ids), vocab], the raw model logits that produced each new token (a step
    that ends on an end id adds no row, as it adds no token). `metrics` on every output when the
    request asked for perf metrics (else None). `new_top_logprobs` [len(new_token_ids), k]: the k most
    probable tokens at each new token's position (SamplingParams.top_logprobs; else None).
    """

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    error: str | None = None
    context_logits: np.ndarray | None = None
    generation_logits: np.ndarray | None = None
    metrics: RequestMetrics | None = None
    new_top_logprobs: TopLogprobs | None = None


@dataclass(frozen=True)
class EngineStats:
    """Counters an operator (and the inflight-batching tests) can read."""

    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    num_steps: int
    num_preemptions: int
    max_running_seen: int  # most sequences that shared one step so far
    num_generated_tokens: int
    num_prefilling: int = 0  # running sequences whose prompt is not computed yet (TRT-LLM: "context")
    # requests: admitted = finished (end id, stop word, length) + aborted + failed + still in flight
    num_admitted: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_failed: int = 0
    # automatic prefix caching, in prompt tokens (vLLM's prefix_cache_queries / _hits): hit rate = hits / queries
    prefix_cache_queries: int = 0  # prompt tokens of sequences admitted (a recompute after preemption too)
    prefix_cache_hits: int = 0  # of those, tokens whose KV came from cached blocks
    num_cached_blocks: int = 0  # free blocks still holding a reusable prefix (evicted LRU when needed)
