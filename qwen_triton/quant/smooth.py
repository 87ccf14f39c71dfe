"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before int8 quantization.

For a linear layer y = x W^T with input channels j, s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha);
x / s times (W * s)^T computes the same y while x / s has smaller outliers. The division by s is folded into
whatever produced x, so nothing is added at run time:
  qkv_proj      <- input_layernorm's weight
  gate_up_proj  <- post_attention_layernorm's weight
  o_proj        <- the value rows of qkv_proj (attention output is a mix of values, channel by channel;
                   with grouped KV heads one s per KV-head channel, the max over the query heads sharing it)
  down_proj     <- the up rows of gate_up_proj (silu(gate) * up is linear in up)
"""
from __future__ import annotations

import torch

from .calibrate import ActivationStats

_FLOOR = 1e-5  # channels never seen active keep s from blowing up


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s float32 [K] for activation absmax [K] and weight [N, K]."""
    w_max = weight.float().abs().amax(dim=0).clamp_min(_FLOOR)  # [K]
    a_max = act_absmax.float().clamp_min(_FLOOR)
    return (a_max.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(_FLOOR)


@torch.no_grad()
def smooth_model(model, stats: ActivationStats, alpha: float) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant's scales into a float DecoderForCausalLM in place (see the module docstring).

    Returns each smoothed linear's activation absmax after smoothing (max|x_j| / s_j), for per-tensor
    activation scales."""
    cfg = model.config
    after: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        q, kv = cfg.q_size, cfg.kv_size
        # qkv_proj and gate_up_proj: 1/s into the RMSNorm before them.
        for name, norm, linear in ((f"layers.{i}.self_attn.qkv_proj", layer.input_layernorm, attn.qkv_proj),
                                   (f"layers.{i}.mlp.gate_up_proj", layer.post_attention_layernorm, mlp.gate_up_proj)):
            s = smoothing_factors(stats.act_absmax[name], linear.weight, alpha)
            norm.weight.div_(s.to(norm.weight.dtype))
            linear.weight.mul_(s.to(linear.weight.dtype))
            after[name] = stats.act_absmax[name] / s
        # o_proj: 1/s into the value rows of qkv_proj; s shared by the query heads of one KV head.
        name = f"layers.{i}.self_attn.o_proj"
        s = smoothing_factors(stats.act_absmax[name], attn.o_proj.weight, alpha)  # [H * D]
        group = cfg.num_heads // cfg.num_kv_heads
        s_kv = s.reshape(cfg.num_kv_heads, group, cfg.head_dim).amax(dim=1)  # [Hkv, D]
        _scale_rows(attn.qkv_proj, q + kv, q + 2 * kv, 1 / s_kv.reshape(-1))
        s_full = s_kv[:, None, :].expand(-1, group, -1).reshape(-1)  # [H * D]
        attn.o_proj.weight.mul_(s_full.to(attn.o_proj.weight.dtype))
        after[name] = stats.act_absmax[name] / s_full
        # down_proj: 1/s into the up rows of gate_up_proj.
        name = f"layers.{i}.mlp.down_proj"
        width = cfg.intermediate_size
        s = smoothing_factors(stats.act_absmax[name], mlp.down_proj.weight, alpha)  # [I]
        _scale_rows(mlp.gate_up_proj, width, 2 * width, 1 / s)
        mlp.down_proj.weight.mul_(s.to(mlp.down_proj.weight.dtype))
        after[name] = stats.act_absmax[name] / s
    return after


def _scale_rows(linear, start: int, end: int, factor: torch.Tensor) -> None:
    """Multiply output rows start..end-1 of a float linear (weight and bias) by factor [end - start]."""
    linear.weight[start:end].mul_(factor[:, None].to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias[start:end].mul_(factor.to(linear.bias.dtype))
