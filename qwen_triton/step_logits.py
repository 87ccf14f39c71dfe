"""Which rows of a step's packed tokens go through the lm_head, and whose logits they are.

A step packs T tokens of B sequences (HostBatch.cu marks where each one starts).
The sampler needs one row per sequence whose chunk reaches its end: its last
token. A request that asked for context logits also needs the rows of the
prompt positions in its ScheduledSeq.context_positions; nobody else pays for
more than the sampling rows. Context rows are computed LOGITS_ROWS at a time
and moved to the CPU block by block, so a long prompt never holds a
[prompt, vocab] float32 tensor on the device.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .scheduler import ScheduledSeq

# Rows of logits computed at once when many are wanted (a Qwen vocabulary: 256 rows ~ 156 MB in float32).
LOGITS_ROWS = 256

# packed token rows, int64 [r] -> their float32 logits [r, vocab] on the device
LogitsFn = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class LogitsPlan:
    """samplers: the sequences that sample this step, in batch order; sample_rows:
    int64 [S], the packed row of each one's last token; context: request id ->
    int64 [k], the packed rows of its context_positions (requests that want none
    are absent)."""

    samplers: list[ScheduledSeq]
    sample_rows: np.ndarray
    context: dict[str, np.ndarray]

    @classmethod
    def build(cls, scheduled: list[ScheduledSeq], cu: np.ndarray) -> LogitsPlan:
        """cu: int32 [B + 1], where each sequence's tokens start in the packed batch."""
        which = [i for i, s in enumerate(scheduled) if s.samples]
        sample_rows = (cu[1:][which] - 1).astype(np.int64)  # [S]
        context = {}
        for i, s in enumerate(scheduled):
            positions = s.context_positions
            if positions:
                first = int(cu[i]) + positions.start - s.start_pos
                context[s.request_id] = np.arange(first, first + len(positions), dtype=np.int64)
        return cls([scheduled[i] for i in which], sample_rows, context)


def context_logits(plan: LogitsPlan, logits_of: LogitsFn, sample_logits: torch.Tensor | None,
                   vocab: int) -> dict[str, np.ndarray]:
    """float32 numpy [k, vocab] for each request in plan.context (one array each,
    sharing no memory, so holding one keeps no other alive).

    A row that is also a sampling row (a prompt's last position, on the step
    that samples its first token) is copied from sample_logits [S, vocab], so it
    is exactly the row the token was drawn from; the others are computed
    LOGITS_ROWS at a time.
    """
    sample_at = {int(r): j for j, r in enumerate(plan.sample_rows)}
    result = {}
    for request_id, rows in plan.context.items():  # rows: int64 [k], consecutive packed rows
        out = np.empty((len(rows), vocab), dtype=np.float32)  # [k, vocab]
        last = sample_at.get(int(rows[-1]))  # only a chunk's last row can be a sampling row
        fresh = len(rows) if last is None else len(rows) - 1
        for lo in range(0, fresh, LOGITS_ROWS):
            hi = min(lo + LOGITS_ROWS, fresh)
            out[lo:hi] = logits_of(rows[lo:hi]).cpu().numpy()
        if last is not None:
            out[-1] = sample_logits[last].cpu().numpy()
        result[request_id] = out
    return result


def generation_logits(plan: LogitsPlan, sample_logits: torch.Tensor) -> list[np.ndarray | None]:
    """Per sampler: its raw float32 logits [vocab] as numpy when it asked for
    generation logits, else None. One device-to-host copy for all of them, then
    a copy per row, so that a caller keeping one row keeps no other alive."""
    want = [j for j, s in enumerate(plan.samplers) if s.params.return_generation_logits]
    rows: list[np.ndarray | None] = [None] * len(plan.samplers)
    if want:
        host = sample_logits[torch.tensor(want, device=sample_logits.device)].cpu().numpy()  # [G, vocab]
        for j, row in zip(want, host):
            rows[j] = row.copy()
    return rows
