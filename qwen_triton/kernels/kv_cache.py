"""Store this step's keys and values into the paged cache, one program per token.

Tokens whose slot is negative are skipped: the padded rows of a CUDA graph
batch write nothing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

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


def write_kv_cache(
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, Hkv, D], contiguous
    k: torch.Tensor,  # [T, Hkv, D], each token's row contiguous
    v: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T]; < 0: skip
) -> None:
    num_tokens = k.shape[0]
    row_size = k.shape[1] * k.shape[2]
    assert kv_cache.is_contiguous()
    assert k.stride(1) == k.shape[2] and k.stride(2) == 1 and v.stride(1) == v.shape[2] and v.stride(2) == 1
    if num_tokens:
        _write_kv_kernel[(num_tokens,)](
            k, v, kv_cache, slot_mapping, k.stride(0), v.stride(0), kv_cache[0].numel(), row_size,
            BLOCK=next_power_of_2(row_size), num_warps=4,
        )
