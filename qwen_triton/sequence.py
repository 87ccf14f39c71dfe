"""One request's state inside the engine: its tokens, its KV blocks, its progress.

Plain Python, free of torch: the scheduler owns every Sequence and is the only
writer; the model runner sees read-only views of them (`ScheduledSeq`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # an end id or a stop sequence
    LENGTH = "length"  # max_tokens or the model's context
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # the engine failed while running it


@dataclass
class Sequence:
    """A request in flight. `num_computed_tokens` counts tokens whose K/V sit in
    the cache; the rest of `prompt + output` still has to be computed (a prompt
    not yet prefilled, the newest sampled token, or everything after a
    preemption)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    arrival: int
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def token_slice(self, start: int, stop: int) -> list[int]:
        """Tokens [start, stop) of prompt + output."""
        n_prompt = len(self.prompt_token_ids)
        if stop <= n_prompt:
            return self.prompt_token_ids[start:stop]
        head = self.prompt_token_ids[start:] if start < n_prompt else []
        return head + self.output_token_ids[max(start - n_prompt, 0):stop - n_prompt]

    def append_token(self, token_id: int, logprob: float | None, max_model_len: int) -> FinishReason | None:
        """Record a sampled token; return why the sequence ends now, if it does.

        An end id ends the sequence without joining the output. A stop sequence
        joins the output and then ends it. Neither counts before min_tokens.
        """
        params = self.params
        may_stop = len(self.output_token_ids) >= params.min_tokens
        if may_stop and token_id in params.end_ids:
            return FinishReason.STOP
        self.output_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)
        if may_stop and self._ends_with_stop_sequence():
            return FinishReason.STOP
        if len(self.output_token_ids) >= params.max_tokens or self.num_tokens >= max_model_len:
            return FinishReason.LENGTH
        return None

    def _ends_with_stop_sequence(self) -> bool:
        out = self.output_token_ids
        return any(len(w) <= len(out) and tuple(out[-len(w):]) == w for w in self.params.stop_token_ids)
