"""Rotary embedding (rotate-half layout) applied to q and k in place.

q [T, H, D] and k [T, Hkv, D] may be strided views into one fused qkv output
(last dim contiguous); cos, sin are float32 [T, D] whose two halves are equal
(models.layers.rope_cos_sin). Computed in float32, rounded to q's dtype, as
models.layers.apply_rotary does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import next_power_of_2


@triton.jit
def _rotate(x_ptr, token, t_stride, h_stride, n_heads, c, s,
            HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotate the n_heads head vectors of one token in place; c, s: [1, HALF]."""
    heads = tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
    dims = tl.arange(0, HALF)[None, :]      # [1, HALF]
    mask = heads < n_heads
    base = x_ptr + token * t_stride + heads * h_stride + dims
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(base, (x1 * c - x2 * s).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(base + HALF, (x2 * c + x1 * s).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr,
    q_t_stride, q_h_stride, k_t_stride, k_h_stride, cs_stride,
    n_q_heads, n_k_heads,
    HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, HALF)[None, :]
    c = tl.load(cos_ptr + token * cs_stride + dims)  # [1, HALF], float32
    s = tl.load(sin_ptr + token * cs_stride + dims)
    _rotate(q_ptr, token, q_t_stride, q_h_stride, n_q_heads, c, s, HALF, BLOCK_HQ)
    _rotate(k_ptr, token, k_t_stride, k_h_stride, n_k_heads, c, s, HALF, BLOCK_HK)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H, D] and k [T, Hkv, D] in place; returns (q, k)."""
    num_tokens, n_q, dim = q.shape
    assert q.stride(-1) == 1 and k.stride(-1) == 1, "head vectors must be contiguous"
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            q, k, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
            n_q, k.shape[1], HALF=dim // 2,
            BLOCK_HQ=next_power_of_2(n_q), BLOCK_HK=next_power_of_2(k.shape[1]), num_warps=4,
        )
    return q, k
