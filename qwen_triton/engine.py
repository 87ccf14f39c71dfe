"""The engine: requests in, tokens out, one step at a time.

request -> validation -> Scheduler (which tokens run) -> ModelRunner (model +
sampler on the device) -> Scheduler.update (append, stop, free) -> RequestOutput.
Single-threaded; `BackgroundEngine` (background.py) runs it on a thread.
"""
from __future__ import annotations

import collections
import itertools
import logging
import operator
import random
import time
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

import torch

from .block_manager import BlockManager
from .config import EngineConfig, ModelConfig
from .distributed import make_runner
from .errors import DuplicateRequestError, EngineDeadError, InvalidRequestError
from .guided import GuidedDecoding
from .models import load_model_config
from .models.decoder import qwen_ntk_alpha
from .outputs import EngineStats, RequestOutput
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput
from .sequence import FinishReason, Sequence

if TYPE_CHECKING:
    from .chat import Tokenizer
    from .model_runner import Inflight

log = logging.getLogger(__name__)


class LLMEngine:
    """Inflight-batching engine over one model.

    >>> engine = LLMEngine("path/to/checkpoint")
    >>> engine.add_request("r1", [1, 2, 3], SamplingParams(max_tokens=8, temperature=0))
    >>> while engine.has_unfinished_requests():
    ...     for out in engine.step():
    ...         print(out.request_id, out.new_token_ids, out.finished)

    `tokenizer`: the checkpoint's chat tokenizer, whose vocabulary guided requests
    (SamplingParams.guided_decoding) are compiled against; None loads the one in
    model_path on the first guided request.
    """

    def __init__(self, model_path: str, config: EngineConfig | None = None, tokenizer: Tokenizer | None = None):
        self.config = config or EngineConfig()
        self.model_config: ModelConfig = load_model_config(model_path)
        self.max_model_len = self._max_model_len()
        self.runner = make_runner(model_path, self.model_config, self.config, self.max_model_len)
        blocks = BlockManager(self.runner.num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.scheduler = Scheduler(blocks, self.config.max_num_seqs,
                                   self.config.max_num_batched_tokens, self.max_model_len)
        self._arrivals = itertools.count()
        self._seeds = random.Random()
        self._pending: list[RequestOutput] = []  # abort reports for the next step()
        self._inflight: Inflight | None = None  # the step launched ahead (async scheduling)
        mode = self.config.async_scheduling
        self._async = self.config.tensor_parallel_size == 1 and (
            mode == "on" or (mode == "auto" and self.runner.settings.device.type == "cuda"))
        self._num_steps = 0
        self._num_generated = 0
        self._num_admitted = 0
        self._ended: collections.Counter[str] = collections.Counter()  # finish reason -> requests
        self.guided = GuidedDecoding(lambda: tokenizer or _load_tokenizer(model_path), self.model_config.vocab_size)

    def _max_model_len(self) -> int:
        limit = self.config.max_model_len
        native = self.model_config.max_position
        if limit is None:
            return native
        if limit > native and not self.model_config.dynamic_ntk:
            raise ValueError(f"max_model_len {limit} exceeds the model's context {native}")
        return limit

    # -- requests ------------------------------------------------------------

    def validate(self, prompt_token_ids: Seq[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError if this request can never run. Read-only."""
        n = len(prompt_token_ids)
        if n == 0:
            raise InvalidRequestError("prompt", "is empty")
        vocab = self.model_config.vocab_size
        named = (("prompt", _as_token_ids(prompt_token_ids)), ("logit_bias", [t for t, _ in params.logit_bias]),
                 ("sampling", params.all_token_ids()))
        for field, ids in named:
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise InvalidRequestError(field, f"token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
        if n >= self.max_model_len:
            raise InvalidRequestError(
                "prompt", f"{n} tokens leave no room to generate in the context of {self.max_model_len}")
        if n + params.max_tokens > self.max_model_len:
            raise InvalidRequestError(
                "max_tokens", f"{params.max_tokens} after a {n}-token prompt exceeds the context of "
                f"{self.max_model_len} (at most {self.max_model_len - n})")
        blocks = self.scheduler.blocks
        need = blocks.blocks_for(n + params.max_tokens)
        if need > blocks.num_blocks:
            raise InvalidRequestError(
                "max_tokens", f"the request needs {need} KV blocks, the pool has {blocks.num_blocks}")
        self._check_logits_size(n, params)
        if params.guided_decoding is not None:
            self.guided.compile(params.guided_decoding)  # cached: add_request compiles it again for free

    def _check_logits_size(self, prompt_len: int, params: SamplingParams) -> None:
        """Context / generation logits are float32 [tokens, vocab] held on the host: cap them."""
        cap, row = self.config.max_logits_bytes, self.model_config.vocab_size * 4
        wanted = (("return_context_logits", params.return_context_logits, prompt_len, "prompt"),
                  ("return_generation_logits", params.return_generation_logits, params.max_tokens, "max_tokens"))
        for name, asked, tokens, what in wanted:
            if asked and tokens * row > cap:
                raise InvalidRequestError(
                    name, f"{tokens} tokens ({what}) x {self.model_config.vocab_size} vocab x 4 bytes = "
                    f"{tokens * row} bytes exceed max_logits_bytes {cap} (at most {cap // row} tokens)")

    def add_request(self, request_id: str, prompt_token_ids: Seq[int], params: SamplingParams,
                    arrival_time_ns: int | None = None) -> None:
        """Queue a request; it joins the running batch at the next step.

        arrival_time_ns (time.time_ns) lets a caller date the request from when
        it reached the server; default now, and never later than now.
        """
        now = time.time_ns()
        if request_id in self.scheduler.requests:
            raise DuplicateRequestError(request_id)
        prompt = _as_token_ids(prompt_token_ids)
        self.validate(prompt, params)
        seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
        arrival = now if arrival_time_ns is None else min(arrival_time_ns, now)
        guide = params.guided_decoding
        grammar = self.guided.start(guide, params.end_ids) if guide is not None else None
        self.scheduler.add(Sequence(request_id, prompt, params, seed, next(self._arrivals), arrival_time_ns=arrival,
                                    grammar=grammar, cache_salt=self._cache_salt(len(prompt))))
        self._num_admitted += 1

    def _cache_salt(self, prompt_len: int) -> int:
        """What besides its tokens shapes a sequence's K/V: under the original Qwen's dynamic NTK, the RoPE
        base of every position depends on the prompt length through alpha (models/decoder.py
        qwen_ntk_alpha: 1 up to seq_length, 3 up to twice it, ...), so prefixes are shared only at equal
        alpha. 0 for every other model."""
        m = self.model_config
        if not m.dynamic_ntk or prompt_len <= m.seq_length:
            return 0
        # the model's own function, on the host: the salt is the alpha the forward pass will use
        return int(qwen_ntk_alpha(torch.tensor([prompt_len]), m.seq_length).item())

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; its final output comes
        from the next step(). Returns False if the id is not live."""
        out = self.scheduler.abort(request_id)
        if out is not None:
            self._pending.append(out)
        return out is not None

    def close(self) -> None:
        """Stop what the engine started besides its own thread: tensor-parallel worker processes."""
        self.runner.close()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished or bool(self._pending) or self._inflight is not None

    # -- stepping ------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one batch; return each touched request's new tokens.

        With async scheduling the next batch is scheduled and launched before this
        one's tokens are waited for, so the device never waits for the host: each
        call returns the step launched by the call before it (or by itself when
        nothing was in flight) and leaves the next one running."""
        outputs, self._pending = self._pending, []
        current, self._inflight = self._inflight, None
        if current is None:
            current = self._launch(self.scheduler.schedule(), None, outputs)
        if current is not None:
            if self._async and not self.scheduler.num_needing_outputs:
                self._inflight = self._launch(self.scheduler.schedule(), current, outputs)
            outputs += self._finish(current)
        self._ended.update(o.finish_reason for o in outputs if o.finished)
        return outputs

    def _launch(self, sched: SchedulerOutput, prev: Inflight | None, outputs: list[RequestOutput]
                ) -> Inflight | None:
        """Queue `sched` on the device (None if empty); a failure ends its requests into `outputs`."""
        if sched.is_empty:
            return None
        try:
            return self.runner.launch(sched, prev)
        except EngineDeadError:  # a tensor-parallel rank died: the engine cannot go on
            raise
        except Exception as exc:  # a failed step ends its requests, never the engine
            outputs += self._fail(sched, exc)
            return None

    def _finish(self, inflight: Inflight) -> list[RequestOutput]:
        try:
            result = inflight.finish()
        except EngineDeadError:
            raise
        except Exception as exc:
            return self._fail(inflight.out, exc)
        self._num_steps += 1
        new = self.scheduler.update(inflight.out, result.sampled, result.context_logits)
        self._num_generated += sum(len(o.new_token_ids) for o in new)
        return new

    def _fail(self, sched: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        """End the requests of a failed step. The KV it was writing may be half there: no cached prefix is
        trusted after it."""
        log.exception("engine step failed; ending the %d requests in it", len(sched.scheduled), exc_info=exc)
        self.scheduler.blocks.forget_prefixes()
        message = f"{type(exc).__name__}: {exc}"
        live = [self.scheduler.requests.get(s.request_id) for s in sched.scheduled]
        return [self.scheduler.finish(seq, FinishReason.ERROR, message) for seq, s in zip(live, sched.scheduled)
                if seq is not None and seq.arrival == s.seq_number]

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[list[int]]:
        """Run prompts to completion; return each one's output token ids."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"generate-{next(self._arrivals)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, params_list):
            self.add_request(rid, prompt, p)
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        while self.has_unfinished_requests():
            for out in self.step():
                if out.request_id in tokens:
                    tokens[out.request_id].extend(out.new_token_ids)
        return [tokens[rid] for rid in ids]

    def score(self, token_ids: Seq[int]) -> list[float]:
        """Teacher-forced log probabilities of a token sequence (perplexity, accuracy checks).

        Returns n - 1 floats for n tokens: element i - 1 is the natural-log
        log p(token_ids[i] | token_ids[:i]) from float32 logits, i = 1 .. n - 1.
        The tokens run as one fresh sequence through exactly the model code a
        prompt goes through (the runner's prefill over the paged KV cache,
        chunked at max_num_batched_tokens), keeping every position's logits
        instead of the last one's. Nothing is sampled and no request is created;
        the KV blocks come from the pool and are freed before it returns, so
        running requests are untouched. Call it from the thread that steps the
        engine (not while a BackgroundEngine drives it). At most max_model_len
        tokens: score longer texts in windows.
        """
        ids = _as_token_ids(token_ids)
        if not ids:
            raise InvalidRequestError("token_ids", "is empty")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError("token_ids", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(ids) > self.max_model_len:
            raise InvalidRequestError(
                "token_ids", f"{len(ids)} tokens exceed the context of {self.max_model_len}; score windows")
        blocks = self.scheduler.blocks
        need = blocks.blocks_for(len(ids))
        if need > blocks.num_free_blocks:
            raise InvalidRequestError(
                "token_ids", f"{len(ids)} tokens need {need} KV blocks, {blocks.num_free_blocks} are free")
        table = blocks.allocate(need)
        try:
            return self.runner.score(ids, table, self.config.max_num_batched_tokens)
        finally:
            blocks.free(table)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_running=len(s.running), num_waiting=len(s.waiting),
            num_free_blocks=s.blocks.num_free_blocks, num_total_blocks=s.blocks.num_blocks,
            num_steps=self._num_steps, num_preemptions=s.num_preemptions,
            max_running_seen=s.max_running_seen, num_generated_tokens=self._num_generated,
            num_admitted=self._num_admitted, num_finished=self._ended["stop"] + self._ended["length"],
            num_aborted=self._ended["abort"], num_failed=self._ended["error"],
            num_prefilling=sum(1 for seq in list(s.running) if seq.num_computed_tokens < seq.num_prompt_tokens),
            prefix_cache_queries=s.prefix_cache_queries, prefix_cache_hits=s.prefix_cache_hits,
            num_cached_blocks=s.blocks.num_cached_blocks)


def _load_tokenizer(model_path: str) -> Tokenizer:
    from .chat import load_tokenizer

    return load_tokenizer(model_path)


def _as_token_ids(tokens: Seq[int]) -> list[int]:
    """Token ids as Python ints (numpy and torch integers accepted)."""
    try:
        return [operator.index(t) for t in tokens]
    except TypeError:
        raise InvalidRequestError("prompt", "token ids must be integers") from None
