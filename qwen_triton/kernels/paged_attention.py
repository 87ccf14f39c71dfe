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
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, ctx_lens_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr, k_scale_ptr, v_scale_ptr,
    q_t_stride, q_h_stride, bt_stride, blk_stride, pos_stride, kv_h_stride, num_kv_heads,
    scale, num_splits,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, V_WITH_K: tl.constexpr, KV_QUANT: tl.constexpr,
):
    # KV_QUANT 0: a float cache; 1: codes, scales k_scale_ptr[0], v_scale_ptr[0];
    # 2: codes, scales at [slot * num_kv_heads + kv_head] of k_scale_ptr / v_scale_ptr
    n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.program_id(2)
    num_heads = tl.num_programs(1)
    ctx = tl.load(ctx_lens_ptr + n)
    chunk = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = s * chunk
    end = tl.minimum(start + chunk, ctx)

    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + n * q_t_stride + h * q_h_stride + dims).to(tl.float32) * scale  # [D]
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
    _store_result(out_ptr, part_acc_ptr, part_ml_ptr, acc, m, denom, (n * num_heads + h), s, num_splits,
                  HEAD_DIM, SINGLE)


@triton.jit
def _store_result(out_ptr, part_acc_ptr, part_ml_ptr, acc, m, denom, row, s, num_splits,
                  HEAD_DIM: tl.constexpr, SINGLE: tl.constexpr):
    """Row n * num_heads + h: the normalised result, or split s's partial (acc, max, denominator)."""
    dims = tl.arange(0, HEAD_DIM)
    if SINGLE:
        result = acc / tl.where(denom > 0, denom, 1.0)
        tl.store(out_ptr + row * HEAD_DIM + dims, result.to(out_ptr.dtype.element_ty))
    else:
        part = row * num_splits + s
        tl.store(part_acc_ptr + part * HEAD_DIM + dims, acc)
        tl.store(part_ml_ptr + part * 2, m)
        tl.store(part_ml_ptr + part * 2 + 1, denom)


@triton.jit
def _merge_splits_kernel(
    out_ptr, part_acc_ptr, part_ml_ptr, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # n * num_heads + h
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
    tl.store(out_ptr + row * HEAD_DIM + dims, result.to(out_ptr.dtype.element_ty))


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


def paged_decode_attention(
    q: torch.Tensor,  # [N, H, D], head vectors contiguous
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
) -> torch.Tensor:  # [N, H, D], q's dtype
    num_tokens, num_heads, head_dim = q.shape
    kv_quant, k_scales, v_scales = 0, q, q  # q: any pointer, unread without scales
    if isinstance(kv_cache, QuantKVCache):
        kv_cache, scales = kv_cache
        kv_quant = 2 if scales.dim() > 1 else 1
        assert scales.is_contiguous() and scales.dtype == torch.float32
        k_scales, v_scales = scales[0], scales[1]
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    assert q.stride(2) == 1 and kv_cache.stride(4) == 1 and block_tables.stride(1) == 1
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out
    single = num_splits == 1
    rows = num_tokens * num_heads * (1 if single else num_splits)
    part_acc = out if single else torch.empty(rows, head_dim, dtype=torch.float32, device=q.device)
    part_ml = out if single else torch.empty(rows, 2, dtype=torch.float32, device=q.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _paged_decode_kernel[(num_tokens, num_heads, num_splits)](
        q, k_cache, v_cache, block_tables, ctx_lens, out, part_acc, part_ml, k_scales, v_scales,
        q.stride(0), q.stride(1), block_tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads,
        scale, num_splits,
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        BLOCK_N=block_n, SINGLE=single, V_WITH_K=v_with_k, KV_QUANT=kv_quant,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not single:
        _merge_splits_kernel[(num_tokens * num_heads,)](
            out, part_acc, part_ml, num_splits,
            HEAD_DIM=head_dim, BLOCK_S=max(triton.next_power_of_2(num_splits), 2), num_warps=4,
        )
    return out


def paged_decode_attention_reference(
    q: torch.Tensor, kv_cache: KVCache, block_tables: torch.Tensor, ctx_lens: torch.Tensor,
    scale: float, **_unused,
) -> torch.Tensor:
    """The same contract in plain torch: one token at a time through causal_attention
    (over the dequantized context of a QuantKVCache)."""
    from ..attention.kv_quant import gather_kv
    from ..attention.torch_backend import causal_attention, context_slots

    data = kv_cache if isinstance(kv_cache, torch.Tensor) else kv_cache.data
    out = torch.zeros_like(q)
    for n, ctx in enumerate(ctx_lens.tolist()):
        if ctx > 0:
            k, v = gather_kv(kv_cache, context_slots(block_tables[n], ctx, data.shape[2]))
            out[n] = causal_attention(q[n:n + 1], k, v, scale)[0].to(q.dtype)
    return out
