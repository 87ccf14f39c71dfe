"""The forward of a quantized layer on the GPU: which kernel runs each mode, by the number of rows M.

Chosen by measurement (tools/quant_kernels_gpu.py, docs/quant-kernels.md). Each path reads the layer's
stored tensors (formats.py) or a copy prepared once here (e.g. a library kernel's own packing).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import formats


def gpu_forward(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """forward(x [M, K]) -> [M, N] for a prepared QuantLinear on a CUDA device."""
    mode = layer.mode
    if mode == "int8_wo":
        return _int8_weight_only(layer)
    if mode == "int4":
        return _int4(layer)
    return _activation_quant(layer)


def _int8_weight_only(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:  # the scale is per output channel: applied after
        y = F.linear(x, layer.qweight.to(x.dtype)) * layer.scales.to(x.dtype)
        return y if layer.bias is None else y + layer.bias
    return forward


def _int4(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = formats.dequantize_int4(layer.qweight, layer.scales, layer.zeros, layer.perm).to(x.dtype)
        return F.linear(x, weight, layer.bias)
    return forward


def _activation_quant(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = layer.dequantized().to(x.dtype)
        return F.linear(layer._round_activations(x), weight, layer.bias)
    return forward
