"""The stored formats of quantized weights and activations, and their plain-torch references.

Every linear layer `p` (our parameter names, e.g. layers.0.self_attn.qkv_proj) of weight W [N, K] is stored as:
  int8 (int8_wo, w8a8)   p.qweight int8 [N, K], p.scales float32 [N] (per channel) or [1] (per tensor):
                         W = qweight * scales[:, None]
  int4 (int4_wo, gptq, awq)
                         p.qweight uint8 [N, K // 2]: two 4-bit codes a byte, column 2j in the low nibble,
                         2j + 1 in the high one; p.scales float32 [N, K // G]; p.zeros uint8 [N, K // G]
                         (integer zero points 0..15): W[:, k] = (q[:, k] - zeros[:, k // G]) * scales[:, k // G];
                         p.perm int32 [K] only for GPTQ's act-order: stored column j is input channel perm[j],
                         so y = x[:, perm] @ W_stored^T
  fp8                    p.qweight float8_e4m3fn [N, K], p.scales float32 [N] or [1]
  w8a8 / fp8 with calibrated per-tensor activations: p.act_scale float32 [1]
  p.bias, when the layer has one, stays in the model's dtype.

Activations of w8a8 and fp8 are quantized per token (dynamic: absmax of each row) or with p.act_scale.
These functions are the references that the GPU kernels (qwen_triton/kernels/quant_linear.py) are tested
against, and the CPU path.
"""
from __future__ import annotations

import torch

INT8_MAX = 127.0
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
INT4_MAX = 15
_EPS = 1e-12  # floor of a scale: an all-zero row or group must not divide by zero


# -- int4 packing ----------------------------------------------------------------------------------------


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15, uint8 [N, K] (K even) -> uint8 [N, K // 2], even columns in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> codes uint8 [N, K]."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


# -- weight quantizers (build time) and dequantizers (references) -----------------------------------------


def quantize_int8(weight: torch.Tensor, per_tensor: bool = False) -> dict[str, torch.Tensor]:
    """Symmetric int8, absmax / 127 per output channel (or for the whole tensor): W [N, K] float."""
    w = weight.float()
    amax = w.abs().amax() if per_tensor else w.abs().amax(dim=1)
    scales = (amax / INT8_MAX).clamp_min(_EPS).reshape(-1)  # [N] or [1]
    q = torch.round(w / scales[:, None] if not per_tensor else w / scales).clamp(-INT8_MAX, INT8_MAX)
    return {"qweight": q.to(torch.int8), "scales": scales}


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 [N, K] from int8 [N, K] and scales [N] or [1]."""
    return qweight.float() * (scales[:, None] if scales.numel() > 1 else scales)


def quantize_int4(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Asymmetric round-to-nearest 4-bit over groups of `group_size` input channels: W [N, K] float.

    Each group maps [min, max] (widened to include 0) onto 0..15: scale = (max - min) / 15,
    zero = round(-min / scale), q = clamp(round(w / scale) + zero, 0, 15)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of the group size {group_size}")
    w = weight.float().reshape(n, k // group_size, group_size)
    lo = w.amin(dim=-1).clamp_max(0.0)
    hi = w.amax(dim=-1).clamp_min(0.0)
    scales = ((hi - lo) / INT4_MAX).clamp_min(_EPS)  # [N, K / G]
    zeros = torch.round(-lo / scales).clamp(0, INT4_MAX)
    q = torch.clamp(torch.round(w / scales[..., None]) + zeros[..., None], 0, INT4_MAX)
    return {"qweight": pack_int4(q.reshape(n, k)), "scales": scales, "zeros": zeros.to(torch.uint8)}


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    perm: torch.Tensor | None = None) -> torch.Tensor:
    """float32 W [N, K] in the model's input-channel order (act-order undone when `perm` is given)."""
    q = unpack_int4(qweight).float()  # [N, K]
    group = q.shape[1] // scales.shape[1]
    w = (q - zeros.float().repeat_interleave(group, dim=1)) * scales.float().repeat_interleave(group, dim=1)
    if perm is None:
        return w
    out = torch.empty_like(w)
    out[:, perm.long()] = w  # stored column j is input channel perm[j]
    return out


def quantize_fp8(weight: torch.Tensor, per_tensor: bool = False) -> dict[str, torch.Tensor]:
    """float8 e4m3 with absmax / 448 scales per output channel (or per tensor): W [N, K] float."""
    w = weight.float()
    amax = w.abs().amax() if per_tensor else w.abs().amax(dim=1)
    scales = (amax / FP8_MAX).clamp_min(_EPS).reshape(-1)
    q = (w / scales[:, None] if not per_tensor else w / scales).clamp(-FP8_MAX, FP8_MAX)
    return {"qweight": q.to(FP8_DTYPE), "scales": scales}


def dequantize_fp8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return qweight.float() * (scales[:, None] if scales.numel() > 1 else scales)


# -- activations (run time) -------------------------------------------------------------------------------


def quantize_activations(x: torch.Tensor, kind: str, act_scale: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] int8 or float8_e4m3fn, scales float32 [M, 1] or [1, 1]).

    kind "int8" or "fp8". act_scale float32 [1]: one calibrated scale for every token; None: per token."""
    qmax = INT8_MAX if kind == "int8" else FP8_MAX
    x32 = x.float()
    if act_scale is None:
        scales = (x32.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(_EPS)  # [M, 1]
    else:
        scales = act_scale.float().reshape(1, 1)
    y = (x32 / scales).clamp(-qmax, qmax)
    return (torch.round(y).to(torch.int8) if kind == "int8" else y.to(FP8_DTYPE)), scales


def fake_quantize_activations(x: torch.Tensor, kind: str, act_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x rounded through the activation format and back, float32 [M, K]: the CPU path of w8a8 and fp8."""
    codes, scales = quantize_activations(x, kind, act_scale)
    return codes.float() * scales
