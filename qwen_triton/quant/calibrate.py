"""Statistics of a model's activations over the calibration prompts (calibration.py), for the build:
per-input-channel absmax of every linear layer's input (SmoothQuant, per-tensor activation scales) and the
absmax of the keys and values each layer writes to its KV cache (calibrated KV scales).

The model runs through LLMEngine.score: exactly the code path of a served prompt, on the CPU in float32.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..attention import AttentionMetadata

LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


@dataclass
class ActivationStats:
    """act_absmax: linear name (layers.{i}.self_attn.qkv_proj, ...) -> float32 [in_features].
    kv_absmax: float32 [num_layers, 2], the largest |key| and |value| each layer cached.
    tokens: how many tokens were run."""

    act_absmax: dict[str, torch.Tensor]
    kv_absmax: torch.Tensor
    tokens: int = 0


class _RecordKV:
    """An attention backend that records |k|, |v| maxima of one layer, then defers to the real one."""

    def __init__(self, inner, kv_absmax: torch.Tensor, layer: int):
        self.inner, self.kv_absmax, self.layer = inner, kv_absmax, layer
        self.name, self.supports_cuda_graphs = inner.name, False

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata, scale: float):
        row = self.kv_absmax[self.layer]  # [2]
        row[0] = torch.maximum(row[0], k.detach().abs().amax().float().cpu())
        row[1] = torch.maximum(row[1], v.detach().abs().amax().float().cpu())
        return self.inner.forward(q, k, v, kv_cache, meta, scale)


@torch.no_grad()
def collect_stats(engine, sequences: Iterable[list[int]]) -> ActivationStats:
    """Run each token sequence through `engine` (an LLMEngine) and gather ActivationStats.

    The engine's model is instrumented for the duration and restored after."""
    model = engine.runner.model
    num_layers = len(model.layers)
    stats = ActivationStats({}, torch.zeros(num_layers, 2))
    hooks, backends = [], []
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            module = layer.get_submodule(name)
            key = f"layers.{i}.{name}"
            hooks.append(module.register_forward_pre_hook(_absmax_hook(stats.act_absmax, key)))
        backends.append(layer.self_attn.attn_backend)
        layer.self_attn.attn_backend = _RecordKV(backends[-1], stats.kv_absmax, i)
    try:
        limit = engine.max_model_len
        for ids in sequences:
            ids = ids[:limit]
            if len(ids) >= 2:
                engine.score(ids)
                stats.tokens += len(ids)
    finally:
        for hook in hooks:
            hook.remove()
        for layer, backend in zip(model.layers, backends, strict=True):
            layer.self_attn.attn_backend = backend
    return stats


def _absmax_hook(table: dict[str, torch.Tensor], key: str):
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        amax = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()  # [in_features]
        table[key] = amax if key not in table else torch.maximum(table[key], amax)
    return hook
