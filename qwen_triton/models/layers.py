"""The small building blocks of a decoder layer, in plain torch.

Each is a module-level function (the seam a fused GPU kernel replaces) plus,
where it owns weights or buffers, a thin nn.Module around it. The numerics
follow transformers: RMSNorm and the rotary angles are computed in float32.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RopeConfig

# -- RMSNorm -------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim.

    Normalised in float32, cast back to x's dtype, then scaled by the weight
    (the order transformers uses, so bf16 results match it too).
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): x, residual [..., C]."""
    x = x + residual
    return rms_norm(x, weight, eps), x


class RMSNorm(nn.Module):
    """RMSNorm with an optional fused residual add.

    forward(x) -> norm(x).
    forward(x, residual) -> (norm(x + residual), x + residual): the add and
    the norm are one step, so a fused kernel can replace both at once.
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype | None = None, ops: LayerOps | None = None):
        super().__init__()
        self.eps = eps
        self.ops = ops or TORCH_OPS
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)


# -- rotary embedding ----------------------------------------------------------


def _rope_exponents(dim: int, device=None) -> torch.Tensor:
    """2i / dim for i < dim / 2: float32 [dim / 2], as transformers builds it."""
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim


def compute_inv_freq(rope: RopeConfig, dim: int, device=None) -> torch.Tensor:
    """Inverse frequencies float32 [dim / 2], exactly as transformers computes them
    for rope types "default", "linear" and "llama3"."""
    inv_freq = 1.0 / (rope.theta ** _rope_exponents(dim, device))
    if rope.kind == "default":
        return inv_freq
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        return _llama3_inv_freq(inv_freq, rope)
    raise ValueError(f"unsupported rope kind {rope.kind!r}")


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, the band
    between interpolated smoothly (transformers' _compute_llama3_parameters)."""
    old_len = rope.original_max_position
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, float32 [T, dim].

    positions: int [T]. inv_freq: float32 [dim / 2] shared by all tokens, or
    [T, dim / 2] per token (dynamic NTK gives each sequence its own base).
    """
    freqs = positions.float()[:, None] * inv_freq  # [T, dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout: both halves share an angle
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[a, b] -> [-b, a] on the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, in float32, cast back to x's dtype.

    x: [T, heads, D]; cos, sin: float32 [T, D].
    """
    x32 = x.float()
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


def apply_rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries [T, H, D] and keys [T, Hkv, D] by float32 cos, sin [T, D].

    The contract a kernel may implement in place: callers use only the returned
    tensors and must not rely on q and k being left unchanged.
    """
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class RotaryEmbedding(nn.Module):
    """Holds the inverse frequencies (float32 buffer) and turns positions into cos/sin."""

    def __init__(self, head_dim: int, rope: RopeConfig, device=None):
        super().__init__()
        self.head_dim = head_dim
        self.rope = rope
        self.register_buffer("inv_freq", compute_inv_freq(rope, head_dim, device), persistent=False)

    def reset_parameters(self) -> None:
        """Recompute the buffer in place (after `to_empty` left it uninitialised)."""
        self.inv_freq.copy_(compute_inv_freq(self.rope, self.head_dim, self.inv_freq.device))

    def forward(
        self, positions: torch.Tensor, base_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin float32 [T, head_dim] for int positions [T].

        base_scale: optional float [T], the factor each token's RoPE base is
        multiplied by (the original Qwen's dynamic NTK). Only for kind "default".
        """
        if base_scale is None:
            return rope_cos_sin(positions, self.inv_freq)
        if self.rope.kind != "default":
            raise ValueError("a per-token RoPE base needs rope kind 'default'")
        # Rounded to float32 before the power, as `python_float ** float32_tensor` does.
        base = (self.rope.theta * base_scale.double()).float()  # [T]
        inv_freq = 1.0 / (base[:, None] ** _rope_exponents(self.head_dim, positions.device))  # [T, D/2]
        return rope_cos_sin(positions, inv_freq)


# -- MLP activation ------------------------------------------------------------


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where gate_up = [gate | up] on the last dim: [..., 2I] -> [..., I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# -- the seams a fused kernel replaces ----------------------------------------


@dataclass(frozen=True)
class LayerOps:
    """The elementwise steps of a decoder layer and its unquantized projections, behind one interface.

    TORCH_OPS (the functions above) is the reference and the CPU path;
    qwen_triton.kernels supplies Triton versions with the same signatures,
    compared with these by tests/test_kernels.py.
    """

    name: str
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    add_rms_norm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    # the unquantized projections: x [T, K], weight [N, K], bias [N] or None -> [T, N]
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] = F.linear


TORCH_OPS = LayerOps("torch", rms_norm, add_rms_norm, apply_rotary_qk, silu_and_mul)


def triton_layer_ops() -> LayerOps:
    """The fused Triton kernels (imports triton)."""
    from ..kernels import activation, gemv, norm, rotary

    return LayerOps("triton", norm.rms_norm, norm.add_rms_norm, rotary.apply_rotary_, activation.silu_and_mul,
                    gemv.linear)


def get_layer_ops(name: str, device: torch.device) -> LayerOps:
    """"torch", "triton", or "auto" (Triton on a CUDA device when it is installed)."""
    from ..kernels import triton_available

    if name == "auto":
        name = "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "torch":
        return TORCH_OPS
    if name == "triton":
        return triton_layer_ops()
    raise ValueError(f"unknown layer kernels {name!r}; expected 'auto', 'torch' or 'triton'")
