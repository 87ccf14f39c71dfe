"""Linear layers over quantized weights (the stored formats of quant/formats.py), and the per-token
activation quantizer of w8a8 / fp8.

  int8_weight_linear(x, qweight int8 [N, K], scales f32 [N] or [1], bias)                 y = x @ (q * s)^T + b
  int4_weight_linear(x, qweight u8 [N, K/2], scales f32 [N, K/G], zeros u8 [N, K/G], G, bias)
                                                                         y = x @ ((q - z) * s)^T + b
  quantize_rows(x, kind, act_scale=None) -> (codes [M, K], scales f32 [M, 1] or [1, 1])

One kernel per weight format serves every M. Program (m, n, s) computes the output tile
[BLOCK_M, BLOCK_N] over K-slice s of `split_k` (float32 accumulation); the tile's product is either a
broadcast multiply and row sum (`use_dot` False: the GEMV shape for M of 1-4, no tensor cores) or tl.dot
with the weight tile dequantized in registers (`use_dot`). With split_k 1 the program writes y directly;
otherwise the partial sums go to a float32 workspace and are combined by a second kernel ("pass": partials
[split_k, M, N], summed, biased and rounded by split_k.reduce_split_k_kernel) or by atomic adds ("atomic": a zeroed
[M, N] sum, then cast). `choose_launch` picks the tile and split from (M, N, K) alone: the GEMV shape
(split-K, for M <= 16) or a tiled GEMM (M > 16, still split along K while the tiles do not fill the GPU).

The launch depends only on shapes, never on values (no host syncs), so CUDA graphs can capture it.
int4: the kernel reads even and odd input channels beside the low and high nibbles of each byte. When
BLOCK_K <= G a tile lies in one group, and the dequantization is factored out of the product:
sum_k (q_k - z) s x_k = s (sum_k q_k x_k - z sum_k x_k); otherwise scales and zeros are gathered per column.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import next_power_of_2
from .split_k import load_tile, reduce_split_k_kernel, store_tile, tile_product

_OUT_FINAL, _OUT_PARTIAL, _OUT_ATOMIC = 0, 1, 2
_ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: (y + M) - M rounds a float32 |y| < 2^22 to the nearest even integer


@dataclass(frozen=True)
class QuantLaunch:
    """How one quantized linear is launched (see the module docstring)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    use_dot: bool = False
    reduce: str = "pass"  # "pass" (second kernel) or "atomic": how split_k > 1 partial sums are combined
    num_warps: int = 4
    num_stages: int = 3


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def choose_split(programs: int, k: int, block_k: int, num_sms: int) -> int:
    """Smallest power-of-two split of K that gives >= 2 programs an SM, keeping >= 2 K-tiles a split."""
    split = 1
    while programs * split < 2 * num_sms and k // (2 * split) >= 2 * block_k:
        split *= 2
    return split


def choose_launch(m: int, n: int, k: int, bits: int, num_sms: int = 132, group_size: int = 128) -> QuantLaunch:
    """Default launch for an [m, k] x [n, k]^T product with `bits`-bit weights (8 or 4)."""
    max_k = group_size if bits == 4 else 512  # int4: a K tile inside one group (factored dequantization)
    if m == 1:
        cfg = QuantLaunch(1, 32 if bits == 8 else 64, min(256 if bits == 8 else 128, max_k))
    elif m <= 16:
        cfg = QuantLaunch(16, 64, min(128, max_k), use_dot=True)
    else:
        bm = 32 if m <= 32 else 64 if m <= 64 else 128
        cfg = QuantLaunch(bm, 64 if bm <= 64 else 128, min(64, max_k), use_dot=True,
                          num_warps=4 if bm <= 64 else 8)
    programs = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    return replace(cfg, split_k=choose_split(programs, k, cfg.block_k, num_sms))


# -- kernels -----------------------------------------------------------------------------------------------


@triton.jit
def _int8_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, out_ptr,
    M, N, K, k_per_split, x_stride, w_stride, s_stride, out_stride,
    HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    x_rows = x_ptr + rm[:, None].to(tl.int64) * x_stride  # [BM, 1]
    w_rows = w_ptr + rn[:, None].to(tl.int64) * w_stride  # [BN, 1]
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k0 = tl.multiple_of(k0, 16)  # k_per_split and BLOCK_K are multiples of 16
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < k_end  # EVEN_K: K tiles never cross a split's end
        x = load_tile(x_rows + rk[None, :], m_ok, k_ok, EVEN_K)  # [BM, BK]
        w = load_tile(w_rows + rk[None, :], n_ok, k_ok, EVEN_K)  # [BN, BK] int8
        acc = tile_product(acc, x, w, USE_DOT, DOT_FP32)
    scale = tl.load(s_ptr + rn * s_stride, mask=n_ok, other=0.0)  # [BN]; s_stride 0: one scale
    store_tile(acc * scale[None, :], b_ptr, out_ptr, rm, rn, m_ok, n_ok, M, N, out_stride, pid_s,
                HAS_BIAS, OUT_MODE)


@triton.jit
def _int4_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, out_ptr,
    M, N, K, k_per_split, x_stride, w_stride, sz_stride, out_stride,
    HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr,
    EVEN_K: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    x_rows = x_ptr + rm[:, None].to(tl.int64) * x_stride  # [BM, 1]
    w_rows = w_ptr + rn[:, None].to(tl.int64) * w_stride  # [BN, 1] packed bytes
    sz_off = rn.to(tl.int64) * sz_stride  # [BN] rows of scales / zeros
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k0 = tl.multiple_of(k0, 16)  # k_per_split and BLOCK_K are multiples of 16
        rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # [BKH] packed columns: inputs 2 rb and 2 rb + 1
        k_ok = rb < k_end // 2
        packed = load_tile(w_rows + rb[None, :], n_ok, k_ok, EVEN_K)  # [BN, BKH] uint8
        low, high = packed & 0xF, packed >> 4
        x_even = load_tile(x_rows + 2 * rb[None, :], m_ok, k_ok, EVEN_K)  # [BM, BKH]
        x_odd = load_tile(x_rows + 2 * rb[None, :] + 1, m_ok, k_ok, EVEN_K)
        if BLOCK_K <= GROUP:  # one group a tile (GROUP % BLOCK_K == 0): s (sum q x - z sum x)
            g = k0 // GROUP
            s = tl.load(s_ptr + sz_off + g, mask=n_ok, other=0.0)  # [BN]
            z = tl.load(z_ptr + sz_off + g, mask=n_ok, other=0).to(tl.float32)
            qx = tile_product(tl.zeros((BLOCK_M, BLOCK_N), tl.float32), x_even, low, USE_DOT, DOT_FP32)
            qx = tile_product(qx, x_odd, high, USE_DOT, DOT_FP32)
            x_sum = tl.sum(x_even.to(tl.float32) + x_odd.to(tl.float32), axis=1)  # [BM]
            acc += (qx - x_sum[:, None] * z[None, :]) * s[None, :]
        else:  # several groups a tile: dequantize each column
            sz = sz_off[:, None] + (2 * rb[None, :]) // GROUP  # [BN, BKH]
            s = tl.load(s_ptr + sz, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            z = tl.load(z_ptr + sz, mask=n_ok[:, None] & k_ok[None, :], other=0).to(tl.float32)
            acc = tile_product(acc, x_even, (low.to(tl.float32) - z) * s, USE_DOT, DOT_FP32)
            acc = tile_product(acc, x_odd, (high.to(tl.float32) - z) * s, USE_DOT, DOT_FP32)
    store_tile(acc, b_ptr, out_ptr, rm, rn, m_ok, n_ok, M, N, out_stride, pid_s, HAS_BIAS, OUT_MODE)


@triton.jit
def _round_to_e4m3(y):
    """float32 y (|y| <= 448) rounded to the nearest float8 e4m3 value (ties to even), still float32: the
    cast that follows is then exact (Triton's interpreter loses the carry when rounding into the next
    binade)."""
    exponent = tl.maximum(((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)  # e4m3 subnormals: 2^-9
    inv_ulp = ((127 + 3 - exponent) << 23).to(tl.float32, bitcast=True)  # 2^(3 - e): exact power of two
    return ((y * inv_ulp + 12582912.0) - 12582912.0) / inv_ulp  # 1.5 * 2^23 rounds to an even integer


@triton.jit
def _quantize_rows_kernel(x_ptr, codes_ptr, scales_ptr, act_scale_ptr, K, x_stride, codes_stride,
                          QMAX: tl.constexpr, IS_FP8: tl.constexpr, HAS_ACT_SCALE: tl.constexpr,
                          BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    rk = tl.arange(0, BLOCK)
    ok = rk < K
    x = tl.load(x_ptr + m * x_stride + rk, mask=ok, other=0.0).to(tl.float32)
    if HAS_ACT_SCALE:
        scale = tl.load(act_scale_ptr)
    else:
        scale = tl.maximum(tl.max(tl.abs(x), axis=0) / QMAX, 1e-12)
        tl.store(scales_ptr + m, scale)
    y = tl.minimum(tl.maximum(x / scale, -QMAX), QMAX)
    if IS_FP8:
        codes = _round_to_e4m3(y).to(tl.float8e4nv)
    else:
        codes = ((y + 12582912.0) - 12582912.0).to(tl.int8)  # round half to even, as torch.round
    tl.store(codes_ptr + m * codes_stride + rk, codes, mask=ok)


@triton.jit
def _dequant_int4_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, KH, w_stride, sz_stride, out_stride,
                         GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
    """out[n, 2j] and out[n, 2j + 1] from byte j of row n: (q - z) * s of their groups."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.program_id(1) * BLOCK_KH + tl.arange(0, BLOCK_KH)
    ok = (rn < N)[:, None] & (rb < KH)[None, :]
    packed = tl.load(w_ptr + rn[:, None].to(tl.int64) * w_stride + rb[None, :], mask=ok, other=0)
    sz = rn[:, None].to(tl.int64) * sz_stride + (2 * rb[None, :]) // GROUP  # both nibbles share a group
    s = tl.load(s_ptr + sz, mask=ok, other=0.0)
    z = tl.load(z_ptr + sz, mask=ok, other=0).to(tl.float32)
    low = ((packed & 0xF).to(tl.float32) - z) * s
    high = ((packed >> 4).to(tl.float32) - z) * s
    both = tl.interleave(low, high)  # [BLOCK_N, 2 * BLOCK_KH]: columns 2j, 2j + 1
    cols = 2 * tl.program_id(1) * BLOCK_KH + tl.arange(0, 2 * BLOCK_KH)
    dst = out_ptr + rn[:, None].to(tl.int64) * out_stride + cols[None, :]
    tl.store(dst, both.to(out_ptr.dtype.element_ty), mask=(rn < N)[:, None] & (cols < 2 * KH)[None, :])


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """formats.dequantize_int4 (without act-order) on the GPU in one pass: W [N, K] in `dtype` (into `out`
    when given). With cuBLAS after it, the int4 path for large batches, where a dequantizing GEMM loses."""
    n, kh = qweight.shape
    group = 2 * kh // scales.shape[1]
    out = torch.empty(n, 2 * kh, dtype=dtype, device=qweight.device) if out is None else out
    block_n, block_kh = 32, 64
    _dequant_int4_kernel[(triton.cdiv(n, block_n), triton.cdiv(kh, block_kh))](
        qweight, scales.contiguous(), zeros.contiguous(), out, n, kh, qweight.stride(0), scales.shape[1],
        out.stride(0), GROUP=group, BLOCK_N=block_n, BLOCK_KH=block_kh)
    return out


# -- host side ---------------------------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, K] with unit column stride (a copy only when it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch(kernel, x2: torch.Tensor, n: int, k: int, weight_args: tuple, weight_strides: tuple,
            bias: torch.Tensor | None, cfg: QuantLaunch, **constexprs) -> torch.Tensor:
    """Run `kernel` over the grid of `cfg` (and the split reduction): y [M, N] in x2's dtype."""
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0:
        return out
    if cfg.block_k % 16 or cfg.reduce not in ("pass", "atomic"):
        raise ValueError(f"block_k must be a multiple of 16 and reduce 'pass' or 'atomic': {cfg}")
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    splits = triton.cdiv(k, k_per_split)  # non-empty splits
    mode = _OUT_FINAL if splits == 1 else _OUT_PARTIAL if cfg.reduce == "pass" else _OUT_ATOMIC
    if mode == _OUT_PARTIAL:
        target = torch.empty(splits, m, n, dtype=torch.float32, device=x2.device)
    elif mode == _OUT_ATOMIC:
        target = torch.zeros(m, n, dtype=torch.float32, device=x2.device)
    else:
        target = out
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), splits)
    kernel[grid](
        x2, *weight_args, bias if bias is not None else x2, target, m, n, k, k_per_split, x2.stride(0),
        *weight_strides, target.stride(0), HAS_BIAS=bias is not None, OUT_MODE=mode, USE_DOT=cfg.use_dot,
        DOT_FP32=x2.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1",
        EVEN_K=k % cfg.block_k == 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **constexprs,
    )
    if mode == _OUT_PARTIAL:
        block = min(1024, next_power_of_2(n))
        reduce_split_k_kernel[(m, triton.cdiv(n, block))](
            target, bias if bias is not None else target, out, m, n, out.stride(0), splits,
            HAS_BIAS=bias is not None, BLOCK=block)
    elif mode == _OUT_ATOMIC:
        out.copy_(target)
    return out


def int8_weight_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                       bias: torch.Tensor | None = None, launch: QuantLaunch | None = None) -> torch.Tensor:
    """y = x @ (qweight * scales[:, None])^T + bias: x [..., K] (bf16/fp16/fp32), qweight int8 [N, K],
    scales float32 [N] (per channel) or [1] -> [..., N] in x's dtype. `launch`: None picks choose_launch."""
    x2 = _rows(x)
    n, k = qweight.shape
    if x2.shape[1] != k or qweight.stride(1) != 1:
        raise ValueError(f"x [..., {x2.shape[1]}] does not match a contiguous int8 weight [{n}, {k}]")
    cfg = launch or choose_launch(x2.shape[0], n, k, 8, _num_sms(x.device))
    s_stride = 0 if scales.numel() == 1 else scales.stride(0)
    out = _launch(_int8_kernel, x2, n, k, (qweight, scales), (qweight.stride(0), s_stride), bias, cfg)
    return out.view(*x.shape[:-1], n)


def int4_weight_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                       group_size: int, bias: torch.Tensor | None = None,
                       launch: QuantLaunch | None = None) -> torch.Tensor:
    """y = x @ W^T + bias with W[:, k] = (q[:, k] - zeros[:, k // G]) * scales[:, k // G] (formats.py's
    int4: qweight uint8 [N, K // 2], column 2j in the low nibble; scales float32 and zeros uint8
    [N, K // G]); act-order is the caller's (pass x[:, perm]). x [..., K] -> [..., N] in x's dtype."""
    x2 = _rows(x)
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    if x2.shape[1] != k or k % group_size or scales.shape != (n, k // group_size) or zeros.shape != scales.shape:
        raise ValueError(f"int4 shapes do not fit: x [..., {x2.shape[1]}], qweight {tuple(qweight.shape)}, "
                         f"scales {tuple(scales.shape)}, zeros {tuple(zeros.shape)}, group {group_size}")
    cfg = launch or choose_launch(x2.shape[0], n, k, 4, _num_sms(x.device), group_size)
    if cfg.block_k <= group_size and group_size % cfg.block_k:
        raise ValueError(f"block_k {cfg.block_k} must divide the group size {group_size} (or exceed it)")
    if scales.stride(0) != zeros.stride(0) or scales.stride(1) != 1 or zeros.stride(1) != 1:
        scales, zeros = scales.contiguous(), zeros.contiguous()
    out = _launch(_int4_kernel, x2, n, k, (qweight, scales, zeros), (qweight.stride(0), scales.stride(0)),
                  bias, cfg, GROUP=group_size)
    return out.view(*x.shape[:-1], n)


def quantize_rows(x: torch.Tensor, kind: str, act_scale: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """formats.quantize_activations in one pass: x [M, K] -> (codes [M, K] int8 ("int8") or float8_e4m3fn
    ("fp8"), scales float32 [M, 1] per token, or [1, 1] = act_scale when one is given)."""
    x2 = _rows(x)
    m, k = x2.shape
    is_fp8 = kind == "fp8"
    codes = torch.empty(m, k, dtype=torch.float8_e4m3fn if is_fp8 else torch.int8, device=x.device)
    if act_scale is not None:
        scales = act_scale.float().reshape(1, 1)
    else:
        scales = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m:
        block = next_power_of_2(k)
        _quantize_rows_kernel[(m,)](x2, codes, scales, scales, k, x2.stride(0), codes.stride(0),
                                    QMAX=448.0 if is_fp8 else 127.0, IS_FP8=is_fp8,
                                    HAS_ACT_SCALE=act_scale is not None, BLOCK=block,
                                    num_warps=8 if block >= 4096 else 4)
    return codes, scales
