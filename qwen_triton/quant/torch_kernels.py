"""torch's own kernels for the quantized linear contracts of formats.py, to measure ours
(kernels/quant_linear.py) against (tools/quant_kernels_gpu.py) and as fallbacks.

Each mode has `prepare_*(stored tensors) -> dict` (run once at load time: repacking, transposed views,
scales in the layout the op wants) and `linear_*(x [..., K], prepared, bias=None) -> [..., N]` in x's dtype.

  int4 tinygemm  aten._weight_int4pack_mm (CUDA: bf16 only; N % 8, K % (inner_k_tiles * 16)) over
                 aten._convert_weight_to_int4pack of uint8 [N, K/2] whose EVEN column sits in the HIGH
                 nibble (ours is the low one: the bytes' nibbles are swapped); on the CPU the *_for_cpu
                 twins take int32 codes [N, K] (N % 16). scales_and_zeros [K/G, N, 2] in x's dtype, and the
                 op computes W = (q - 8) * scale + zero, so zero = (8 - z) * scale.
  int8 pack      torch._weight_int8pack_mm(x, int8 [N, K], scales [N] in x's dtype) (CUDA from torch 2.10)
  dequant        F.linear(x, formats.dequantize_*(...)) every call (what a plain torch path costs)
  w8a8           torch._int_mm(int8 [M, K], int8 [K, N] column-major) -> int32, times the token and channel
                 scales; CUDA wants M > 16 (rows are padded) and K, N multiples of 8
  fp8            torch._scaled_mm(fp8 [M, K], fp8 [K, N] column-major, scale_a, scale_b): rowwise (float32
                 [M, 1] and [1, N], bf16 out) or tensorwise (two float32 scalars); K and N multiples of 16
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import formats

Quantizer = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # formats.quantize_activations' contract


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _finish(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [M, N] (+ bias) in x's dtype, shaped [..., N]."""
    y = y if bias is None else y + bias
    return y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])


# -- int4 ------------------------------------------------------------------------------------------------


def prepare_int4_tinygemm(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                          inner_k_tiles: int = 8, dtype: torch.dtype = torch.bfloat16) -> dict:
    """formats' int4 (qweight uint8 [N, K/2], scales / zeros [N, K/G]) -> tinygemm's packed weight and
    scales_and_zeros [K/G, N, 2] in `dtype` (bf16 on CUDA)."""
    if qweight.device.type == "cpu":
        codes = formats.unpack_int4(qweight).to(torch.int32)  # [N, K]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, inner_k_tiles)
    else:
        swapped = ((qweight & 0x0F) << 4) | (qweight >> 4)  # even column into the high nibble
        packed = torch.ops.aten._convert_weight_to_int4pack(swapped.contiguous(), inner_k_tiles)
    s = scales.float()
    zero = (8.0 - zeros.float()) * s  # (q - z) s = (q - 8) s + (8 - z) s
    scales_and_zeros = torch.stack((s.t(), zero.t()), dim=-1).to(dtype).contiguous()
    return {"weight": packed, "scales_and_zeros": scales_and_zeros, "group_size": group_size}


def linear_int4_tinygemm(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    sz = prepared["scales_and_zeros"]
    x2 = _rows(x).to(sz.dtype).contiguous()
    op = (torch.ops.aten._weight_int4pack_mm_for_cpu if x.device.type == "cpu"
          else torch.ops.aten._weight_int4pack_mm)
    return _finish(op(x2, prepared["weight"], prepared["group_size"], sz), x, bias)


def prepare_int4_dequant(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict:
    return {"qweight": qweight, "scales": scales, "zeros": zeros}


def linear_int4_dequant(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    w = formats.dequantize_int4(prepared["qweight"], prepared["scales"], prepared["zeros"]).to(x.dtype)
    return _finish(F.linear(_rows(x), w), x, bias)


# -- int8 weight-only ------------------------------------------------------------------------------------


def prepare_int8(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> dict:
    """int8 [N, K] and scales [N] or [1] -> the weight and its [N] scales in `dtype` (the op wants x's)."""
    n = qweight.shape[0]
    return {"weight": qweight.contiguous(), "scales": scales.float().expand(n).to(dtype).contiguous()}


def linear_int8_pack(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    s = prepared["scales"]
    return _finish(torch._weight_int8pack_mm(_rows(x).to(s.dtype).contiguous(), prepared["weight"], s), x, bias)


def linear_int8_dequant(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    w = prepared["weight"].to(x.dtype) * prepared["scales"].to(x.dtype)[:, None]
    return _finish(F.linear(_rows(x), w), x, bias)


def linear_int8_scale_after(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    """gpt-fast's WeightOnlyInt8Linear: F.linear(x, q.to(x.dtype)) * scales (fused under torch.compile)."""
    y = F.linear(_rows(x), prepared["weight"].to(x.dtype)) * prepared["scales"].to(x.dtype)
    return _finish(y, x, bias)


# -- w8a8 and fp8 (activations quantized per token, or with a calibrated per-tensor scale) ---------------


def prepare_w8a8(qweight: torch.Tensor, scales: torch.Tensor, act_scale: torch.Tensor | None = None) -> dict:
    """int8 [N, K] -> its [K, N] column-major view for _int_mm, scales float32 [1, N] (or [1, 1])."""
    return {"weight_t": qweight.t(), "scales": scales.float().reshape(1, -1), "act_scale": act_scale}


def linear_w8a8(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None,
                quantize: Quantizer = formats.quantize_activations) -> torch.Tensor:
    codes, a_scales = quantize(_rows(x), "int8", prepared["act_scale"])  # [M, K] int8, [M, 1] or [1, 1]
    m = codes.shape[0]
    rows = max(m, 17) if x.device.type == "cuda" else m  # CUDA's _int_mm wants more than 16 rows
    rows = -(-rows // 8) * 8
    if rows != m:
        codes = torch.cat((codes, codes.new_zeros(rows - m, codes.shape[1])))
    acc = torch._int_mm(codes, prepared["weight_t"])[:m]  # int32 [M, N]
    return _finish(acc.float() * a_scales * prepared["scales"], x, bias)


def prepare_fp8(qweight: torch.Tensor, scales: torch.Tensor, act_scale: torch.Tensor | None = None) -> dict:
    """float8 [N, K] -> its [K, N] column-major view for _scaled_mm; tensorwise when the weight scale and
    the activation scale are both single, else rowwise (scales float32 [1, N])."""
    n = qweight.shape[0]
    tensorwise = scales.numel() == 1 and act_scale is not None
    w_scales = scales.float().reshape(()) if tensorwise else scales.float().expand(n).reshape(1, n).contiguous()
    return {"weight_t": qweight.t(), "scales": w_scales, "act_scale": act_scale, "tensorwise": tensorwise}


def linear_fp8(x: torch.Tensor, prepared: dict, bias: torch.Tensor | None = None,
               quantize: Quantizer = formats.quantize_activations) -> torch.Tensor:
    codes, a_scales = quantize(_rows(x), "fp8", prepared["act_scale"])  # [M, K] fp8, [M, 1] or [1, 1]
    if prepared["tensorwise"]:
        a_scales, out_dtype = a_scales.reshape(()), x.dtype
    else:
        a_scales, out_dtype = a_scales.expand(codes.shape[0], 1).contiguous(), torch.bfloat16  # rowwise: bf16
    y = torch._scaled_mm(codes, prepared["weight_t"], scale_a=a_scales, scale_b=prepared["scales"],
                         out_dtype=out_dtype)
    return _finish(y, x, bias)
