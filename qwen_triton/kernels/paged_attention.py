"""Decode attention over the paged KV cache, split along the sequence.

Each query token n (one per decoding sequence) attends to the first
ctx_lens[n] positions of its sequence, found through its row of the block
table. The context is cut into `num_splits` equal chunks (rounded up to
BLOCK_N tokens) so that a batch of a few long sequences still fills the GPU:
program (n, h, s) runs an online softmax over chunk s of token n for query
head h and writes its unnormalised partial result; a second kernel merges the
splits. With one split the first kernel writes the final result directly.

The chunk length is computed inside the kernel from ctx_lens, so the launch
(grid and arguments) depends only on the batch size: the same launch is valid
for any context lengths, which is what a CUDA graph replay needs. Rows with
ctx_lens 0 (padding) produce zeros.

In a mixed step (query_start_loc given: the graph-safe path of
attention/triton_backend.py) program n serves sequence n only when it has one
query token, at row query_start_loc[n + 1] - 1 of q and out; the rows of the
other sequences are kernels/paged_prefill.py's and are left untouched. That
choice is a constexpr (VARLEN): the decode-only launch compiles as before.

A QuantKVCache is read as codes (int8 / fp8, half the bytes of bf16) turned to
fp32 and scaled: per layer (KV_QUANT 1) the K scale folds into q and the V
scale into the result; per token and KV head (KV_QUANT 2) each score is scaled
by its key's scale and each probability by its value's scale.

Reference: attention.torch_backend.causal_attention over the gathered context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..attention import KVCache, QuantKVCache


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, ctx_lens_ptr, query_start_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr, k_scale_ptr, v_scale_ptr,
    q_t_stride, q_h_stride, bt_stride, blk_stride, pos_stride, kv_h_stride, num_kv_heads,
    scale, num_splits,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, V_WITH_K: tl.constexpr, KV_QUANT: tl.constexpr,
    VARLEN: tl.constexpr,
):
    # KV_QUANT 0: a float cache; 1: codes, scales k_scale_ptr[0], v_scale_ptr[0];
    # 2: codes, scales at [slot * num_kv_heads + kv_head] of k_scale_ptr / v_scale_ptr
    # VARLEN: program n serves sequence n, whose query row is query_start_ptr[n + 1] - 1, and only when
    # the sequence has exactly one query token (others are the prefill kernel's: nothing written)
    n = tl.program_id(0).to(tl.int64)
    if VARLEN:
        last = tl.load(query_start_ptr + n + 1)
        if last - tl.load(query_start_ptr + n) == 1:
            _decode_program(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, ctx_lens_ptr, out_ptr, part_acc_ptr,
                            part_ml_ptr, k_scale_ptr, v_scale_ptr, q_t_stride, q_h_stride, bt_stride, blk_stride,
                            pos_stride, kv_h_stride, num_kv_heads, scale, num_splits, n, (last - 1).to(tl.int64),
                            GROUP, BLOCK_SIZE, HEAD_DIM, BLOCK_N, SINGLE, V_WITH_K, KV_QUANT)
    else:
        _decode_program(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, ctx_lens_ptr, out_ptr, part_acc_ptr,
                        part_ml_ptr, k_scale_ptr, v_scale_ptr, q_t_stride, q_h_stride, bt_stride, blk_stride,
                        pos_stride, kv_h_stride, num_kv_heads, scale, num_splits, n, n,
                        GROUP, BLOCK_SIZE, HEAD_DIM, BLOCK_N, SINGLE, V_WITH_K, KV_QUANT)


@triton.jit
def _decode_program(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, ctx_lens_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr, k_scale_ptr, v_scale_ptr,
    q_t_stride, q_h_stride, bt_stride, blk_stride, pos_stride, kv_h_stride, num_kv_heads,
    scale, num_splits, n, token,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, V_WITH_K: tl.constexpr, KV_QUANT: tl.constexpr,
):
    """Sequence n's query token (packed row `token` of q and out) for head program_id(1), split program_id(2)."""
    h = tl.program_id(1)
    s = tl.program_id(2)
    num_heads = tl.num_programs(1)
    ctx = tl.load(ctx_lens_ptr + n)
    chunk = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = s * chunk
    end = tl.minimum(start + chunk, ctx)

    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + token * q_t_stride + h * q_h_stride + dims).to(tl.float32) * scale  # [D]
    kv_head = (h // GROUP).to(tl.int64)
    if KV_QUANT == 1:
        q = q * tl.load(k_scale_ptr)
    m = tl.full((), float("-inf"), tl.float32)
    denom = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    for j0 in range(start, end, BLOCK_N):
        offs = j0 + tl.arange(0, BLOCK_N)  # [BLOCK_N] positions in the sequence
        valid = offs < end
        block = tl.load(block_tables_ptr + n * bt_stride + offs // BLOCK_SIZE, mask=valid, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + offs % BLOCK_SIZE
        row = block.to(tl.int64) * blk_stride + (offs % BLOCK_SIZE) * pos_stride + kv_head * kv_h_stride
        addr = row[:, None] + dims[None, :]  # [BLOCK_N, D]
        k = tl.load(k_cache_ptr + addr, mask=valid[:, None], other=0.0)
        if V_WITH_K:  # both tiles requested before any arithmetic: more bytes in flight
            v = tl.load(v_cache_ptr + addr, mask=valid[:, None], other=0.0)
        scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)  # [BLOCK_N]
        if KV_QUANT == 2:  # each token's [slot, head] scales, float32 [BLOCK_N]
            scale_addr = slot * num_kv_heads + kv_head
            scores = scores * tl.load(k_scale_ptr + scale_addr, mask=valid, other=0.0)
            v_scales = tl.load(v_scale_ptr + scale_addr, mask=valid, other=0.0)
        scores = tl.where(valid, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new)
        if not V_WITH_K:
            v = tl.load(v_cache_ptr + addr, mask=valid[:, None], other=0.0)
        v = v.to(tl.float32)
        denom = denom * alpha + tl.sum(p, axis=0)
        if KV_QUANT == 2:
            p = p * v_scales
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    if KV_QUANT == 1:
        acc = acc * tl.load(v_scale_ptr)  # the merge is linear in acc: scaling each split's is exact
    _store_result(out_ptr, part_acc_ptr, part_ml_ptr, acc, m, denom, (token * num_heads + h), (n * num_heads + h),
                  s, num_splits, HEAD_DIM, SINGLE)


@triton.jit
def _store_result(out_ptr, part_acc_ptr, part_ml_ptr, acc, m, denom, out_row, row, s, num_splits,
                  HEAD_DIM: tl.constexpr, SINGLE: tl.constexpr):
    """Row token * num_heads + h of out: the normalised result, or split s's partial (acc, max,
    denominator) at row n * num_heads + h of the partials."""
    dims = tl.arange(0, HEAD_DIM)
    if SINGLE:
        result = acc / tl.where(denom > 0, denom, 1.0)
        tl.store(out_ptr + out_row * HEAD_DIM + dims, result.to(out_ptr.dtype.element_ty))
    else:
        part = row * num_splits + s
        tl.store(part_acc_ptr + part * HEAD_DIM + dims, acc)
        tl.store(part_ml_ptr + part * 2, m)
        tl.store(part_ml_ptr + part * 2 + 1, denom)


@triton.jit
def _merge_splits_kernel(
    out_ptr, part_acc_ptr, part_ml_ptr, query_start_ptr, num_splits, num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, VARLEN: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # n * num_heads + h
    if VARLEN:  # sequence n's query row, as in _paged_decode_kernel
        last = tl.load(query_start_ptr + row // num_heads + 1)
        if last - tl.load(query_start_ptr + row // num_heads) == 1:
            _merge_row(out_ptr, part_acc_ptr, part_ml_ptr, num_splits, row,
                       (last - 1).to(tl.int64) * num_heads + row % num_heads, HEAD_DIM, BLOCK_S)
    else:
        _merge_row(out_ptr, part_acc_ptr, part_ml_ptr, num_splits, row, row, HEAD_DIM, BLOCK_S)


@triton.jit
def _merge_row(out_ptr, part_acc_ptr, part_ml_ptr, num_splits, row, out_row,
               HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    """The splits of partials row `row` merged into row `out_row` of out."""
    splits = tl.arange(0, BLOCK_S)
    valid = splits < num_splits
    part = row * num_splits + splits  # [BLOCK_S]
    m = tl.load(part_ml_ptr + part * 2, mask=valid, other=float("-inf"))
    denom = tl.load(part_ml_ptr + part * 2 + 1, mask=valid, other=0.0)
    m_max = tl.max(m, axis=0)
    weight = tl.where(m > float("-inf"), tl.exp(m - m_max), 0.0)  # empty splits weigh 0
    total = tl.sum(weight * denom, axis=0)
    dims = tl.arange(0, HEAD_DIM)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], mask=valid[:, None], other=0.0)
    result = tl.sum(weight[:, None] * acc, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + out_row * HEAD_DIM + dims, result.to(out_ptr.dtype.element_ty))


@dataclass(frozen=True)
class DecodeLaunch:
    """How the decode kernel is launched for a batch: depends on the batch size
    only (never the context lengths), so a captured CUDA graph stays valid."""

    num_splits: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    v_with_k: bool = True


def choose_launch(num_tokens: int, num_heads: int, num_sms: int, max_splits: int = 32) -> DecodeLaunch:
    """Enough programs to fill the GPU (about 16 per multiprocessor) by splitting
    the sequence when the batch alone is too small; tile width by measurement."""
    work = max(num_tokens * num_heads, 1)
    splits = 1
    while splits < max_splits and work * splits < 16 * num_sms:
        splits *= 2
    # measured on an H200 (docs/perf-notes.md): 128-token tiles with the V tile loaded
    # beside the K tile were best or within 3% of best from batch 1 to 256
    return DecodeLaunch(splits, block_n=128, v_with_k=True)


def choose_num_splits(num_tokens: int, num_heads: int, num_sms: int, max_splits: int = 32) -> int:
    return choose_launch(num_tokens, num_heads, num_sms, max_splits).num_splits


def cache_operands(kv_cache: KVCache, q: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(KV_QUANT, the cache's data [2, num_blocks, block_size, Hkv, D], K scales, V scales) for a kernel:
    0 and q standing in for the scales (any pointer, unread) for a float cache; 1 with the layer's
    scalar scales, 2 with the per-token-and-head ones [num_blocks, block_size, Hkv] for a QuantKVCache."""
    if not isinstance(kv_cache, QuantKVCache):
        return 0, kv_cache, q, q
    data, scales = kv_cache
    assert scales.is_contiguous() and scales.dtype == torch.float32
    return 2 if scales.dim() > 1 else 1, data, scales[0], scales[1]


def paged_decode_attention(
    q: torch.Tensor,  # [N, H, D], head vectors contiguous (with query_start_loc: [T, H, D], the step's rows)
    kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D], D contiguous (any block / position / head
    # strides: token-major or head-major blocks); or a QuantKVCache
    block_tables: torch.Tensor,  # int32 [N, max_blocks]
    ctx_lens: torch.Tensor,  # int32 [N], positions each token attends to (its own included)
    scale: float,
    num_splits: int = 1,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    v_with_k: bool = True,
    query_start_loc: torch.Tensor | None = None,  # int32 [N + 1]: N sequences of a mixed step, see below
    out: torch.Tensor | None = None,  # [T, H, D] contiguous, written in place (required with query_start_loc)
) -> torch.Tensor:  # [N, H, D] (or out), q's dtype
    """One query token per row n of ctx_lens. With query_start_loc (a mixed step, fixed launch: the
    grid depends on N only) sequence n's token is row query_start_loc[n + 1] - 1 of q and out, and
    sequences whose query length is not 1 are skipped (their rows of out are left as they are)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_seqs = ctx_lens.shape[0] if query_start_loc is not None else q.shape[0]
    kv_quant, kv_cache, k_scales, v_scales = cache_operands(kv_cache, q)
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    assert q.stride(2) == 1 and kv_cache.stride(4) == 1 and block_tables.stride(1) == 1
    if out is None:
        assert query_start_loc is None, "query_start_loc needs the step's out to write into"
        out = torch.empty(num_seqs, num_heads, head_dim, dtype=q.dtype, device=q.device)
    assert out.is_contiguous() and out.shape[1:] == q.shape[1:]
    if num_seqs == 0:
        return out
    single = num_splits == 1
    rows = num_seqs * num_heads * (1 if single else num_splits)
    part_acc = out if single else torch.empty(rows, head_dim, dtype=torch.float32, device=q.device)
    part_ml = out if single else torch.empty(rows, 2, dtype=torch.float32, device=q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    varlen = query_start_loc is not None
    starts = query_start_loc if varlen else ctx_lens  # unread without VARLEN
    _paged_decode_kernel[(num_seqs, num_heads, num_splits)](
        q, k_cache, v_cache, block_tables, ctx_lens, starts, out, part_acc, part_ml, k_scales, v_scales,
        q.stride(0), q.stride(1), block_tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads,
        scale, num_splits,
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        BLOCK_N=block_n, SINGLE=single, V_WITH_K=v_with_k, KV_QUANT=kv_quant, VARLEN=varlen,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not single:
        _merge_splits_kernel[(num_seqs * num_heads,)](
            out, part_acc, part_ml, starts, num_splits, num_heads,
            HEAD_DIM=head_dim, BLOCK_S=max(triton.next_power_of_2(num_splits), 2), VARLEN=varlen, num_warps=4,
        )
    return out


def paged_decode_attention_reference(
    q: torch.Tensor, kv_cache: KVCache, block_tables: torch.Tensor, ctx_lens: torch.Tensor,
    scale: float, query_start_loc: torch.Tensor | None = None, out: torch.Tensor | None = None, **_unused,
) -> torch.Tensor:
    """The same contract in plain torch: one token at a time through causal_attention
    (over the dequantized context of a QuantKVCache)."""
    from ..attention.kv_quant import gather_kv
    from ..attention.torch_backend import causal_attention, context_slots

    data = kv_cache if isinstance(kv_cache, torch.Tensor) else kv_cache.data
    out = torch.zeros_like(q) if out is None else out
    starts = query_start_loc.tolist() if query_start_loc is not None else list(range(len(ctx_lens) + 1))
    for n, ctx in enumerate(ctx_lens.tolist()):
        row = starts[n + 1] - 1
        if starts[n + 1] - starts[n] != 1:
            continue
        out[row] = 0
        if ctx > 0:
            k, v = gather_kv(kv_cache, context_slots(block_tables[n], ctx, data.shape[2]))
            out[row] = causal_attention(q[row:row + 1], k, v, scale)[0].to(q.dtype)
    return out
