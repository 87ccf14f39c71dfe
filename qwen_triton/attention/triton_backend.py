"""Paged attention for CUDA: flash prefill, a Triton decode kernel, a Triton KV write.

One step's tokens fall in three groups, each sent to the kernel that suits it:
  - decode tokens (one query token of a sequence): the Triton paged decode
    kernel (kernels/paged_attention.py), split along the sequence;
  - fresh prefills (the whole sequence is in this step): flash attention over
    the packed sequences (torch.nn.attention.varlen), reading q, k, v straight
    from the projections;
  - prefill chunks after cached context (chunked prefill, a prefix-cache hit,
    recompute): the contexts of all of them gathered from the cache into one
    packed tensor, then flash attention over the packed sequences with query
    and key lengths apart (causal, aligned to each sequence's end); SDPA per
    sequence where varlen attention is not available.
With a QuantKVCache the write kernel quantizes, the decode kernel and the
context gather dequantize; fresh prefills attend over their unquantized k, v
(later steps see the quantized values: TensorRT-LLM and vLLM do the same).
A decode-only step touches only device tensors of the metadata, so it can be
captured in a CUDA graph; padded rows (slot -1, context length 0) write and
read nothing. `forward_graphed` does the same for a whole mixed step: the KV
write, the paged prefill kernel (kernels/paged_prefill.py) for every sequence
with more than one query token, reading its context and its own K/V from the
cache, and the decode kernel for the rest, with launches fixed by bucket sizes.

Reference: attention.torch_backend.TorchAttentionBackend (same contract);
tools/check_kernels_gpu.py compares the two on mixed batches.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import kv_cache as kv_kernels
from ..kernels.paged_attention import choose_launch, paged_decode_attention
from ..kernels.paged_prefill import choose_prefill_launch, paged_prefill_attention
from ..transfer import to_device
from . import AttentionMetadata, KVCache
from .kv_quant import gather_kv
from .torch_backend import context_slots

Index = slice | torch.Tensor  # rows of the packed batch: a range when contiguous


def _as_index(rows: list[int], device: torch.device) -> Index:
    """A slice when `rows` is one increasing run, else an int64 index tensor."""
    if rows and rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return to_device(rows, device, torch.int64)


@dataclass
class _StepPlan:
    """How one mixed step's tokens are split among the kernels (built once per step)."""

    decode_rows: Index | None  # packed rows of decode tokens [Nd]
    decode_tables: torch.Tensor | None  # int32 [Nd, max_blocks]
    decode_ctx: torch.Tensor | None  # int32 [Nd]
    fresh_rows: Index | None  # packed rows of fresh prefills [Tf]
    fresh_cu: torch.Tensor | None  # int32 [F + 1], cumulative lengths within fresh_rows
    fresh_lens: list[int]
    context: list[tuple[int, int, int]]  # (first row, query length Q, context length S) per chunk after context
    context_rows: Index | None = None  # packed rows of those chunks' queries [Tc]
    context_slots: torch.Tensor | None = None  # int64 [sum S]: their contexts' cache slots, packed
    context_cu_q: torch.Tensor | None = None  # int32 [C + 1]
    context_cu_k: torch.Tensor | None = None  # int32 [C + 1]


def build_plan(meta: AttentionMetadata, device: torch.device) -> _StepPlan:
    decode_seqs, decode_rows, fresh_rows, fresh_lens, context, slots = [], [], [], [], [], []
    start = 0
    for i, (num_q, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
        if num_q == 1:
            decode_seqs.append(i)
            decode_rows.append(start)
        elif num_q == seq_len and num_q > 1:
            fresh_rows.extend(range(start, start + num_q))
            fresh_lens.append(num_q)
        elif num_q > 1:
            slots.append(context_slots(meta.block_tables[i], seq_len, meta.block_size))
            context.append((start, num_q, seq_len))
        start += num_q
    plan = _StepPlan(None, None, None, None, None, fresh_lens, context)
    if decode_seqs:
        seqs = _as_index(decode_seqs, device)
        plan.decode_rows = _as_index(decode_rows, device)
        plan.decode_tables = meta.block_tables[seqs]
        plan.decode_ctx = meta.seq_lens[seqs]
    if fresh_lens:
        plan.fresh_rows = _as_index(fresh_rows, device)
        plan.fresh_cu = _cumulative(fresh_lens, device)
    if context:
        plan.context_rows = _as_index([r for first, num_q, _ in context for r in range(first, first + num_q)],
                                      device)
        plan.context_slots = torch.cat(slots)
        plan.context_cu_q = _cumulative([num_q for _, num_q, _ in context], device)
        plan.context_cu_k = _cumulative([seq_len for _, _, seq_len in context], device)
    return plan


def _cumulative(lengths: list[int], device: torch.device) -> torch.Tensor:
    """int32 [len + 1]: 0 and the running sums of `lengths`."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return to_device(cu, device, torch.int32)


class TritonAttentionBackend:
    """AttentionBackend for CUDA devices (fp16 / bf16; fp32 runs through SDPA's
    math path for prefill)."""

    name = "triton"
    supports_cuda_graphs = True

    def __init__(self, device: torch.device):
        device = torch.device(device)
        # off CUDA (Triton's interpreter, for tests) any count does: it only sets the split counts (8: the
        # tests' few heads split, so the split paths run there)
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        self.use_varlen = _varlen_kwargs() is not None  # turned off if the first call fails

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D] or a QuantKVCache
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, D]
        if meta.graph_query_len is not None:
            return self.forward_graphed(q, k, v, kv_cache, meta, scale, meta.graph_query_len)
        kv_kernels.write_kv_cache(kv_cache, k, v, meta.slot_mapping)
        if meta.is_decode_only:
            return self._decode(q, kv_cache, meta.block_tables, meta.seq_lens, scale)
        plan = meta.derived.get("triton_plan")
        if plan is None:
            plan = meta.derived["triton_plan"] = build_plan(meta, q.device)
        out = torch.empty_like(q)
        if plan.decode_rows is not None:
            out[plan.decode_rows] = self._decode(q[plan.decode_rows], kv_cache, plan.decode_tables,
                                                 plan.decode_ctx, scale)
        if plan.fresh_rows is not None:
            rows = plan.fresh_rows
            out[rows] = self._prefill(q[rows], k[rows], v[rows], plan, scale)
        if plan.context_rows is not None:
            rows = plan.context_rows
            out[rows] = self._after_context(q[rows], kv_cache, plan, scale)
        return out

    def forward_graphed(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D] or a QuantKVCache
        meta: AttentionMetadata,
        scale: float,
        max_query_len: int,  # >= every sequence's query length: the bucket's bound, not the step's
    ) -> torch.Tensor:  # [T, H, D]
        """A whole mixed step (prefills, chunks after cached context, decodes) with launches fixed
        by the bucket sizes (T, B = meta.seq_lens.shape[0], the block tables' width, max_query_len):
        reads only meta's device tensors (query_start_loc, seq_lens, block_tables, slot_mapping),
        never its *_cpu lists, so the step can be captured in a CUDA graph and replayed for any
        lengths that fit the bucket. KV write, then the paged prefill kernel for sequences with
        Q > 1, then the decode kernel for sequences with Q == 1.

        Padding: a sequence with seq_len 0 and one token (slot -1) gets a zero row, as in the
        decode graphs; tokens of no sequence (past query_start_loc[B]) and padding sequences with
        Q > seq_len get zero rows too. Unlike `forward`, a whole prompt over a QuantKVCache
        attends over its quantized K/V (read back from the cache), as its later steps do."""
        kv_kernels.write_kv_cache(kv_cache, k, v, meta.slot_mapping)
        # zeros: rows no kernel writes (padding) must stay finite for the layers after attention
        out = torch.zeros_like(q)
        if max_query_len > 1:
            # bucket sizes only: the heads, the SMs and the block tables' width (in positions) bound the splits
            launch = choose_prefill_launch(max_query_len, q.shape[2], q.dtype, num_heads=q.shape[1],
                                           num_sms=self.num_sms,
                                           max_context=meta.block_tables.shape[1] * meta.block_size)
            paged_prefill_attention(q, kv_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, scale,
                                    out=out, max_query_len=max_query_len, block_m=launch.block_m,
                                    block_n=launch.block_n, num_warps=launch.num_warps,
                                    num_stages=launch.num_stages, num_splits=launch.num_splits)
        decode = choose_launch(meta.seq_lens.shape[0], q.shape[1], self.num_sms)
        paged_decode_attention(q, kv_cache, meta.block_tables, meta.seq_lens, scale, num_splits=decode.num_splits,
                               block_n=decode.block_n, num_warps=decode.num_warps, num_stages=decode.num_stages,
                               v_with_k=decode.v_with_k, query_start_loc=meta.query_start_loc, out=out)
        return out

    def _decode(self, q, kv_cache, tables, ctx, scale):
        launch = choose_launch(q.shape[0], q.shape[1], self.num_sms)
        return paged_decode_attention(q, kv_cache, tables, ctx, scale, num_splits=launch.num_splits,
                                      block_n=launch.block_n, num_warps=launch.num_warps,
                                      num_stages=launch.num_stages, v_with_k=launch.v_with_k)

    def _prefill(self, q, k, v, plan: _StepPlan, scale):
        """Causal attention within each fresh sequence: q [Tf, H, D] -> [Tf, H, D]."""
        if self.use_varlen and q.dtype in (torch.float16, torch.bfloat16):
            try:
                return _varlen_causal(q, k, v, plan.fresh_cu, max(plan.fresh_lens), scale)
            except (RuntimeError, TypeError, NotImplementedError):
                self.use_varlen = False  # this torch build cannot: per-sequence SDPA from now on
        out = torch.empty_like(q)
        start = 0
        for n in plan.fresh_lens:
            out[start:start + n] = _sdpa_causal(q[start:start + n], k[start:start + n],
                                                v[start:start + n], scale)
            start += n
        return out


    def _after_context(self, q, kv_cache, plan: _StepPlan, scale):
        """Chunks after cached context: q [Tc, H, D], each chunk the last Q positions of its S -> [Tc, H, D]."""
        ctx_k, ctx_v = gather_kv(kv_cache, plan.context_slots)  # [sum S, Hkv, D]; float32 when dequantized
        ctx_k, ctx_v = ctx_k.to(q.dtype), ctx_v.to(q.dtype)
        if self.use_varlen and q.dtype in (torch.float16, torch.bfloat16):
            try:
                max_q = max(num_q for _, num_q, _ in plan.context)
                max_k = max(seq_len for _, _, seq_len in plan.context)
                # flash attention's causal mask is aligned to the bottom right when Q < S: query i of a
                # chunk sees keys up to position S - Q + i
                return _varlen_causal(q, ctx_k, ctx_v, plan.context_cu_q, max_q, scale,
                                      plan.context_cu_k, max_k)
            except (RuntimeError, TypeError, NotImplementedError):
                self.use_varlen = False
        out = torch.empty_like(q)
        row = key = 0
        for _, num_q, seq_len in plan.context:
            out[row:row + num_q] = _sdpa_causal(q[row:row + num_q], ctx_k[key:key + seq_len],
                                                ctx_v[key:key + seq_len], scale)
            row, key = row + num_q, key + seq_len
        return out


def _varlen_kwargs() -> dict | None:
    """Keyword arguments for causal varlen_attn in this torch version (None: not available)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        return {"is_causal": True}
    if "window_size" in params:
        return {"window_size": (-1, 0)}
    return None


def _varlen_causal(q, k, v, cu: torch.Tensor, max_len: int, scale: float, cu_k: torch.Tensor | None = None,
                   max_k: int | None = None) -> torch.Tensor:
    """Flash attention over packed sequences; q [Tq, H, D], k, v [Tk, Hkv, D]; keys packed by cu_k when
    they are longer than the queries (default: cu, the same lengths)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs = dict(_varlen_kwargs())
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-9:
        raise NotImplementedError("varlen_attn without a scale argument")
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    cu_k = cu if cu_k is None else cu_k
    return varlen_attn(q, k, v, cu, cu_k, max_len, max_len if max_k is None else max_k, **kwargs)


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One sequence: q [Q, H, D] at the last Q positions of k, v [S, Hkv, D] -> [Q, H, D]."""
    num_q, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    qt, kt, vt = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, len, D]
    if num_q == seq_len:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:  # query i sits at position seq_len - num_q + i
        q_pos = torch.arange(seq_len - num_q, seq_len, device=q.device)[:, None]
        mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos  # [Q, S]
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)
