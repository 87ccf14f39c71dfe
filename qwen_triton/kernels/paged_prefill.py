"""Prefill attention over the paged KV cache, flash-attention style, with a fixed launch.

Sequence n of the batch brings Q_n = query_start_loc[n + 1] - query_start_loc[n] query tokens, its
last Q_n positions (seq_lens[n] - Q_n .. seq_lens[n] - 1): a whole prompt (Q_n == seq_lens[n]) or a
chunk after cached context (a prefix-cache hit, chunked prefill). Each attends causally to positions
0 .. its own, reading keys and values only from the paged cache through the sequence's block table:
the step's own K/V are written there (kernels/kv_cache.py) before attention runs.

Program (n, t, h) takes query rows t * BLOCK_M .. + BLOCK_M of sequence n for query head h (GQA:
KV head h // (H // Hkv)) and runs an online softmax over key tiles of BLOCK_N positions: first the
tiles wholly at or before the tile's first query position (no mask), then the few tiles along the
diagonal (causal mask). QK^T and PV are tl.dot with fp32 accumulation. The grid is
(B, cdiv(max_query_len, BLOCK_M), H): it depends only on the bucket sizes, never on the lengths
(read inside the kernel), so one launch serves every batch of those sizes and a CUDA graph can
capture it. Programs with nothing to do exit at once: tiles past Q_n, decode rows (Q_n <= 1, the
decode kernel's), padding sequences (seq_lens[n] < Q_n, e.g. 0). Their output rows are not written.

Split-K (num_splits > 1, a constexpr switch: one split compiles and runs as above, with no partials):
a short chunk after a long context has few query tiles, so few programs would stream its context.
The grid becomes (B, cdiv(max_query_len, BLOCK_M), num_splits * H); split s of a query tile takes
keys [s * chunk, min((s + 1) * chunk, the tile's causal end)), chunk = seq_len / num_splits rounded
up to whole key tiles, computed in the kernel from seq_lens (the launch stays length-free, as the
decode kernel's, kernels/paged_attention.py). A split past the tile's causal end is empty: it exits
and writes nothing. A tile whose causal range lies in split 0 alone is written to out directly;
otherwise each live split writes float32 partials (acc, max, denominator) per row, a row with no key
in its split as (0, -inf, 0), and _merge_prefill_splits_kernel, on the same tiles, rescales them to
a common max and writes out. Both kernels work out which splits are live from seq_lens alone.

A QuantKVCache is read as codes turned (exactly) into q's dtype for the dots: per layer (KV_QUANT 1)
the K scale folds into the score scale and the V scale into the result; per token and KV head
(KV_QUANT 2) each score column is scaled by its key's scale and each probability by its value's.

Reference: paged_prefill_attention_reference (attention.torch_backend.causal_attention per sequence).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..attention import KVCache
from .paged_attention import cache_operands

LOG2E = 1.4426950408889634  # exp(x) == exp2(x * LOG2E): the softmax runs on exp2


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b in fp32; IEEE: full fp32 products (fp32 operands), else the tensor cores' native ones."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_tables_ptr, k_scale_ptr, v_scale_ptr,
    j0, end, bt_row, blk_stride, pos_stride, kv_head_offset, scale_row, num_kv_heads, qk_scale,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, KV_QUANT: tl.constexpr,
    IEEE: tl.constexpr, MASKED: tl.constexpr, MAY_BE_EMPTY: tl.constexpr,
):
    """One key tile, positions j0 .. j0 + BLOCK_N - 1, folded into the running (acc [BLOCK_M, D],
    m_i [BLOCK_M], l_i [BLOCK_M]) of the query rows at q_pos [BLOCK_M]. MASKED: a tile on the
    diagonal (positions past a row's own or >= end drop out); else every key precedes every row.
    MAY_BE_EMPTY: rows may have seen no key yet (a split's rows before its first key); they stay at
    (0, -inf, 0) instead of turning NaN."""
    offs = j0 + tl.arange(0, BLOCK_N)  # [BLOCK_N] positions in the sequence
    dims = tl.arange(0, HEAD_DIM)
    valid = offs < end
    block = tl.load(block_tables_ptr + bt_row + offs // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    within = offs % BLOCK_SIZE
    base = block * blk_stride + within * pos_stride + kv_head_offset  # [BLOCK_N] element offsets
    if MASKED:
        k = tl.load(k_cache_ptr + base[None, :] + dims[:, None], mask=valid[None, :], other=0.0)  # [D, BLOCK_N]
        v = tl.load(v_cache_ptr + base[:, None] + dims[None, :], mask=valid[:, None], other=0.0)  # [BLOCK_N, D]
    else:
        k = tl.load(k_cache_ptr + base[None, :] + dims[:, None])
        v = tl.load(v_cache_ptr + base[:, None] + dims[None, :])
    scores = _dot(q, k.to(q.dtype), tl.zeros((q.shape[0], BLOCK_N), tl.float32), IEEE) * qk_scale
    if KV_QUANT == 2:  # each key's and value's [slot, kv head] scale, float32 [BLOCK_N]
        scale_idx = (block * BLOCK_SIZE + within) * num_kv_heads + scale_row
        scores = scores * tl.load(k_scale_ptr + scale_idx, mask=valid, other=0.0)[None, :]
        v_scales = tl.load(v_scale_ptr + scale_idx, mask=valid, other=0.0)
    if MASKED:
        keep = (offs[None, :] <= q_pos[:, None]) & valid[None, :]  # [BLOCK_M, BLOCK_N]
        scores = tl.where(keep, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    if MAY_BE_EMPTY:  # a row with no key so far: alpha and p are 0 against a max of 0
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new  # finite: every row sees a key in its first tile
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(scores - m_use[:, None])  # [BLOCK_M, BLOCK_N]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if KV_QUANT == 2:
        p = p * v_scales[None, :]
    acc = _dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], IEEE)
    return acc, m_new, l_i


@triton.jit
def _attend_keys(
    q, q_pos, k_cache_ptr, v_cache_ptr, block_tables_ptr, k_scale_ptr, v_scale_ptr,
    lo, unmasked_end, masked_start, hi, end, bt_row, blk_stride, pos_stride, kv_head, kv_h_stride, num_kv_heads,
    qk_scale, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, KV_QUANT: tl.constexpr,
    IEEE: tl.constexpr, MAY_BE_EMPTY: tl.constexpr,
):
    """The online softmax of q [BLOCK_M, D] over key tiles lo .. unmasked_end (no mask: before every row)
    and masked_start .. hi (the diagonal; keys >= end drop out): unnormalised (acc [BLOCK_M, D], max and
    denominator [BLOCK_M]), maxima in log2 units."""
    m_i = tl.full((q.shape[0],), float("-inf"), tl.float32)
    l_i = tl.zeros((q.shape[0],), tl.float32)
    acc = tl.zeros((q.shape[0], HEAD_DIM), tl.float32)
    for j0 in range(lo, unmasked_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_tables_ptr, k_scale_ptr, v_scale_ptr,
            j0, end, bt_row, blk_stride, pos_stride, kv_head * kv_h_stride, kv_head, num_kv_heads,
            qk_scale, BLOCK_SIZE, HEAD_DIM, BLOCK_N, KV_QUANT, IEEE, MASKED=False, MAY_BE_EMPTY=False)
    for j0 in range(masked_start, hi, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, q_pos, k_cache_ptr, v_cache_ptr, block_tables_ptr, k_scale_ptr, v_scale_ptr,
            j0, end, bt_row, blk_stride, pos_stride, kv_head * kv_h_stride, kv_head, num_kv_heads,
            qk_scale, BLOCK_SIZE, HEAD_DIM, BLOCK_N, KV_QUANT, IEEE, MASKED=True, MAY_BE_EMPTY=MAY_BE_EMPTY)
    return acc, m_i, l_i


@triton.jit
def _split_chunk(seq_len, num_splits, BLOCK_N: tl.constexpr):
    """Keys per split of a sequence of seq_len positions: an equal share rounded up to whole key tiles."""
    return tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N


@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_ptr, seq_lens_ptr, out_ptr,
    part_acc_ptr, part_ml_ptr, k_scale_ptr, v_scale_ptr,
    q_t_stride, q_h_stride, o_t_stride, o_h_stride, bt_stride, blk_stride, pos_stride, kv_h_stride,
    num_kv_heads, qk_scale, num_splits,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, KV_QUANT: tl.constexpr, DOT_FP32: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr,
):
    # KV_QUANT 0: a float cache; 1: codes, scales k_scale_ptr[0], v_scale_ptr[0];
    # 2: codes, scales at [slot * num_kv_heads + kv_head] of k_scale_ptr / v_scale_ptr
    # SPLIT: program_id(2) is s * H + h, split s of num_splits; else h (num_splits 1, part_* unread)
    n = tl.program_id(0).to(tl.int64)
    # the last query tiles (the most keys) first: the grid's final wave is then the lightest
    m0 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    if SPLIT:
        h = tl.program_id(2) % (tl.num_programs(2) // num_splits)
    else:
        h = tl.program_id(2)
    first = tl.load(query_start_ptr + n)
    num_q = tl.load(query_start_ptr + n + 1) - first
    seq_len = tl.load(seq_lens_ptr + n)
    if (num_q > 1) & (m0 < num_q) & (seq_len >= num_q):
        rows = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M] query rows of this sequence
        row_ok = rows < num_q
        ctx0 = seq_len - num_q  # position of query row 0
        dims = tl.arange(0, HEAD_DIM)
        tokens = (first + rows).to(tl.int64)  # [BLOCK_M] packed rows of q and out
        q = tl.load(q_ptr + tokens[:, None] * q_t_stride + h * q_h_stride + dims[None, :], mask=row_ok[:, None],
                    other=0.0)  # [BLOCK_M, D]
        if DOT_FP32:
            q = q.to(tl.float32)
        kv_head = (h // GROUP).to(tl.int64)
        if KV_QUANT == 1:
            qk_scale = qk_scale * tl.load(k_scale_ptr)
        diag = (ctx0 + m0 + 1) // BLOCK_N * BLOCK_N  # key tiles before it precede every row of the tile
        end = tl.minimum(ctx0 + m0 + BLOCK_M, seq_len)  # one past the tile's last key
        if SPLIT:  # keys lo .. hi - 1 of the tile's causal range; an empty split does (and writes) nothing
            chunk = _split_chunk(seq_len, num_splits, BLOCK_N)
            lo = (tl.program_id(2) // (tl.num_programs(2) // num_splits)) * chunk
            hi = tl.minimum(lo + chunk, end)
            if lo < end:
                acc, m_i, l_i = _attend_keys(
                    q, ctx0 + rows, k_cache_ptr, v_cache_ptr, block_tables_ptr, k_scale_ptr, v_scale_ptr, lo,
                    tl.minimum(diag, hi), tl.maximum(diag, lo), hi, end, n * bt_stride, blk_stride, pos_stride,
                    kv_head, kv_h_stride, num_kv_heads, qk_scale, BLOCK_SIZE, HEAD_DIM, BLOCK_N, KV_QUANT, IEEE,
                    MAY_BE_EMPTY=True)
                _store_split(out_ptr, part_acc_ptr, part_ml_ptr, v_scale_ptr, acc, m_i, l_i, tokens, row_ok, h,
                             o_t_stride, o_h_stride, num_splits, lo // chunk, tl.cdiv(end, chunk), HEAD_DIM, KV_QUANT)
        else:
            acc, m_i, l_i = _attend_keys(
                q, ctx0 + rows, k_cache_ptr, v_cache_ptr, block_tables_ptr, k_scale_ptr, v_scale_ptr, 0, diag, diag,
                end, end, n * bt_stride, blk_stride, pos_stride, kv_head, kv_h_stride, num_kv_heads, qk_scale,
                BLOCK_SIZE, HEAD_DIM, BLOCK_N, KV_QUANT, IEEE, MAY_BE_EMPTY=False)
            acc = acc / l_i[:, None]
            if KV_QUANT == 1:
                acc = acc * tl.load(v_scale_ptr)
            tl.store(out_ptr + tokens[:, None] * o_t_stride + h * o_h_stride + dims[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _store_split(out_ptr, part_acc_ptr, part_ml_ptr, v_scale_ptr, acc, m_i, l_i, tokens, row_ok, h, o_t_stride,
                 o_h_stride, num_splits, s, live, HEAD_DIM: tl.constexpr, KV_QUANT: tl.constexpr):
    """Split s of a query tile (packed rows tokens [BLOCK_M]) whose causal range spans `live` splits: with
    one, the normalised result into out (the merge skips the tile); else float32 partials at row
    (token * H + h) * num_splits + s: acc [D] (V-scaled: the merge is linear in it), (max, denominator)."""
    dims = tl.arange(0, HEAD_DIM)
    if KV_QUANT == 1:
        acc = acc * tl.load(v_scale_ptr)
    if live == 1:
        tl.store(out_ptr + tokens[:, None] * o_t_stride + h * o_h_stride + dims[None, :],
                 (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        part = (tokens * (tl.num_programs(2) // num_splits) + h) * num_splits + s  # [BLOCK_M]
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(part_ml_ptr + part * 2, m_i, mask=row_ok)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _merge_prefill_splits_kernel(
    out_ptr, part_acc_ptr, part_ml_ptr, query_start_ptr, seq_lens_ptr, o_t_stride, o_h_stride, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program (n, t, h): the splits of query tile t of sequence n for head h merged into out, for the
    tiles whose causal range spans more than one split (the others were written by the kernel)."""
    n = tl.program_id(0).to(tl.int64)
    m0 = tl.program_id(1) * BLOCK_M
    h = tl.program_id(2)
    first = tl.load(query_start_ptr + n)
    num_q = tl.load(query_start_ptr + n + 1) - first
    seq_len = tl.load(seq_lens_ptr + n)
    if (num_q > 1) & (m0 < num_q) & (seq_len >= num_q):
        end = tl.minimum(seq_len - num_q + m0 + BLOCK_M, seq_len)  # as in the kernel: the same splits are live
        live = tl.cdiv(end, _split_chunk(seq_len, num_splits, BLOCK_N))
        if live > 1:
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < num_q
            dims = tl.arange(0, HEAD_DIM)
            tokens = (first + rows).to(tl.int64)
            part = (tokens * tl.num_programs(2) + h) * num_splits  # [BLOCK_M] split 0's partials row
            m_run = tl.full((BLOCK_M,), float("-inf"), tl.float32)
            l_run = tl.zeros((BLOCK_M,), tl.float32)
            acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
            for s in range(0, live):  # splits past `live` were empty: never written, never read
                m_s = tl.load(part_ml_ptr + (part + s) * 2, mask=row_ok, other=float("-inf"))
                l_s = tl.load(part_ml_ptr + (part + s) * 2 + 1, mask=row_ok, other=0.0)
                acc_s = tl.load(part_acc_ptr + (part + s)[:, None] * HEAD_DIM + dims[None, :], mask=row_ok[:, None],
                                other=0.0)  # [BLOCK_M, D]
                m_new = tl.maximum(m_run, m_s)
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row no split has reached yet
                a, b = tl.exp2(m_run - m_use), tl.exp2(m_s - m_use)  # a row's empty split (max -inf) weighs 0
                l_run = l_run * a + l_s * b
                acc = acc * a[:, None] + acc_s * b[:, None]
                m_run = m_new
            result = acc / tl.where(l_run > 0, l_run, 1.0)[:, None]
            tl.store(out_ptr + tokens[:, None] * o_t_stride + h * o_h_stride + dims[None, :],
                     result.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@dataclass(frozen=True)
class PrefillLaunch:
    """How the prefill kernel is launched: chosen from bucket sizes only (the step's max query length, the
    heads, the block tables' width), never the lengths, so a captured CUDA graph stays valid for every
    batch of the bucket."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    num_splits: int = 1


def choose_prefill_launch(max_query_len: int, head_dim: int, dtype: torch.dtype = torch.bfloat16, *,
                          num_heads: int = 0, num_sms: int = 0, max_context: int = 0, programs_per_sm: int = 1,
                          max_splits: int = 16) -> PrefillLaunch:
    """Tiles: query tiles no taller than the longest query (short chunks waste no rows) and at most 64
    rows, 64-key tiles, 4 warps; smaller where the operands take more shared memory (head sizes past
    128, fp32). Measured on an H200 at 32 heads of 128 (tools/check_prefill_gpu.py, 2026-12-02): 64 x 64
    with 4 warps and 2 stages was the fastest or within 10% of it for 1 x 128 to 1 x 2048-token prompts
    and 144-token chunks after 2,000 tokens of context (128-row tiles: up to 45% slower on the chunks).

    Splits (only given num_heads and num_sms; else 1), from bucket sizes only (in a CUDA graph
    max_query_len is the token bucket; the context lengths are unknown): a bucket of one query tile
    splits in powers of two until tiles x heads x splits reach programs_per_sm programs per
    multiprocessor, so that a short chunk after a long context is streamed by the whole GPU; a bucket of
    more tiles does not split. Measured on the H200 (32 heads, 132 SMs, 2026-12-02, second session):
    16- and 64-token chunks after 2,000 tokens ran 2.5x and 1.7x faster at 8 splits than at one; but
    every bucket of 2 or more tiles was as fast or faster at one split (a 144-token chunk after 2,000
    tokens: 46 us at one split, 44 at two, 52 at four; a fresh 128-token prompt: 7.2 us at one, 11.2
    at two; 8 x 144-token chunks: 185 us at one, 258 at two), as the partials and the merge cost more
    than the idle SMs. max_context (the block tables' width in positions; 0: unknown) caps the splits at
    one key tile each."""
    block_m = min(64, max(16, triton.next_power_of_2(max(max_query_len, 1))))
    if head_dim > 128 or dtype == torch.float32:
        block_n, warps, stages = 32, 4, 1
    else:
        block_n, warps, stages = 64, 4, 2
    tiles = triton.cdiv(max(max_query_len, 1), block_m)
    cap = min(max_splits, triton.cdiv(max_context, block_n)) if max_context > 0 else max_splits
    splits = 1
    while tiles == 1 and num_heads and splits * 2 <= cap and num_heads * splits < programs_per_sm * num_sms:
        splits *= 2
    return PrefillLaunch(block_m, block_n, num_warps=warps, num_stages=stages, num_splits=splits)


def paged_prefill_attention(
    q: torch.Tensor,  # [T, H, D], head vectors contiguous (any token / head strides)
    kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D], D contiguous (token- or head-major blocks);
    # or a QuantKVCache
    block_tables: torch.Tensor,  # int32 [B, max_blocks], columns contiguous
    query_start_loc: torch.Tensor,  # int32 [B + 1], each sequence's first packed row, then T's end
    seq_lens: torch.Tensor,  # int32 [B], positions in each sequence's cache (this step's included)
    scale: float,
    *,
    out: torch.Tensor,  # [T, H, D], D contiguous: rows of prefilling sequences are written, others kept
    max_query_len: int,  # >= every Q_n (a bucket bound: it sets the grid, never the lengths)
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    num_splits: int = 1,
) -> torch.Tensor:  # out
    """Causal attention of every sequence with Q_n > 1 query tokens (its last Q_n positions) over its
    cached context; rows of sequences with Q_n <= 1 or seq_lens[n] < Q_n are left as they are in out.
    num_splits > 1: each query tile's keys in num_splits ranges (split-K, see the module's docstring),
    through float32 partials [T, H, num_splits, D] allocated here, merged by a second kernel."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_quant, data, k_scales, v_scales = cache_operands(kv_cache, q)
    _, _, block_size, num_kv_heads, _ = data.shape
    assert q.stride(2) == 1 and out.stride(2) == 1 and data.stride(4) == 1 and block_tables.stride(1) == 1
    assert out.shape == q.shape and num_heads % num_kv_heads == 0
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head_dim must be a power of two >= 16"
    assert min(block_m, block_n) >= 16, "tl.dot needs tiles of 16 or more"
    assert num_splits >= 1, f"num_splits must be >= 1, got {num_splits}"
    num_seqs = seq_lens.shape[0]
    if max_query_len <= 1 or num_seqs == 0:
        return out
    # Triton's interpreter (no GPU) multiplies bf16 dot operands as their raw bits: fp32 dots there
    dot_fp32 = q.dtype == torch.float32 or q.device.type != "cuda"
    split = num_splits > 1
    rows = q.shape[0] * num_heads * num_splits
    part_acc = torch.empty(rows, head_dim, dtype=torch.float32, device=q.device) if split else out  # unread: out
    part_ml = torch.empty(rows, 2, dtype=torch.float32, device=q.device) if split else out
    k_cache, v_cache = data[0], data[1]
    tiles = triton.cdiv(max_query_len, block_m)
    _paged_prefill_kernel[(num_seqs, tiles, num_heads * num_splits)](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out, part_acc, part_ml, k_scales, v_scales,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), num_kv_heads, scale * LOG2E, num_splits,
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_M=block_m,
        BLOCK_N=block_n, KV_QUANT=kv_quant, DOT_FP32=dot_fp32, IEEE=dot_fp32, SPLIT=split,
        num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        _merge_prefill_splits_kernel[(num_seqs, tiles, num_heads)](
            out, part_acc, part_ml, query_start_loc, seq_lens, out.stride(0), out.stride(1), num_splits,
            HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8,  # 4: 240 registers (sm_90)
        )
    return out


def paged_prefill_attention_reference(
    q: torch.Tensor, kv_cache: KVCache, block_tables: torch.Tensor, query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor, scale: float, *, out: torch.Tensor, **_unused,
) -> torch.Tensor:
    """The same contract in plain torch: each prefilling sequence through causal_attention over its
    gathered (for a QuantKVCache dequantized) context."""
    from ..attention.kv_quant import gather_kv
    from ..attention.torch_backend import causal_attention, context_slots

    data = kv_cache if isinstance(kv_cache, torch.Tensor) else kv_cache.data
    starts = query_start_loc.tolist()
    for n, seq_len in enumerate(seq_lens.tolist()):
        first, num_q = starts[n], starts[n + 1] - starts[n]
        if num_q > 1 and seq_len >= num_q:
            k, v = gather_kv(kv_cache, context_slots(block_tables[n], seq_len, data.shape[2]))
            out[first:first + num_q] = causal_attention(q[first:first + num_q], k, v, scale).to(out.dtype)
    return out
