"""Turns one step's logits into tokens, each row under its own SamplingParams.

Pipeline, in the order transformers applies its processors:

    grammar     guided rows only: tokens their grammar forbids -> -inf, in
                place (guided.py); nothing after it can lift a -inf
    logit_bias  fixed per-token additions to the raw logits (as TensorRT-LLM's
                embedding_bias)
    penalties   repetition (prompt + output), presence / frequency (output),
                min_tokens (end ids -> -inf), bad words (completions -> -inf)
                (penalties.py)
    greedy rows argmax of the penalised logits
    other rows  temperature -> top-k -> top-p -> seeded draw
    scores      rows asking for logprobs: log_softmax of the penalised (and
                temperature-scaled) logits at the chosen token; rows asking
                for top_logprobs: the top-k of that same log_softmax

Every random draw uses a generator seeded from (request seed, step index)
only, so a request's tokens do not depend on which other rows share its batch,
on their order, or on whether it was preempted and recomputed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .guided import TokenMask, apply_token_mask_
from .outputs import SampledToken, TopLogprobs
from .penalties import apply_logit_bias, apply_penalties
from .sampling_params import SamplingParams
from .transfer import to_device

_MASK64 = (1 << 64) - 1
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingRow:
    """One row of the logits: one sequence that samples a token this step."""

    params: SamplingParams
    seed: int                          # resolved seed (drawn by the engine if params.seed is None)
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]    # generated so far and known on the host
    num_pending: int = 0               # tokens before this one still in flight (async scheduling)

    @property
    def step(self) -> int:
        """This token's index in the output."""
        return len(self.output_token_ids) + self.num_pending


class Sampler:
    """Samples one token per row of a float32 [N, vocab] logits tensor.

    `logprob` is the chosen token's log_softmax over the logits *after*
    penalties and temperature but *before* top-k / top-p filtering (for greedy
    rows: over the penalised logits, no temperature). That is the model's
    scaled distribution, so it stays comparable across different top-k / top-p
    settings and is never -inf for a token that could be chosen. For a guided
    row it is taken after the grammar mask (over the tokens the grammar allows).
    A row whose params ask for `top_logprobs` k > 0 also gets the k most probable
    tokens of that same log_softmax (one topk over those rows only), so the
    chosen token's logprob is exactly its entry there when it is among them.

    The caller's logits tensor is never modified, except by the grammar mask:
    guided rows' forbidden tokens become -inf in place, so that a step with a
    guided row copies no [N, vocab] tensor (the runner takes the raw
    generation logits before sampling).
    """

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow],
                 mask: TokenMask | None = None) -> list[SampledToken]:
        """`mask`: the grammar masks of the guided rows (guided.fill_token_mask), None if there are none;
        it is applied to `logits` in place."""
        return self.launch(logits, rows, mask).results()

    def launch(self, logits: torch.Tensor, rows: Sequence[SamplingRow],
               mask: TokenMask | None = None) -> DeviceSample:
        """Queue the sampling on the device; the tokens come to the host in the background
        (`DeviceSample.results` waits for them)."""
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, vocab], got {tuple(logits.shape)}")
        if not rows:
            return DeviceSample([], torch.empty(0, dtype=torch.long), None, None, 0, None)
        if mask is not None:
            apply_token_mask_(logits, mask)  # in place, only the rows it lists
        logits = apply_penalties(apply_logit_bias(logits.float(), rows), rows)  # [N, V]
        device = logits.device
        tokens = torch.empty(len(rows), dtype=torch.long, device=device)       # [N]
        scores = _Scores(rows, device)

        greedy = [i for i, r in enumerate(rows) if r.params.greedy]
        if greedy:
            # all rows greedy (the common serving case): a view, no gather of [N, V]
            idx = slice(None) if len(greedy) == len(rows) else to_device(greedy, device)
            basis = logits[idx]                                      # [G, V]
            tokens[idx] = chosen = basis.argmax(dim=-1)              # ties -> lowest id
            scores.add(greedy, idx, basis, chosen)

        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled:
            idx = to_device(sampled, device)
            sub_rows = [rows[i] for i in sampled]
            basis = apply_temperature_(logits[idx], [r.params.temperature for r in sub_rows])  # [S, V]
            filtered = basis.clone() if any(r.params.logprobs for r in sub_rows) else basis
            apply_top_k_(filtered, [r.params.top_k for r in sub_rows])
            apply_top_p_(filtered, [r.params.top_p for r in sub_rows])
            tokens[idx] = chosen = draw(filtered, [(r.seed, r.step) for r in sub_rows])
            scores.add(sampled, idx, basis, chosen)
        return scores.stage(tokens)


class DeviceSample:
    """One step's sampled tokens: `tokens` int64 [N] on the device (what the next step's inputs can be
    taken from), and their copy on its way to the host with the log probabilities asked for."""

    def __init__(self, rows: Sequence[SamplingRow], tokens: torch.Tensor, ids_host: torch.Tensor | None,
                 lps_host: torch.Tensor | None, kmax: int, ready: torch.cuda.Event | None,
                 top_rows: Sequence[int] = ()):
        self.rows, self.tokens, self.kmax, self.top_rows = rows, tokens, kmax, top_rows
        self._ids, self._lps, self._ready = ids_host, lps_host, ready

    def results(self) -> list[SampledToken]:
        """One SampledToken per row (waits for the device copy)."""
        if self._ready is not None:
            self._ready.synchronize()
        rows, n, kmax = self.rows, len(self.rows), self.kmax
        if not rows:
            return []
        ids_host = self._ids.numpy()
        lps_host = self._lps.numpy() if self._lps is not None else None
        tops: dict[int, TopLogprobs] = {}
        for a, i in enumerate(self.top_rows):
            k, at = min(rows[i].params.top_logprobs, kmax), n + a * kmax
            tops[i] = TopLogprobs(ids_host[at:at + k].astype(np.int32)[None], lps_host[at:at + k][None])
        return [SampledToken(int(ids_host[i]), float(lps_host[i]) if r.params.logprobs else None,
                             top_logprobs=tops.get(i)) for i, r in enumerate(rows)]


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` in pinned host memory, queued on the current stream (CPU tensors: a copy)."""
    if tensor.device.type != "cuda":
        return tensor.clone()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


class _Scores:
    """The log probabilities one step returns: each chosen token's ([N], for the rows that ask) and the
    top-k of the rows that ask for top_logprobs. Rows that ask for neither cost nothing here."""

    def __init__(self, rows: Sequence[SamplingRow], device: torch.device):
        self.rows = rows
        self.logprobs = torch.zeros(len(rows), dtype=torch.float32, device=device)  # [N]
        self.top_rows: list[int] = []            # rows asking for top_logprobs, in the order of top_parts
        self.top_parts: list[torch.Tensor] = []  # their log_softmax rows, [R_i, V] each

    def add(self, which: list[int], idx, basis: torch.Tensor, chosen: torch.Tensor) -> None:
        """Rows `which` (indexed by `idx` in [N]) chose `chosen` [R] from the distribution `basis` [R, V]."""
        if not any(self.rows[i].params.logprobs for i in which):
            return
        log_probs = torch.log_softmax(basis, dim=-1)                             # [R, V]
        self.logprobs[idx] = log_probs.gather(1, chosen[:, None]).squeeze(1)
        ask = [j for j, i in enumerate(which) if self.rows[i].params.top_logprobs]
        if ask:
            self.top_rows += [which[j] for j in ask]
            self.top_parts.append(log_probs if len(ask) == len(which)
                                  else log_probs[to_device(ask, basis.device)])

    def stage(self, tokens: torch.Tensor) -> DeviceSample:
        """Start the host copy: one transfer of ids and one of log probabilities: the chosen tokens [N]
        followed by the top-k ids [A * k], the chosen logprobs [N] followed by the top-k logprobs [A * k]
        (A rows asking, k the most any of them asks for)."""
        rows = self.rows
        ids, lps, kmax = tokens, self.logprobs, 0
        if self.top_parts:
            log_probs = torch.cat(self.top_parts) if len(self.top_parts) > 1 else self.top_parts[0]  # [A, V]
            kmax = min(max(rows[i].params.top_logprobs for i in self.top_rows), log_probs.shape[-1])
            top_lps, top_ids = log_probs.topk(kmax, dim=-1)                      # [A, kmax], descending
            ids, lps = torch.cat([tokens, top_ids.flatten()]), torch.cat([lps, top_lps.flatten()])
        any_logprobs = any(r.params.logprobs for r in rows)
        ids_host = _to_host(ids)
        lps_host = _to_host(lps) if any_logprobs else None
        ready = None
        if tokens.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return DeviceSample(rows, tokens, ids_host, lps_host, kmax, ready, self.top_rows)


# ---------------------------------------------------------------------- warpers
# These work in place on the sampler's own copy of the logits and return it.

def apply_temperature_(logits: torch.Tensor, temperature: Sequence[float]) -> torch.Tensor:
    """logits [R, V] /= temperature[r] (all > 0), like TemperatureLogitsWarper."""
    t = to_device(temperature, logits.device, torch.float32)    # [R]
    return logits.div_(t[:, None])


def apply_top_k_(logits: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    """TopKLogitsWarper per row: -inf below the row's k-th largest logit (ties
    with it survive); k == 0 leaves the row untouched. logits: [R, V]."""
    vocab = logits.shape[-1]
    which = [i for i, k in enumerate(top_k) if k > 0]
    if not which:
        return logits
    ks = [min(top_k[i], vocab) for i in which]
    idx = to_device(which, logits.device)
    sub = logits[idx]                                                            # [R', V]
    top = sub.topk(max(ks), dim=-1).values                                       # [R', kmax], descending
    kth = top.gather(1, to_device(ks, logits.device)[:, None] - 1)     # [R', 1]
    logits[idx] = sub.masked_fill(sub < kth, _NEG_INF)
    return logits


def apply_top_p_(logits: torch.Tensor, top_p: Sequence[float]) -> torch.Tensor:
    """TopPLogitsWarper per row: keep the smallest set of most probable tokens
    whose probability sums to >= top_p (always at least the top one); top_p
    == 1 leaves the row untouched. logits: [R, V]."""
    which = [i for i, p in enumerate(top_p) if p < 1.0]
    if not which:
        return logits
    device = logits.device
    idx = to_device(which, device)
    sub = logits[idx]                                                            # [R', V]
    sorted_logits, order = sub.sort(dim=-1)                                      # ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)                           # [R', V]
    # 1 - p is computed in double then rounded once, exactly as transformers does.
    cutoff = to_device([1.0 - top_p[i] for i in which], device, torch.float32)
    drop_sorted = cum <= cutoff[:, None]                                         # [R', V]
    drop_sorted[:, -1] = False                                                   # keep the most probable
    drop = drop_sorted.scatter(1, order, drop_sorted)                            # back to vocab order
    logits[idx] = sub.masked_fill(drop, _NEG_INF)
    return logits


# ------------------------------------------------------------------ randomness

def splitmix64(x: int) -> int:
    """SplitMix64 finaliser: a bijective 64-bit mix (Steele et al., 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int) -> int:
    """Generator seed for one draw of one request: a 64-bit mix of (seed, step),
    so neighbouring seeds or steps give unrelated streams.

    (The CPU generator, an MT19937, keeps only the low 32 bits; CUDA's
    Philox uses all 64.)"""
    return splitmix64(splitmix64(seed & _MASK64) ^ step)


def draw(logits: torch.Tensor, seeds: Sequence[tuple[int, int]]) -> torch.Tensor:
    """One token per row of logits [R, V] from softmax(logits), seeded per row.

    Exponential race: with E_i ~ Exp(1) i.i.d., argmax_i p_i / E_i is token i
    with probability p_i. In log space that is argmax_i (logit_i - log E_i),
    which needs no softmax and leaves -inf (filtered) tokens unreachable. Row
    r's noise comes from a generator seeded by step_seed(*seeds[r]) alone and
    every op after it is elementwise or a per-row argmax, so the result does
    not depend on the other rows. Returns [R] long.
    """
    gen = torch.Generator(device=logits.device)
    noise = torch.empty_like(logits)                                             # [R, V]
    for r, (seed, step) in enumerate(seeds):
        gen.manual_seed(step_seed(seed, step))
        noise[r].exponential_(generator=gen)
    # E may round to 0 in float32; the clamp keeps log E finite so -inf stays -inf.
    noise.clamp_(min=torch.finfo(noise.dtype).tiny).log_()
    return (logits - noise).argmax(dim=-1)
