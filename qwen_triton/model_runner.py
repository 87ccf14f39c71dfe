"""The only module that touches the device: packs a step's tokens into
tensors, runs the model over the paged KV cache, samples, and brings back to
the host the context / generation logits requests asked for (step_logits.py
decides which rows go through the lm_head).

Switchable steps on top of the plain model (EngineConfig):
  attention_backend  "torch" (reference) or "triton" (flash prefill, Triton decode)
  layer_kernels      "torch" (reference) or "triton" (fused norm, rotary, silu-mul)
  enforce_eager      False: decode-only steps replay CUDA graphs captured per
                     bucketed batch size (GPU with a graph-capable backend)
On a GPU the KV pool is sized after a warm-up forward pass. kv_cache_dtype int8 /
fp8 makes each layer's cache a QuantKVCache (1-byte codes and float32 scales).

Tensor parallel (qwen_triton/distributed): each rank runs a ModelRunner over its `shard` of the model
and its own KV heads' cache. Every call that runs collectives after start-up goes through three seams,
`run_eager`, `run_graph` and `logits`, which rank 0's runner (distributed/leader.py) first sends to the
other ranks; start-up (weights, warm-up, KV pool, graph capture) runs alike on every rank by itself.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .attention import KVCache, get_attention_backend
from .attention.kv_quant import KVCacheSpec, check_calibrated_scales, new_kv_cache, resolve_kv_spec
from .config import EngineConfig, ModelConfig
from .cuda_graphs import DecodeGraphs, PrefillGraphs, graph_batch_sizes
from .guided import fill_token_mask
from .host_batch import HostBatch, prepare_host
from .host_batch import dummy_prefill as _dummy_prefill
from .models import load_model
from .models.layers import get_layer_ops
from .models.sharding import SINGLE, Shard
from .outputs import SampledToken, StepOutput
from .quant.spec import kv_cache_settings, read_quant_spec
from .sampler import Sampler, SamplingRow
from .sampling_params import SamplingParams
from .scheduler import ScheduledSeq, SchedulerOutput
from .step_logits import LOGITS_ROWS, LogitsFn, LogitsPlan, context_logits, generation_logits
from .transfer import to_device

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    dtype: torch.dtype


def resolve_device(config: EngineConfig) -> DeviceSettings:
    """"auto" picks the GPU when there is one; dtype "auto" is bf16 there, fp32 on the CPU."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif config.dtype in _DTYPES:
        dtype = _DTYPES[config.dtype]
    else:
        raise ValueError(f"unknown dtype {config.dtype!r}; expected auto, {', '.join(_DTYPES)}")
    return DeviceSettings(device, dtype)


def kv_block_bytes(model: ModelConfig, block_size: int, kv: KVCacheSpec | torch.dtype,
                   shard: Shard = SINGLE) -> int:
    """Bytes one block takes over all layers (keys and values, and their scales when quantized) on one
    rank (its KV heads); `kv` a torch dtype means a plain cache of that dtype."""
    spec = kv if isinstance(kv, KVCacheSpec) else KVCacheSpec(kv)
    return model.num_layers * block_size * spec.token_bytes(shard.num_kv_heads(model), model.head_dim)


# -- the runner ------------------------------------------------------------------------


@dataclass(frozen=True)
class Inflight:
    """A step queued on the device (ModelRunner.launch). `tokens` int64 [S] on the device holds the token
    each sampling chunk draws (row `sample_row[request_id]`), ready for the next step's inputs before the
    host has it; `finish()` waits for the step and returns its StepOutput."""

    out: SchedulerOutput
    sample_row: dict[str, int]
    tokens: torch.Tensor | None
    finish: Callable[[], StepOutput]


def _input_patch(scheduled: list[ScheduledSeq], cu: np.ndarray, prev: Inflight | None
                 ) -> tuple[np.ndarray, torch.Tensor] | None:
    """The packed rows whose input id is a token `prev` samples (a chunk's last row), and those tokens
    gathered on the device; None when every id is known."""
    pending = [i for i, s in enumerate(scheduled) if s.num_pending_inputs]
    if not pending:
        return None
    if prev is None or prev.tokens is None:
        raise RuntimeError("a step needs tokens of a step that is not in flight")
    rows = cu[np.asarray(pending) + 1].astype(np.int64) - 1  # [P]
    src = [prev.sample_row[scheduled[i].request_id] for i in pending]
    if src == list(range(len(prev.sample_row))):  # every token, in order: the usual decode step
        return rows, prev.tokens
    return rows, prev.tokens[to_device(src, prev.tokens.device)]


class ModelRunner:
    """Holds the model weights and the KV cache; runs one scheduled step.

    `shard`: this rank's part of a tensor-parallel model (models/sharding.py); the runner then holds its
    part of the weights and the KV cache of its KV heads. model_config stays the whole model's."""

    def __init__(self, model_path: str, model_config: ModelConfig, config: EngineConfig,
                 max_model_len: int, shard: Shard = SINGLE):
        self.model_config = model_config
        self.shard = shard
        self.config = config
        self.settings = resolve_device(config)
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        device = self.settings.device
        backend = get_attention_backend(config.attention_backend, device)
        ops = get_layer_ops(config.layer_kernels, device)
        self.kv_spec = resolve_kv_spec(*kv_cache_settings(read_quant_spec(model_path), config.kv_cache_dtype,
                                                          config.kv_cache_scales), self.settings.dtype)
        if (self.kv_spec.dtype == torch.float8_e4m3fn and backend.name == "triton" and device.type == "cuda"
                and torch.cuda.get_device_capability(device) < (8, 9)):
            raise ValueError("kv_cache_dtype=fp8 needs compute capability 8.9+ (Ada, Hopper) for Triton's fp8; "
                             "use kv_cache_dtype=int8")
        self.model = load_model(model_path, model_config, self.settings.dtype, device, backend, ops, shard=shard)
        if self.kv_spec.scales == "calibrated":  # the loader leaves NaN where the checkpoint has none
            check_calibrated_scales([layer.self_attn.kv_scale for layer in self.model.layers])
        self.num_blocks = self._pool_size(max_model_len)
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)
        self.sampler = Sampler()
        self.graphs = self._capture_graphs(backend)
        self.prefill_graphs = self._capture_prefill_graphs(backend)
        pool_bytes = self.num_blocks * kv_block_bytes(model_config, self.block_size, self.kv_spec, shard)
        log.info("model runner: %s %s, attention %s, kernels %s, KV cache %s: %d blocks of %d tokens "
                 "(%.2f GiB), graphs %s%s", device, self.settings.dtype, backend.name, ops.name, self.kv_spec.name,
                 self.num_blocks, self.block_size, pool_bytes / 2**30,
                 (sorted(self.graphs.graphs), sorted(self.prefill_graphs.graphs) if self.prefill_graphs else "off")
                 if self.graphs else "off",
                 f", tensor-parallel rank {shard.rank} of {shard.size}" if shard.parallel else "")

    def close(self) -> None:
        """Release what outlives the runner (tensor parallel: the other ranks' processes). Idempotent."""

    # -- setup ---------------------------------------------------------------

    def _pool_size(self, max_model_len: int) -> int:
        cfg = self.config
        if cfg.num_kv_blocks is not None:
            return cfg.num_kv_blocks
        per_block = kv_block_bytes(self.model_config, cfg.block_size, self.kv_spec, self.shard)
        if self.settings.device.type == "cuda":
            budget = self._gpu_kv_budget()
        else:
            wanted = cfg.max_num_seqs * -(-max_model_len // cfg.block_size) * per_block
            budget = min(wanted, cfg.kv_cache_max_bytes)
        num = budget // per_block
        if num < 1:
            raise ValueError("no room for a single KV block; lower block_size or free memory")
        # tensor parallel: every rank's pool holds the same blocks (each its own KV heads' share of them)
        return self.shard.comm.min_int(num) if self.shard.parallel else num

    def _gpu_kv_budget(self) -> int:
        """kv_cache_memory_fraction of the device memory left once the weights are
        loaded and a warm-up step's peak activations are set aside."""
        device = self.settings.device
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        self._warm_up()
        torch.cuda.synchronize(device)
        activations = torch.cuda.max_memory_allocated(device) - before
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(free - activations, 0) * self.config.kv_cache_memory_fraction)

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """A forward pass of max_num_batched_tokens prompt tokens (into a scratch
        cache shared by every layer) plus logits and a softmax for max_num_seqs rows:
        the largest step the engine will run. Compiles the kernels too."""
        cfg, m = self.config, self.model_config
        total = cfg.max_num_batched_tokens
        seq_len = max(min(total, self.max_model_len - 1), 1)
        lens = [seq_len] * (total // seq_len) + ([total % seq_len] if total % seq_len else [])
        blocks = -(-total // self.block_size) + len(lens)
        scratch = self._new_cache(blocks, 0)
        host = _dummy_prefill(lens, self.block_size)
        hidden = self.model(host.to_device(self.settings.device, self.block_size), [scratch] * m.num_layers)
        rows = min(cfg.max_num_seqs, hidden.shape[0])
        logits = self.model.compute_logits(hidden[:rows])
        torch.softmax(logits, dim=-1).argmax(dim=-1)

    def _allocate_kv_cache(self, num_blocks: int) -> list[KVCache]:
        return [self._new_cache(num_blocks, i) for i in range(self.model_config.num_layers)]

    def _new_cache(self, num_blocks: int, layer: int) -> KVCache:
        """A zeroed cache for `layer`: a tensor [2, num_blocks, block_size, Hkv, D] in the model's
        dtype, or a QuantKVCache (calibrated: over the layer's kv_scale buffer)."""
        m = self.model_config
        scales = self.model.layers[layer].self_attn.kv_scale if self.kv_spec.scales == "calibrated" else None
        return new_kv_cache(self.kv_spec, num_blocks, self.block_size, self.shard.num_kv_heads(m), m.head_dim,
                            self.settings.device, scales)

    @torch.inference_mode()
    def _capture_graphs(self, backend) -> DecodeGraphs | None:
        if (self.config.enforce_eager or self.settings.device.type != "cuda"
                or not backend.supports_cuda_graphs):
            return None
        max_batch = min(self.config.max_num_seqs, self.config.cuda_graph_max_batch)
        max_blocks = -(-self.max_model_len // self.block_size)
        graphs = DecodeGraphs(self.model, self.kv_caches, max_batch, max_blocks, self.block_size,
                              self.settings.device)
        graphs.capture(graph_batch_sizes(max_batch))
        return graphs

    @torch.inference_mode()
    def _capture_prefill_graphs(self, backend) -> PrefillGraphs | None:
        """Steps with prompt tokens up to cuda_graph_max_prefill_tokens, when decode steps have graphs too.
        Not under tensor parallelism: a replay would need its own seam to the other ranks."""
        cfg = self.config
        limit = min(cfg.cuda_graph_max_prefill_tokens, cfg.max_num_batched_tokens)
        if self.graphs is None or limit < 1 or self.shard.parallel or not hasattr(backend, "forward_graphed"):
            return None
        graphs = PrefillGraphs(self.model, self.kv_caches, limit, cfg.max_num_seqs,
                               -(-self.max_model_len // self.block_size), self.block_size, self.settings.device)
        graphs.capture()
        return graphs

    # -- one step ------------------------------------------------------------

    def execute(self, out: SchedulerOutput) -> StepOutput:
        """Compute every scheduled chunk; sample for chunks that reach their end;
        bring back to the CPU the tokens and the logits requests asked for."""
        return self.launch(out).finish()

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, prev: Inflight | None = None) -> Inflight:
        """Queue a step on the device and return before its tokens reach the host. Chunks whose last
        input token is the one `prev` (the step in flight before it) samples take it on the device."""
        host = prepare_host(out.scheduled, self.block_size)
        host.input_patch = _input_patch(out.scheduled, host.cu, prev)
        plan = LogitsPlan.build(out.scheduled, host.cu)
        logits_of = self._forward(host, graphs=not plan.context)
        sample_logits = logits_of(plan.sample_rows) if plan.samplers else None  # float32 [S, vocab]
        context = context_logits(plan, logits_of, sample_logits, self.model_config.vocab_size)
        if not plan.samplers:
            return Inflight(out, {}, None, lambda: StepOutput({}, context))
        rows = [SamplingRow(s.params, s.seed, s.prompt_token_ids, s.output_token_ids, s.num_pending_outputs)
                for s in plan.samplers]
        raw = generation_logits(plan, sample_logits)  # before the grammar mask writes sample_logits
        # host work: on a GPU it overlaps the forward pass queued above
        mask = fill_token_mask([s.grammar for s in plan.samplers], self.model_config.vocab_size)
        sample = self.sampler.launch(sample_logits, rows, mask)

        def finish() -> StepOutput:
            tokens = sample.results()
            return StepOutput({s.request_id: SampledToken(t.token_id, t.logprob, r, t.top_logprobs)
                               for s, t, r in zip(plan.samplers, tokens, raw)}, context)
        return Inflight(out, {s.request_id: i for i, s in enumerate(plan.samplers)}, sample.tokens, finish)

    def _forward(self, host: HostBatch, graphs: bool = True) -> LogitsFn:
        """Run the step (a graph replay, or eager when no graph fits or `graphs` is off: a step whose
        requests want logits of other rows than the sampling ones); return what turns packed token rows
        into their float32 logits."""
        dev = self.settings.device
        size = self.graphs.bucket(host.num_seqs) if graphs and self.graphs and host.is_decode_only else None
        key = None
        if size is None and graphs and self.prefill_graphs and not host.is_decode_only:
            key = self.prefill_graphs.bucket(len(host.ids), host.num_seqs)
        if size is None and key is None:
            hidden = self.run_eager(host)  # [T, hidden]
            return lambda rows: self.logits(hidden, rows)
        # [B, vocab], row i the logits of sequence i's last token (a decode step's every row: T == B)
        logits = self.run_graph(host, size) if size is not None else self.prefill_graphs.run(host, key)
        last_rows = host.cu[1:].astype(np.int64) - 1  # [B]

        def from_graph(rows: np.ndarray) -> torch.Tensor:
            # rows are distinct last rows in increasing order, so B of them are all of them, in order
            if len(rows) == host.num_seqs:
                return logits
            return logits[to_device(np.searchsorted(last_rows, rows), dev)]
        return from_graph

    # The three seams that run collectives under tensor parallelism (the module docstring).

    def run_eager(self, host: HostBatch) -> torch.Tensor:
        """The model over one step's packed tokens: final hidden states [T, hidden]."""
        return self.model(host.to_device(self.settings.device, self.block_size), self.kv_caches)

    def run_graph(self, host: HostBatch, size: int) -> torch.Tensor:
        """A decode step replayed from the graph of batch `size`: float32 logits [B, vocab]."""
        return self.graphs.run(host, size)

    def logits(self, hidden: torch.Tensor, rows: np.ndarray | slice) -> torch.Tensor:
        """float32 logits [r, vocab] of the packed rows `rows` (int64 [r], increasing) of `hidden`."""
        index = rows if isinstance(rows, slice) else to_device(rows, self.settings.device)
        return self.model.compute_logits(hidden[index])

    @torch.inference_mode()
    def score(self, token_ids: list[int], block_table: list[int], chunk_size: int) -> list[float]:
        """log p(token i | tokens < i) for i = 1 .. n - 1 of one fresh sequence (LLMEngine.score).

        The sequence runs as prefill chunks of at most `chunk_size` tokens with
        its KV in `block_table` (which must hold n tokens), through the same
        prepare_host -> model -> compute_logits path as execute(); logits are
        computed LOGITS_ROWS rows at a time to bound memory at large vocabularies.
        """
        dev = self.settings.device
        targets = torch.tensor(token_ids[1:], dtype=torch.int64, device=dev)  # [n - 1]
        params = SamplingParams(max_tokens=1)
        out: list[torch.Tensor] = []
        for start in range(0, len(token_ids), chunk_size):
            chunk = ScheduledSeq("score", token_ids[start:start + chunk_size], start, block_table, False,
                                 params, 0, token_ids, [])
            hidden = self.run_eager(prepare_host([chunk], self.block_size))  # [t, hidden]
            num = hidden.shape[0]
            for row in range(0, num, LOGITS_ROWS):
                want = targets[start + row:start + min(row + LOGITS_ROWS, num)]  # what these rows predict
                logits = self.logits(hidden, slice(row, row + len(want)))  # float32 [r, vocab]
                out.append(torch.log_softmax(logits, dim=-1).gather(1, want[:, None])[:, 0])
        return torch.cat(out).tolist() if out else []
