"""What the engine hands back to its callers after each step."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SampledToken:
    """The model runner's answer for a sequence that sampled this step."""

    token_id: int
    logprob: float | None = None  # log prob of token_id when the request asked for it


@dataclass(frozen=True)
class RequestOutput:
    """The tokens one request gained in one step (a delta), and whether it ended.

    finish_reason is "stop", "length", "abort" or "error" once finished; `error`
    then carries the message of an engine failure.
    """

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    error: str | None = None


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
