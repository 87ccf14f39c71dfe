"""A 16-bit (bf16 / fp16, also fp32) weight GEMV for a few rows: y [M, N] = x [M, K] @ W [N, K]^T + b, made
to stream W at the HBM copy bandwidth for the batch-1 decode (M 1..8).

  gemv(x, weight, bias, *, block_n, block_k, split_k, num_warps, num_stages, use_dot=False)
  choose_gemv_launch(m, n, k, num_sms) -> GemvLaunch      (the launch measured fastest on an H200)
  linear(x, weight, bias)                                 (F.linear, through gemv for 1-8 rows on CUDA)
  gemv_reference(x, weight, bias)                         (F.linear in float32, cast back)

Program (n, s, m) reads the weight tile rows [n * BLOCK_N, +BLOCK_N) over K-slice s of `split_k`, each row
contiguous along K (nn.Linear's row-major [N, K]) so every thread issues 16-byte loads; the weight is read
exactly once (rows of x, a few KB, stay in L2). Split-K gives even a 4096 x 4096 matrix enough programs in
flight on 132 SMs: with split_k > 1 each program writes float32 partials [split_k, M, N] and the reduce
kernel of quant_linear.py sums them, adds the bias and rounds (no atomics, deterministic); split_k 1 writes
y directly. The tile's product is a broadcast multiply (`use_dot` False; for one row the [BN, BK] products
are summed along K only once, after the loop) or tl.dot with the rows padded to 16 (`use_dot`: for M of
4-8, where the multiply-adds of the broadcast form start to cost as much as the loads).
The launch depends only on shapes (no host syncs), so CUDA graphs can capture it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import next_power_of_2
from .split_k import reduce_split_k_kernel, store_tile, tile_product

_MAX_BLOCK_M = 8  # rows a broadcast-product program holds; more rows take more programs (M > 8 is not our case)


@dataclass(frozen=True)
class GemvLaunch:
    """How one GEMV is launched (see the module docstring); the keyword arguments of gemv()."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    use_dot: bool = False


def _largest_dividing(k: int, options: tuple[int, ...]) -> int:
    """The first of `options` (largest first) that divides k, else the last: unmasked K tiles when possible."""
    return next((o for o in options if k % o == 0), options[-1])


def choose_gemv_launch(m: int, n: int, k: int, num_sms: int = 132) -> GemvLaunch:
    """The launch for an [m, k] x [n, k]^T product, from the sweep of tools/gemv_benchmark.py on an H200
    (2026-12-02, Qwen-7B's qkv / o / gate_up / down / lm_head, bf16; within 3% of each shape's best there):
      m == 1: the broadcast product over 8 weight rows and 1,024-column K tiles, one split (qkv 27.1 us
        against cuBLAS's 27.3, o 11.4 against 13.9, lm_head 278 against 285); where 1,024 does not divide
        K (down's 11,008), 16 rows, the largest K tile that divides and two splits (27.9 against 27.7).
      m 2-8: tl.dot over 64 weight rows and 128-column K tiles, split along K until the programs fill the
        SMs once (o and down: 64 programs, 4 splits, 12.8 and 25.8 us against 13.7 and 28.4; qkv, gate_up
        and lm_head: one split, 27.0, 43.4 and 277 us against 28.4, 45.4 and 286)."""
    if m == 1:
        if k % 1024 == 0:
            return GemvLaunch(8, 1024, 1, num_warps=4, num_stages=3)
        return GemvLaunch(16, _largest_dividing(k, (512, 256, 128, 64, 32, 16)), 2, num_warps=4, num_stages=3)
    split = 1
    while triton.cdiv(n, 64) * split < num_sms and k // (2 * split) >= 2 * 128:
        split *= 2
    return GemvLaunch(64, 128, split, num_warps=4, num_stages=3, use_dot=True)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through gemv() where it was measured faster than cuBLAS: 1-8 rows of
    bf16 / fp16 on CUDA, K a multiple of 16, weight contiguous. The choice reads shapes and dtypes only
    (no host sync), so a CUDA graph captures it; x [M, K], weight [N, K], bias [N] -> [M, N]."""
    m, k = x.shape if x.dim() == 2 else (0, 0)
    if (0 < m <= _MAX_BLOCK_M and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and k % 16 == 0 and weight.is_contiguous() and (bias is None or bias.is_contiguous())):
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return gemv(x, weight, bias, **vars(choose_gemv_launch(m, weight.shape[0], k, sms)))
    return F.linear(x, weight, bias)


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ weight^T + bias in float32, cast back to x's dtype: what gemv() is held to."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return y.to(x.dtype)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, k_per_split, x_stride, w_stride, out_stride,
    HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n, pid_s, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    x_rows = x_ptr + rm[:, None].to(tl.int64) * x_stride  # [BM, 1]
    w_rows = w_ptr + rn[:, None].to(tl.int64) * w_stride  # [BN, 1]
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_1 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)  # one row: products summed along K after the loop
    for k0 in range(k_start, k_end, BLOCK_K):
        k0 = tl.multiple_of(k0, 16)  # k_per_split and BLOCK_K are multiples of 16
        rk = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:  # K tiles never cross a split's end: only the (uniform along K) row masks, loads stay wide
            w = tl.load(w_rows + rk[None, :], mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_rows + rk[None, :], mask=m_ok[:, None], other=0.0, eviction_policy="evict_last")
        else:
            k_ok = rk < k_end
            w = tl.load(w_rows + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0,
                        eviction_policy="evict_first")  # [BN, BK]
            x = tl.load(x_rows + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0,
                        eviction_policy="evict_last")  # [BM, BK]
        if BLOCK_M == 1 and not USE_DOT:
            acc_1 += w.to(tl.float32) * x.to(tl.float32)
        else:
            acc = tile_product(acc, x, w, USE_DOT, DOT_FP32)
    if BLOCK_M == 1 and not USE_DOT:
        acc += tl.sum(acc_1, axis=1)[None, :]
    # OUT_MODE 1: partials [split_k, M, N] float32, the reduce pass adds the bias; 0: y (one split)
    store_tile(acc, b_ptr, out_ptr, rm, rn, m_ok, n_ok, M, N, out_stride, pid_s, HAS_BIAS, OUT_MODE)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block_n: int, block_k: int,
           split_k: int, use_dot: bool) -> None:
    """Clear errors, each naming the argument at fault."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x [M, K] and weight [N, K] do not fit: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if weight.stride(1) != 1:
        raise ValueError(f"weight must be contiguous along K (stride {weight.stride()})")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.stride(0) != 1):
        raise ValueError(f"bias must be a contiguous [{weight.shape[0]}], got {tuple(bias.shape)}")
    if block_k % 16 or block_k < 16 or block_n < 1 or block_n & (block_n - 1) or split_k < 1:
        raise ValueError(f"block_k must be a multiple of 16, block_n a power of two, split_k >= 1: "
                         f"block_n {block_n}, block_k {block_k}, split_k {split_k}")
    if use_dot and block_n < 16:
        raise ValueError(f"use_dot needs block_n >= 16 (tl.dot's smallest tile), got {block_n}")


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, block_n: int,
         block_k: int, split_k: int = 1, num_warps: int = 4, num_stages: int = 3,
         use_dot: bool = False) -> torch.Tensor:
    """y = x @ weight^T + bias: x [M, K], weight [N, K] (same dtype, contiguous along K), bias [N] or None
    -> [M, N] in x's dtype, float32 accumulation. Launch settings as GemvLaunch (choose_gemv_launch gives a
    default: gemv(x, w, b, **vars(choose_gemv_launch(m, n, k, sms))))."""
    _check(x, weight, bias, block_n, block_k, split_k, use_dot)
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.copy_(torch.zeros_like(out) if bias is None else bias.expand(m, n))
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)  # non-empty splits only
    target = out if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
    block_m = 16 if use_dot else next_power_of_2(min(m, _MAX_BLOCK_M))
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    grid = (triton.cdiv(n, block_n), splits, triton.cdiv(m, block_m))
    _gemv_kernel[grid](
        x, weight, bias if bias is not None else x, target, m, n, k, k_per_split, x.stride(0),
        weight.stride(0), target.stride(0) if splits == 1 else n, HAS_BIAS=bias is not None,
        OUT_MODE=1 if splits > 1 else 0, USE_DOT=use_dot, DOT_FP32=x.dtype == torch.float32 or interpreted,
        EVEN_K=k % block_k == 0, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )
    if splits > 1:
        block = min(1024, next_power_of_2(n))
        reduce_split_k_kernel[(m, triton.cdiv(n, block))](
            target, bias if bias is not None else target, out, m, n, out.stride(0), splits,
            HAS_BIAS=bias is not None, BLOCK=block)
    return out
