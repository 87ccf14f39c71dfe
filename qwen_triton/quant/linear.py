"""Quantized linear layers: the run-time half of each mode (the build's quantizers are formats.py).

Each module holds its stored tensors as buffers under the names formats.py gives (qweight, scales, zeros,
perm, act_scale, bias), so a quantized checkpoint loads like any state dict. `prepare()` runs once after the
weights are in place and picks how forward computes:
  - "torch": the reference, any device: the weight dequantized once to the model's dtype and kept
    (no memory saved: the CPU path, and what the kernels are tested against); w8a8 and fp8 round each
    activation row through their format first, so the numbers are those of the quantized kernels;
  - "kernels": the GPU kernels chosen by measurement (docs/quant-kernels.md), reading the stored tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import formats
from .spec import INT4_MODES, QuantSpec


class QuantLinear(nn.Module):
    """Base of the quantized layers: y = x @ W^T + b with W kept in a quantized format.

    x: [M, in_features] in the model's dtype -> [M, out_features] in the same dtype."""

    mode = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype | None):
        super().__init__()
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        self._forward = self._unprepared

    def _unprepared(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"{type(self).__name__}.prepare() was not called after loading the weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, float32 [out_features, in_features] in input order."""
        raise NotImplementedError

    def quantize_from(self, weight: torch.Tensor) -> None:
        """Fill the stored tensors from a float weight [N, K] (random-weight benchmarks, tests)."""
        raise NotImplementedError

    def prepare(self, kernels: str = "torch") -> None:
        """Choose the forward path once the stored tensors hold their values ("torch" or "kernels")."""
        if kernels == "torch":
            weight = self.dequantized().to(self.dtype or torch.float32)
            self._forward = lambda x: F.linear(self._round_activations(x), weight, self.bias)
            return
        from .dispatch import gpu_forward

        self._forward = gpu_forward(self)

    def _round_activations(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _set(self, **tensors: torch.Tensor) -> None:
        for name, value in tensors.items():
            getattr(self, name).copy_(value)

    def extra_repr(self) -> str:
        return f"{self.mode}, in_features={self.in_features}, out_features={self.out_features}"


class Int8WeightLinear(QuantLinear):
    """int8_wo: int8 weights, float32 scales per output channel."""

    mode = "int8_wo"

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype=None, spec: QuantSpec | None = None):
        super().__init__(in_features, out_features, bias, dtype)
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32))

    def dequantized(self) -> torch.Tensor:
        return formats.dequantize_int8(self.qweight, self.scales)

    def quantize_from(self, weight: torch.Tensor) -> None:
        self._set(**formats.quantize_int8(weight))


class Int4WeightLinear(QuantLinear):
    """int4_wo, gptq, awq: 4-bit codes, group-wise float32 scales and integer zero points.

    With act-order (GPTQ desc_act) the stored columns are the input channels reordered by `perm`."""

    mode = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype=None, spec: QuantSpec | None = None):
        super().__init__(in_features, out_features, bias, dtype)
        spec = spec or QuantSpec(weights="int4_wo")
        self.group_size = spec.group_size
        if in_features % self.group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {self.group_size}")
        groups = in_features // self.group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float32))
        self.register_buffer("zeros", torch.empty(out_features, groups, dtype=torch.uint8))
        # act-order: stored column j is input channel perm[j] (None: the input order)
        self.register_buffer("perm", torch.empty(in_features, dtype=torch.int32) if spec.act_order else None)

    def dequantized(self) -> torch.Tensor:
        return formats.dequantize_int4(self.qweight, self.scales, self.zeros, self.perm)

    def quantize_from(self, weight: torch.Tensor) -> None:
        if self.perm is not None:
            self.perm.copy_(torch.arange(self.in_features, dtype=torch.int32))
        self._set(**formats.quantize_int4(weight, self.group_size))


class _ActivationQuantLinear(QuantLinear):
    """w8a8 and fp8: weights and activations quantized; scales per channel or per tensor."""

    kind = ""  # formats' activation kind: "int8" or "fp8"
    code_dtype = torch.int8

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype=None, spec: QuantSpec | None = None):
        super().__init__(in_features, out_features, bias, dtype)
        spec = spec or QuantSpec(weights=self.mode)
        self.per_tensor_weight = spec.weight_scales == "per_tensor"
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=self.code_dtype))
        self.register_buffer("scales", torch.empty(1 if self.per_tensor_weight else out_features, dtype=torch.float32))
        # one calibrated activation scale (None: per token, computed from each row)
        self.register_buffer("act_scale", torch.empty(1, dtype=torch.float32)
                             if spec.act_scales == "per_tensor" else None)

    def _round_activations(self, x: torch.Tensor) -> torch.Tensor:
        return formats.fake_quantize_activations(x, self.kind, self.act_scale).to(x.dtype)


class W8A8Linear(_ActivationQuantLinear):
    """w8a8 (SmoothQuant): int8 weights and int8 activations; the smoothing is folded in by the build."""

    mode, kind, code_dtype = "w8a8", "int8", torch.int8

    def dequantized(self) -> torch.Tensor:
        return formats.dequantize_int8(self.qweight, self.scales)

    def quantize_from(self, weight: torch.Tensor) -> None:
        self._set(**formats.quantize_int8(weight, self.per_tensor_weight))


class FP8Linear(_ActivationQuantLinear):
    """fp8: float8 e4m3 weights and activations."""

    mode, kind, code_dtype = "fp8", "fp8", formats.FP8_DTYPE

    def dequantized(self) -> torch.Tensor:
        return formats.dequantize_fp8(self.qweight, self.scales)

    def quantize_from(self, weight: torch.Tensor) -> None:
        self._set(**formats.quantize_fp8(weight, self.per_tensor_weight))


def linear_class(mode: str) -> type[QuantLinear]:
    if mode in INT4_MODES:
        return Int4WeightLinear
    classes = {"int8_wo": Int8WeightLinear, "w8a8": W8A8Linear, "fp8": FP8Linear}
    if mode not in classes:
        raise ValueError(f"no quantized linear layer for mode {mode!r}")
    return classes[mode]


def make_linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype | None,
                spec: QuantSpec | None) -> nn.Module:
    """nn.Linear, or the quantized layer of spec.weights (a spec of weights "none" gives nn.Linear)."""
    if spec is None or spec.weights == "none":
        return nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    return linear_class(spec.weights)(in_features, out_features, bias, dtype, spec)


def quantized_layers(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def prepare_model(model: nn.Module, kernels: str) -> None:
    """prepare() every quantized layer of `model` ("torch" or "kernels")."""
    for layer in quantized_layers(model):
        layer.prepare(kernels)
