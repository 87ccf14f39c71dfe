"""Continuous (inflight) batching: which tokens of which sequences run in the next step.

Plain Python, free of torch. Each step has a token budget shared by every
sequence: running sequences go first (decodes cost one token, unfinished
prefills take a chunk), then waiting ones join in arrival order while budget,
sequence slots and KV blocks last. When a running sequence needs a block and
none is free, the newest running sequence is preempted: its blocks are freed
and it waits, first in line, to be recomputed from its tokens.

With prefix caching on (BlockManager.caching), a sequence joining the batch
first takes the cached blocks that hold its leading full blocks of tokens and
starts computing after them; the block holding its last token is always
computed, so the step has that token's logits to sample from. Each block that
fills with computed tokens is registered for later sequences (a finished chat
turn leaves its history for the next turn; a preempted sequence finds its own
blocks again unless they were evicted).

`update` also hands each request what it asked for besides tokens: context
logits (collected per sequence, delivered once with the first token),
generation logits and RequestMetrics.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .block_manager import BlockManager
from .outputs import RequestOutput, SampledToken, TopLogprobs
from .sampling_params import SamplingParams
from .sequence import FinishReason, Sequence, SequenceStatus

if TYPE_CHECKING:
    from .guided import GrammarState


@dataclass(frozen=True)
class ScheduledSeq:
    """A read-only view of one sequence's work in a step, for the model runner.

    token_ids are the tokens to compute, at positions start_pos onwards.
    When `samples` is set the chunk reaches the sequence's end, so the runner
    samples its next token. prompt_token_ids / output_token_ids are the
    sequence's own lists (read them, never write them). context_positions are
    the prompt positions of this chunk whose logits the request still wants
    (empty unless it asked for context logits).
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    samples: bool
    params: SamplingParams
    seed: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    context_positions: range = range(0)
    grammar: GrammarState | None = None
    seq_number: int = -1  # the Sequence's admission number: a later request reusing the id is another one
    num_pending_inputs: int = 0  # trailing token_ids (0 as placeholder) sampled by the step still in flight
    num_pending_outputs: int = 0  # output tokens sampled before this step but not yet appended (step index)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    preempted: list[str]

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Owns every live Sequence and the block manager."""

    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self.max_running_seen = 0
        self.num_needing_outputs = 0  # live sequences whose params need known outputs (no lookahead)
        self.prefix_cache_queries = 0  # tokens of admitted sequences
        self.prefix_cache_hits = 0  # of those, tokens found in cached blocks

    # -- requests in and out -------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self.requests[seq.request_id] = seq
        self.waiting.append(seq)
        self.num_needing_outputs += seq.params.needs_known_outputs

    def abort(self, request_id: str) -> RequestOutput | None:
        """Finish a live request now, freeing its blocks; None if unknown."""
        seq = self.requests.get(request_id)
        if seq is None:
            return None
        return self.finish(seq, FinishReason.ABORT)

    def finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> RequestOutput:
        """End `seq` for `reason`, release everything it holds, and report it."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self._release(seq)
        seq.grammar = None  # the matcher goes with the request (an abort too)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        del self.requests[seq.request_id]
        self.num_needing_outputs -= seq.params.needs_known_outputs
        return _output(seq, [], None, error=error)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- one step ------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted: list[str] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            i += 1
            if seq.num_pending_tokens and self._ends_with_pending(seq):
                continue  # its token in flight is its last: nothing more to compute
            n = min(seq.num_uncomputed_tokens, budget)
            if not self._reserve_or_preempt(seq, n, preempted):
                break  # seq itself was the newest and got preempted
            scheduled.append(_schedule(seq, n))
            budget -= n
        if not preempted:
            budget = self._admit_waiting(budget, scheduled)
        self.max_running_seen = max(self.max_running_seen, len(scheduled))
        return SchedulerOutput(scheduled, preempted)

    def update(self, out: SchedulerOutput, sampled: Mapping[str, SampledToken],
               context_logits: Mapping[str, np.ndarray] | None = None) -> list[RequestOutput]:
        """Take a computed step's results: collect the context logits each sequence
        asked for (float32 [len(context_positions), vocab] by request id), append
        the sampled tokens, register the blocks they filled, and finish what
        ended. Returns the new tokens per request. (`schedule` already counted
        the chunks as computed: the next step may be scheduled before this one's
        results are in.)"""
        outputs = []
        now = time.time_ns()
        for s in out.scheduled:
            seq = self.requests.get(s.request_id)
            if seq is None or seq.arrival != s.seq_number:
                continue  # finished (an end id, an abort) while the step ran
            if context_logits and s.request_id in context_logits:
                seq.add_context_logits(context_logits[s.request_id])
            tok = sampled.get(s.request_id)
            if tok is None:
                self._register_full_blocks(seq)
                continue  # a prefill chunk that does not reach the end yet
            seq.num_pending_tokens -= 1
            seq.record_sample(now)
            n_before = len(seq.output_token_ids)
            reason = seq.append_token(tok.token_id, tok.logprob, self.max_model_len)
            self._register_full_blocks(seq)
            if reason is not None:
                self.finish(seq, reason)
            new = seq.output_token_ids[n_before:]
            logprobs = seq.output_logprobs[n_before:] if seq.params.logprobs else None
            # [1, vocab] for a token that joined the output, [0, vocab] for an end id
            gen = tok.logits[None][:len(new)] if tok.logits is not None else None
            top = tok.top_logprobs.head(len(new)) if tok.top_logprobs is not None else None
            outputs.append(_output(seq, new, logprobs, seq.take_context_logits(), gen, seq.error, top))
        return outputs

    # -- internals -----------------------------------------------------------

    def _reserve_or_preempt(self, seq: Sequence, n: int, preempted: list[str]) -> bool:
        """Make room in `seq`'s block table for n more computed tokens,
        preempting the newest running sequences until it fits."""
        while not self._grow(seq, seq.num_computed_tokens + n):
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is seq:
                return False
        return True

    def _ends_with_pending(self, seq: Sequence) -> bool:
        """Whether the tokens in flight take `seq` to max_tokens or the context (an end id cannot be known)."""
        generated = len(seq.output_token_ids) + seq.num_pending_tokens
        return generated >= seq.params.max_tokens or seq.num_tokens + seq.num_pending_tokens >= self.max_model_len

    def _admit_waiting(self, budget: int, scheduled: list[ScheduledSeq]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_pending_tokens:
                break  # preempted while its token was in flight: it rejoins once the token is in
            reused = self._reuse_prefix(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            if not self._grow(seq, seq.num_computed_tokens + n):
                self._release(seq)  # gives back the cached blocks it took
                seq.num_computed_tokens = 0
                break  # first come, first served: nobody overtakes the head
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += reused * self.blocks.block_size
            seq.num_reused_blocks += reused
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(_schedule(seq, n))
            budget -= n
        return budget

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        """BlockManager.grow for seq's table, counting the blocks it gains."""
        held = len(seq.block_table)
        if not self.blocks.grow(seq.block_table, num_tokens):
            return False
        seq.record_blocks(len(seq.block_table) - held)
        return True

    def _reuse_prefix(self, seq: Sequence) -> int:
        """Start `seq` (holding no blocks) on the cached blocks of its leading full blocks, short of the
        block holding its last token, and return how many it took. Requests for context logits compute
        every position."""
        if not self.blocks.caching or seq.params.return_context_logits:
            return 0
        size = self.blocks.block_size
        found = self.blocks.match(seq.keys_for_blocks((seq.num_tokens - 1) // size, size))
        self.blocks.take(found)
        seq.block_table = found
        seq.num_registered_blocks = len(found)
        seq.num_computed_tokens = len(found) * size
        return len(found)

    def _register_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks of `seq` that its computed tokens of known id have filled since the last call."""
        size = self.blocks.block_size
        full = min(seq.num_computed_tokens, seq.num_tokens) // size
        if not self.blocks.caching or full <= seq.num_registered_blocks:
            return
        keys = seq.keys_for_blocks(full, size)
        for i in range(seq.num_registered_blocks, full):
            self.blocks.register(seq.block_table[i], keys[i])
        seq.num_registered_blocks = full

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        self.blocks.free(seq.block_table[::-1])  # tail first: its deepest cached blocks are evicted first
        seq.block_table = []
        seq.num_registered_blocks = 0


def _schedule(seq: Sequence, n: int) -> ScheduledSeq:
    """The next n tokens of seq as the runner's work, counted as computed from now on (with a token
    pending for seq when the chunk reaches its end); stamps seq's first scheduling."""
    if not seq.first_scheduled_time_ns:
        seq.first_scheduled_time_ns = time.time_ns()
    start, known = seq.num_computed_tokens, seq.num_tokens
    pending_inputs = max(start + n - known, 0)  # the token in flight, when the chunk reaches it
    samples = start + n == known + seq.num_pending_tokens
    view = ScheduledSeq(
        request_id=seq.request_id,
        token_ids=seq.token_slice(start, start + n - pending_inputs) + [0] * pending_inputs,
        start_pos=start,
        block_table=list(seq.block_table),
        samples=samples,
        params=seq.params,
        seed=seq.seed,
        prompt_token_ids=seq.prompt_token_ids,
        output_token_ids=seq.output_token_ids,
        context_positions=seq.context_positions(start, start + n),
        grammar=seq.grammar,
        seq_number=seq.arrival,
        num_pending_inputs=pending_inputs,
        num_pending_outputs=seq.num_pending_tokens,
    )
    seq.num_computed_tokens += n
    seq.num_pending_tokens += samples
    return view


def _output(seq: Sequence, new: list[int], logprobs: list[float] | None,
            context_logits: np.ndarray | None = None, generation_logits: np.ndarray | None = None,
            error: str | None = None, top_logprobs: TopLogprobs | None = None) -> RequestOutput:
    reason = seq.finish_reason.value if seq.finish_reason else None
    metrics = seq.metrics() if seq.params.return_perf_metrics else None
    return RequestOutput(seq.request_id, new, logprobs, seq.is_finished, reason,
                         seq.num_prompt_tokens, len(seq.output_token_ids), error,
                         context_logits, generation_logits, metrics, top_logprobs)
