"""The pieces every split-K matrix-vector kernel here shares (kernels/quant_linear.py's quantized ones,
kernels/gemv.py's bf16 one): a tile's product, its masked load, its store as the result, a float32 partial
of one K split or an atomic add, and the pass that sums the partials. Each kernel's own loop stays its own."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_product(acc, x, w, USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr):
    """acc [BM, BN] += x [BM, BK] @ w [BN, BK]^T for integer or float w. DOT_FP32: the dot in float32 (x
    float32; also under the interpreter, whose bf16 tl.dot is wrong)."""
    if USE_DOT:
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    elif x.shape[0] == 1:  # one row: a plain 2-D multiply and row sum
        acc += tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
    else:
        acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def load_tile(ptrs, row_ok, col_ok, EVEN_K: tl.constexpr):
    """A [rows, cols] tile; with EVEN_K the columns need no mask, so the loads stay vectorized."""
    if EVEN_K:
        return tl.load(ptrs, mask=row_ok[:, None], other=0)
    return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0)


@triton.jit
def store_tile(acc, b_ptr, out_ptr, rm, rn, m_ok, n_ok, M, N, out_stride, pid_s,
                HAS_BIAS: tl.constexpr, OUT_MODE: tl.constexpr):
    """The tile's float32 sums: y (+ bias, x's dtype), a partial of split pid_s, or an atomic add."""
    mask = m_ok[:, None] & n_ok[None, :]
    if OUT_MODE == 1:  # partials [split_k, M, N] float32
        ptrs = out_ptr + (pid_s.to(tl.int64) * M + rm[:, None]) * N + rn[None, :]
        tl.store(ptrs, acc, mask=mask)
    else:
        if HAS_BIAS:
            bias = tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
            acc += tl.where(pid_s == 0, 1.0, 0.0) * bias[None, :]
        ptrs = out_ptr + rm[:, None].to(tl.int64) * out_stride + rn[None, :]
        if OUT_MODE == 2:
            tl.atomic_add(ptrs, acc, mask=mask)
        else:
            tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def reduce_split_k_kernel(part_ptr, b_ptr, out_ptr, M, N, out_stride, splits,
                          HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out[m, n] = sum_s part[s, m, n] (+ bias[n]), rounded to out's dtype."""
    m = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = rn < N
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in range(splits):
        acc += tl.load(part_ptr + (s * M + m) * N + rn, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * out_stride + rn, acc.to(out_ptr.dtype.element_ty), mask=ok)
