"""One request's state inside the engine: its tokens, its KV blocks, its progress.

Free of torch: the scheduler owns every Sequence and is the only writer; the
model runner sees read-only views of them (`ScheduledSeq`). The context logits
a request asked for arrive here chunk by chunk as numpy arrays.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .block_manager import chain_keys
from .outputs import RequestMetrics
from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from .guided import GrammarState


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
    preemption).

    Timing (time.time_ns, 0 until it happens) and KV figures feed RequestMetrics;
    context logits are collected in prompt order, each position once, however
    the prompt is chunked or recomputed after a preemption. `grammar` is the
    matcher of a guided request (guided.py): it has seen exactly the output
    tokens, so a preempted sequence keeps it as it keeps them."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    arrival: int  # admission order
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # counted when scheduled: a step in flight has computed them for the next
    num_pending_tokens: int = 0  # sampled by a step in flight, not yet appended (0 or 1)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    arrival_time_ns: int = field(default_factory=time.time_ns)
    first_scheduled_time_ns: int = 0
    first_token_time_ns: int = 0
    last_token_time_ns: int = 0
    num_new_blocks: int = 0  # KV blocks allocated for it over its life (a recompute allocates again)
    max_blocks: int = 0  # most KV blocks it held at once
    context_chunks: list[np.ndarray] = field(default_factory=list)  # float32 [rows, vocab] each
    num_context_rows: int = 0  # prompt positions collected: always the first ones
    context_taken: bool = False
    grammar: GrammarState | None = None
    error: str | None = None  # why it ended with FinishReason.ERROR
    # prefix caching (block_manager.py): what besides the tokens shapes its K/V (the original Qwen's dynamic
    # NTK alpha, a function of the prompt length), the keys of its full blocks (computed once: tokens only
    # grow), how many leading blocks of block_table are registered, and blocks it took from the cache
    cache_salt: int = 0
    block_keys: list[bytes] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_reused_blocks: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens + self.num_pending_tokens - self.num_computed_tokens

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
        A guided request's token advances its grammar (the sampler only let through
        what the grammar allows, end ids only where it may end); the grammar's end
        ends the sequence.
        """
        params = self.params
        may_stop = len(self.output_token_ids) >= params.min_tokens
        if may_stop and token_id in params.end_ids:
            return FinishReason.STOP
        if self.grammar is not None and not self.grammar.accept(token_id):
            # only when penalties (bad_words) took away every token the grammar allowed
            self.error = f"guided decoding: token {token_id} does not fit the grammar (no allowed token was left)"
            return FinishReason.ERROR
        self.output_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)
        if may_stop and self._ends_with_stop_sequence():
            return FinishReason.STOP
        if self.grammar is not None and self.grammar.is_terminated:
            return FinishReason.STOP
        if len(self.output_token_ids) >= params.max_tokens or self.num_tokens >= max_model_len:
            return FinishReason.LENGTH
        return None

    def _ends_with_stop_sequence(self) -> bool:
        out = self.output_token_ids
        return any(len(w) <= len(out) and tuple(out[-len(w):]) == w for w in self.params.stop_token_ids)

    # -- KV blocks, timing and logits the request may ask for ----------------

    def record_blocks(self, num_new: int) -> None:
        """Count `num_new` blocks just added to block_table."""
        self.num_new_blocks += num_new
        self.max_blocks = max(self.max_blocks, len(self.block_table))

    def record_sample(self, now_ns: int) -> None:
        """A token (an end id too) was sampled for it at `now_ns`."""
        if not self.first_token_time_ns:
            self.first_token_time_ns = now_ns
        self.last_token_time_ns = now_ns

    def metrics(self) -> RequestMetrics:
        return RequestMetrics(
            arrival_time_ns=self.arrival_time_ns, first_scheduled_time_ns=self.first_scheduled_time_ns,
            first_token_time_ns=self.first_token_time_ns, last_token_time_ns=self.last_token_time_ns,
            kv_new_blocks=self.num_new_blocks, kv_reused_blocks=self.num_reused_blocks,
            kv_total_blocks=self.max_blocks)

    def keys_for_blocks(self, num_blocks: int, block_size: int) -> list[bytes]:
        """The prefix-cache keys of its first `num_blocks` full blocks (extending `block_keys` as needed)."""
        have = len(self.block_keys)
        if num_blocks > have:
            parent = self.block_keys[-1] if have else None
            tokens = self.token_slice(have * block_size, num_blocks * block_size)
            self.block_keys += chain_keys(parent, tokens, block_size, self.cache_salt)
        return self.block_keys[:num_blocks]

    def context_positions(self, start: int, stop: int) -> range:
        """Prompt positions in [start, stop) whose logits the request still needs:
        none unless it asked, none once delivered, and after a preemption none it
        already holds (the recomputed prompt would repeat them)."""
        if not self.params.return_context_logits or self.context_taken:
            return range(0)
        return range(max(start, self.num_context_rows), min(stop, self.num_prompt_tokens))

    def add_context_logits(self, rows: np.ndarray) -> None:
        """Append float32 [k, vocab]: the logits of the next k prompt positions."""
        self.context_chunks.append(rows)
        self.num_context_rows += rows.shape[0]

    def take_context_logits(self) -> np.ndarray | None:
        """float32 [prompt tokens, vocab] once the whole prompt is in, exactly once; else None."""
        if self.context_taken or not self.params.return_context_logits:
            return None
        if self.num_context_rows < self.num_prompt_tokens:
            return None
        chunks, self.context_chunks, self.context_taken = self.context_chunks, [], True
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
