"""Paged attention in plain torch: the CPU backend and the reference that
faster (GPU) backends are tested against.

One sequence at a time, its context gathered from the paged cache through its
block table. `causal_attention` is the reference: dense, float32, an explicit
causal mask. The backend runs `sdpa_causal_attention`, the same computation
through torch's fused scaled_dot_product_attention (GQA without copying the
keys, no mask at all for a decode token or a whole prompt): 4-11x faster on
the CPU (docs/benchmarks.md), equal to the reference within float32 rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import AttentionMetadata, KVCache
from .kv_quant import gather_kv, write_quant_kv_cache


def write_kv_cache(
    kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D] or a QuantKVCache
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T], block * block_size + offset
) -> None:
    """Store this step's keys and values at their slots (in place), quantized for a QuantKVCache."""
    if not isinstance(kv_cache, torch.Tensor):
        write_quant_kv_cache(kv_cache, k, v, slot_mapping)
        return
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])  # [2, num_blocks * block_size, Hkv, D]
    flat[0].index_copy_(0, slot_mapping, k.to(flat.dtype))
    flat[1].index_copy_(0, slot_mapping, v.to(flat.dtype))


def context_slots(block_table: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """Flat cache slots of positions 0..seq_len-1 of one sequence: int64 [seq_len]."""
    num_blocks = -(-seq_len // block_size)
    blocks = block_table[:num_blocks].long()  # [num_blocks]
    offsets = torch.arange(block_size, device=blocks.device)
    return (blocks[:, None] * block_size + offsets[None, :]).flatten()[:seq_len]


def causal_attention(
    q: torch.Tensor,  # [Q, H, D], the last Q positions of the context
    k: torch.Tensor,  # [S, Hkv, D], the whole context (S >= Q)
    v: torch.Tensor,  # [S, Hkv, D]
    scale: float,
) -> torch.Tensor:  # [Q, H, D], float32
    """Dense causal attention of one sequence; query i sits at position S - Q + i."""
    num_q, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    # GQA: query head h reads kv head h // group (transformers' repeat_kv layout).
    group = num_heads // num_kv_heads
    k = k.float().repeat_interleave(group, dim=1)  # [S, H, D]
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale  # [H, Q, S]
    q_pos = torch.arange(seq_len - num_q, seq_len, device=q.device)[:, None]  # [Q, 1]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]  # [1, S]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def sdpa_causal_attention(
    q: torch.Tensor,  # [Q, H, D], the last Q positions of the context
    k: torch.Tensor,  # [S, Hkv, D], the whole context (S >= Q)
    v: torch.Tensor,  # [S, Hkv, D]
    scale: float,
) -> torch.Tensor:  # [Q, H, D], float32
    """`causal_attention` through F.scaled_dot_product_attention."""
    num_q, seq_len = q.shape[0], k.shape[0]
    mask = None
    if 1 < num_q < seq_len:  # a prompt chunk after cached tokens: query i sees keys <= S - Q + i
        mask = torch.ones(num_q, seq_len, dtype=torch.bool, device=q.device).tril(seq_len - num_q)
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1)[None], k.float().transpose(0, 1)[None], v.float().transpose(0, 1)[None],
        attn_mask=mask, is_causal=num_q == seq_len and num_q > 1, scale=scale, enable_gqa=True)  # [1, H, Q, D]
    return out[0].transpose(0, 1)


class TorchAttentionBackend:
    """AttentionBackend in plain torch; works on any device, built for the CPU."""

    name = "torch"
    supports_cuda_graphs = False

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D] or a QuantKVCache
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, H, D]
        """Write k/v of all T tokens into the cache, then let each sequence's
        query tokens attend causally over its whole cached context (dequantized
        from a QuantKVCache, except a whole prompt of 2+ tokens in one step, which
        attends over its own k/v before quantization as the Triton backend's prefill does)."""
        write_kv_cache(kv_cache, k, v, meta.slot_mapping)
        quantized = not isinstance(kv_cache, torch.Tensor)
        out = torch.empty_like(q)
        start = 0
        for i, (num_q, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
            if num_q == 0:
                continue
            rows = slice(start, start + num_q)
            if quantized and num_q == seq_len > 1:  # as the Triton backend: a 1-token prompt decodes
                ctx_k, ctx_v = k[rows], v[rows]
            else:
                ctx_k, ctx_v = gather_kv(kv_cache, context_slots(meta.block_tables[i], seq_len, meta.block_size))
            out[rows] = sdpa_causal_attention(q[rows], ctx_k, ctx_v, scale).to(q.dtype)
            start += num_q
        return out
