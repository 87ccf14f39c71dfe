"""Store this step's keys and values into the paged cache, one program per token.

Tokens whose slot is negative are skipped: the padded rows of a CUDA graph
batch write nothing. A QuantKVCache gets codes (int8 or fp8) and, with dynamic
scales, one scale per token and KV head; attention/kv_quant.py is the reference
(the same fp32 operations: the codes are equal).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention import KVCache, QuantKVCache
from ..attention.kv_quant import QMAX
from . import next_power_of_2


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr,
    k_stride, v_stride, values_offset, row_size,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        cols = tl.arange(0, BLOCK)
        mask = cols < row_size
        k = tl.load(k_ptr + token * k_stride + cols, mask=mask)
        v = tl.load(v_ptr + token * v_stride + cols, mask=mask)
        dst = cache_ptr + slot * row_size + cols
        tl.store(dst, k.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + values_offset, v.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _round_to_e4m3(y):
    """y (fp32, |y| <= 448) rounded to nearest even on the float8 e4m3 grid, so that the cast after
    it is exact: Triton's interpreter rounds fp8 casts without carrying into the exponent."""
    bits = y.to(tl.int32, bitcast=True)
    biased = tl.maximum((bits >> 23) & 0xFF, 127 - 6)  # below 2^-6 e4m3 is subnormal: steps of 2^-9
    step = ((biased - 3) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits: 2^(exponent - 3)
    t = tl.abs(y) * ((257 - biased) << 23).to(tl.float32, bitcast=True)  # / step, exact: powers of two
    r = tl.floor(t + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    r = tl.where(((r - t) == 0.5) & odd, r - 1.0, r) * step  # a tie goes to the even neighbour
    # y's sign bit on |result| (Triton's -x is 0 - x: it would lose the -0.0 the cast gives tiny negatives)
    return (r.to(tl.int32, bitcast=True) | ((bits >> 31) << 31)).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_rows(x, scale, QMAX: tl.constexpr, INT8: tl.constexpr):
    """Codes of x [BLOCK_H, BLOCK_D] (fp32) under scale [BLOCK_H, 1] or a scalar; fp32 values of the codes."""
    # correctly rounded as torch's x / s (Triton's `/` is approximate on a GPU); div_rn does not broadcast
    y = tl.div_rn(x, tl.where(scale > 0, scale, 1.0) + tl.zeros_like(x))
    if INT8:
        r = tl.minimum(tl.floor(tl.abs(y) + 0.5), QMAX)  # round half away from zero
        return tl.where(y < 0, -r, r)
    return _round_to_e4m3(tl.minimum(tl.maximum(y, -QMAX), QMAX))  # as torch's cast: to nearest even


@triton.jit
def _write_kv_quant_kernel(
    k_ptr, v_ptr, cache_ptr, scales_ptr, slot_ptr,
    k_stride, v_stride, values_offset, scales_offset, num_kv_heads,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    QMAX: tl.constexpr, INT8: tl.constexpr, PER_TOKEN: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)[:, None]  # [BLOCK_H, 1]
        dims = tl.arange(0, BLOCK_D)[None, :]  # [1, BLOCK_D]
        mask = (heads < num_kv_heads) & (dims < HEAD_DIM)
        cols = heads * HEAD_DIM + dims  # within the token's row of Hkv * D
        dst = cache_ptr + slot * num_kv_heads * HEAD_DIM + cols
        for i in tl.static_range(2):  # keys, then values
            if i == 0:
                x = tl.load(k_ptr + token * k_stride + cols, mask=mask, other=0.0).to(tl.float32)
            else:
                x = tl.load(v_ptr + token * v_stride + cols, mask=mask, other=0.0).to(tl.float32)
            if PER_TOKEN:  # absmax / qmax of each head's row, stored at [i, slot, head]
                scale = tl.div_rn(tl.max(tl.abs(x), axis=1), tl.full((BLOCK_H,), QMAX, tl.float32))[:, None]
                tl.store(scales_ptr + i * scales_offset + slot * num_kv_heads + heads, scale,
                         mask=heads < num_kv_heads)
            else:
                scale = tl.load(scales_ptr + i)
            codes = _quantize_rows(x, scale, QMAX, INT8)
            tl.store(dst + i * values_offset, codes.to(cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D], contiguous; or a QuantKVCache
    k: torch.Tensor,  # [T, Hkv, D], each token's row contiguous
    v: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T]; < 0: skip
) -> None:
    num_tokens = k.shape[0]
    row_size = k.shape[1] * k.shape[2]
    assert k.stride(1) == k.shape[2] and k.stride(2) == 1 and v.stride(1) == v.shape[2] and v.stride(2) == 1
    if isinstance(kv_cache, QuantKVCache):
        _write_quant(kv_cache, k, v, slot_mapping)
        return
    assert kv_cache.is_contiguous()
    if num_tokens:
        _write_kv_kernel[(num_tokens,)](
            k, v, kv_cache, slot_mapping, k.stride(0), v.stride(0), kv_cache[0].numel(), row_size,
            BLOCK=next_power_of_2(row_size), num_warps=4,
        )


def _write_quant(cache: QuantKVCache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    data, scales = cache
    num_tokens, num_kv_heads, head_dim = k.shape
    assert data.is_contiguous() and scales.is_contiguous() and scales.dtype == torch.float32
    if num_tokens:
        _write_kv_quant_kernel[(num_tokens,)](
            k, v, data, scales, slot_mapping, k.stride(0), v.stride(0), data[0].numel(),
            scales[0].numel() if cache.per_token else 0, num_kv_heads,
            HEAD_DIM=head_dim, BLOCK_H=next_power_of_2(num_kv_heads), BLOCK_D=next_power_of_2(head_dim),
            QMAX=QMAX[data.dtype], INT8=data.dtype == torch.int8, PER_TOKEN=cache.per_token, num_warps=4,
        )
