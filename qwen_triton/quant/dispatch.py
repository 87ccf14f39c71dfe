"""The forward of a quantized layer on the GPU: which kernel runs each mode, by the number of rows M.

Chosen by measurement on an H200 at Qwen-7B's shapes (tools/quant_kernels_gpu.py; docs/quant-kernels.md):
  int8_wo  ours (kernels/quant_linear.py): M <= 16 the split-K 16-row dot tile (BLOCK_N 32, BLOCK_K 256),
           the fastest of every variant there (2.53 ms of linear layers a batch-1 step, bf16 3.85 ms);
           above, its tiled GEMM
  int4     M <= 8 torch's tinygemm (_weight_int4pack_mm, inner K tiles 8: 2.33 ms at M 1, ours 4.04);
           M <= 16 ours (16-row dot tile, BLOCK_N 128, BLOCK_K 64); above, the weight dequantized to bf16
           by one Triton pass and cuBLAS (both dequantizing GEMMs fall to 15-113 ms at M 32-256)
  w8a8     torch._int_mm with our row quantizer; fp8: torch._scaled_mm (tensorwise with a calibrated
           activation scale and per-tensor weights, else rowwise) with our row quantizer
Each path reads the layer's stored tensors (formats.py) or a copy prepared once here (tinygemm's packing:
int4 layers keep both, 1 byte a weight in all).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..kernels import quant_linear as qk
from . import torch_kernels as tk

INT8_SMALL = qk.QuantLaunch(16, 32, 256, use_dot=True)  # M <= 16 (split chosen per shape)
INT4_SMALL = qk.QuantLaunch(16, 128, 64, use_dot=True)
INT4_TINYGEMM_MAX_M = 8
INT4_KERNEL_MAX_M = 16


def gpu_forward(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """forward(x [M, K]) -> [M, N] for a QuantLinear on a CUDA device, its tensors in place."""
    if layer.mode == "int8_wo":
        return _int8_weight_only(layer)
    if layer.mode == "int4":
        return _int4(layer)
    if layer.mode == "w8a8":
        prepared = tk.prepare_w8a8(layer.qweight, layer.scales, layer.act_scale)
        return lambda x: tk.linear_w8a8(x, prepared, layer.bias, quantize=qk.quantize_rows)
    if layer.mode == "fp8":
        prepared = tk.prepare_fp8(layer.qweight, layer.scales, layer.act_scale)
        return lambda x: tk.linear_fp8(x, prepared, layer.bias, quantize=qk.quantize_rows)
    raise ValueError(f"no GPU path for quantization mode {layer.mode!r}")


def _with_split(base: qk.QuantLaunch, m: int, n: int, k: int, device: torch.device) -> qk.QuantLaunch:
    programs = -(-m // base.block_m) * -(-n // base.block_n)
    split = qk.choose_split(programs, k, base.block_k, qk._num_sms(device))
    return qk.QuantLaunch(base.block_m, base.block_n, base.block_k, split_k=split, use_dot=base.use_dot)


def _int8_weight_only(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    n, k = layer.qweight.shape
    small = _with_split(INT8_SMALL, 16, n, k, layer.qweight.device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        launch = small if x.shape[0] <= 16 else None  # None: the kernel's own GEMM tiles
        return qk.int8_weight_linear(x, layer.qweight, layer.scales, layer.bias, launch)
    return forward


def _int4(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    n, k = layer.out_features, layer.in_features
    tiny = tk.prepare_int4_tinygemm(layer.qweight, layer.scales, layer.zeros, layer.group_size)
    small = _with_split(INT4_SMALL, 16, n, k, layer.qweight.device)
    perm = None if layer.perm is None else layer.perm.long()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if perm is not None:  # act-order: the stored columns are the inputs in perm's order
            x = x.index_select(-1, perm)
        m = x.shape[0]
        if m <= INT4_TINYGEMM_MAX_M and x.dtype == torch.bfloat16:
            return tk.linear_int4_tinygemm(x, tiny, layer.bias)
        if m <= INT4_KERNEL_MAX_M:
            return qk.int4_weight_linear(x, layer.qweight, layer.scales, layer.zeros, layer.group_size,
                                         layer.bias, small)
        weight = qk.dequantize_int4(layer.qweight, layer.scales, layer.zeros, x.dtype)  # [N, K]
        return F.linear(x, weight, layer.bias)
    return forward
