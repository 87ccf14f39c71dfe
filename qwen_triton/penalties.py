"""The sampler's penalties, in the order transformers applies its processors: logit_bias (fixed per-token
additions, as TensorRT-LLM's embedding_bias), then repetition (prompt + output), presence / frequency
(output), min_tokens (end ids -> -inf) and bad words (completions -> -inf). Every index and value goes to
the device through transfer.to_device, so sampling never waits for the step in flight (async scheduling).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .transfer import to_device

if TYPE_CHECKING:
    from .sampler import SamplingRow

_NEG_INF = float("-inf")


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """logits[r, t] += bias for each (t, bias) in rows[r].params.logit_bias.

    logits: float32 [N, V]. Returns `logits` itself when no row has a bias (no
    copy, no device work), else a biased copy. Ids are unique per row
    (SamplingParams sums repeats) and checked against the vocabulary by the
    engine; any >= V are dropped here.
    """
    vocab = logits.shape[-1]
    pairs = [(i, t, b) for i, r in enumerate(rows) for t, b in r.params.logit_bias if 0 <= t < vocab]
    if not pairs:
        return logits
    row_of, token, bias = zip(*pairs)
    device = logits.device
    logits = logits.clone()
    logits.index_put_((to_device(row_of, device), to_device(token, device)),
                      to_device(bias, device, logits.dtype), accumulate=True)
    return logits


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Repetition, presence/frequency, min_tokens and bad-word penalties.

    logits: float32 [N, V]. Returns `logits` itself when no row has a penalty
    (the all-defaults fast path), else a penalised copy.
    """
    rep = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
    pf = [i for i, r in enumerate(rows)
          if r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0]
    ban_rows, ban_tokens = _banned(rows, logits.shape[-1])
    if not (rep or pf or ban_rows):
        return logits
    logits = logits.clone()
    if rep:
        _repetition_penalty_(logits, rows, rep)
    if pf:
        _presence_frequency_(logits, rows, pf)
    if ban_rows:
        device = logits.device
        # a device tensor of -inf: a Python float would be copied to the device synchronously
        logits.index_put_((to_device(ban_rows, device), to_device(ban_tokens, device)),
                          torch.full((len(ban_rows),), _NEG_INF, device=device))
    return logits


def _token_index(logits: torch.Tensor, token_lists: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten per-row token lists into (row, token) index tensors.

    Ids >= vocab are clamped onto a spare column V (dropped later), as
    transformers does for embeddings larger than the lm_head.
    """
    vocab = logits.shape[-1]
    row_of = [j for j, toks in enumerate(token_lists) for _ in range(len(toks))]
    flat = [t for toks in token_lists for t in toks]
    device = logits.device
    row_t = to_device(row_of, device, torch.long)               # [T]
    tok_t = to_device(flat, device, torch.long).clamp_(max=vocab)  # [T]
    return row_t, tok_t


def _repetition_penalty_(logits: torch.Tensor, rows: Sequence[SamplingRow], which: list[int]) -> None:
    """transformers' RepetitionPenaltyLogitsProcessor, per row, in place.

    Every token seen in prompt + output (counted once) has a positive logit
    divided by the penalty and a negative one multiplied by it.
    """
    idx = to_device(which, logits.device)
    sub = logits[idx]                                                            # [R, V]
    row_t, tok_t = _token_index(logits, [list(rows[i].prompt_token_ids) + list(rows[i].output_token_ids)
                                         for i in which])
    seen = torch.zeros(len(which), sub.shape[-1] + 1, dtype=torch.bool, device=sub.device)  # [R, V+1]
    seen[row_t, tok_t] = True
    penalty = to_device([rows[i].params.repetition_penalty for i in which],
                        sub.device, torch.float32)[:, None]     # [R, 1]
    penalised = torch.where(sub < 0, sub * penalty, sub / penalty)
    logits[idx] = torch.where(seen[:, :-1], penalised, sub)


def _presence_frequency_(logits: torch.Tensor, rows: Sequence[SamplingRow], which: list[int]) -> None:
    """OpenAI presence / frequency penalties over the output tokens, in place:
    logit -= presence * (count > 0) + frequency * count."""
    idx = to_device(which, logits.device)
    row_t, tok_t = _token_index(logits, [rows[i].output_token_ids for i in which])
    counts = torch.zeros(len(which), logits.shape[-1] + 1, dtype=torch.float32, device=logits.device)  # [R, V+1]
    counts.index_put_((row_t, tok_t), torch.ones_like(tok_t, dtype=torch.float32), accumulate=True)
    counts = counts[:, :-1]                                                      # [R, V]
    presence = to_device([rows[i].params.presence_penalty for i in which],
                         logits.device, torch.float32)[:, None]  # [R, 1]
    frequency = to_device([rows[i].params.frequency_penalty for i in which],
                          logits.device, torch.float32)[:, None]
    logits[idx] = logits[idx] - (presence * (counts > 0) + frequency * counts)


def _banned(rows: Sequence[SamplingRow], vocab: int) -> tuple[list[int], list[int]]:
    """(row, token) pairs that must get -inf this step.

    End ids while fewer than min_tokens tokens exist; the last token of each
    bad word whose other tokens end the sequence (a one-token word: always).
    """
    ban_rows: list[int] = []
    ban_tokens: list[int] = []
    for i, row in enumerate(rows):
        params = row.params
        banned = list(params.end_ids) if row.step < params.min_tokens else []
        banned += [word[-1] for word in params.bad_token_ids
                   if _ends_with(row.prompt_token_ids, row.output_token_ids, word[:-1])]
        banned = [t for t in banned if 0 <= t < vocab]
        ban_rows += [i] * len(banned)
        ban_tokens += banned
    return ban_rows, ban_tokens


def _ends_with(prompt: Sequence[int], output: Sequence[int], suffix: Sequence[int]) -> bool:
    """Whether prompt + output ends with `suffix`, without concatenating the two."""
    m = len(suffix)
    if m == 0:
        return True
    if len(prompt) + len(output) < m:
        return False
    from_output = min(m, len(output))
    from_prompt = m - from_output
    tail = list(prompt[len(prompt) - from_prompt:]) if from_prompt else []
    tail += list(output[len(output) - from_output:]) if from_output else []
    return tail == list(suffix)
