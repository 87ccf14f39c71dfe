"""The quantized linear kernels (kernels/quant_linear.py) and torch's library kernels behind the same
contracts (quant/torch_kernels.py) against F.linear over formats.py's dequantized weights (and, for w8a8 and
fp8, its quantized activations). Without a GPU the Triton kernels run in the interpreter at tiny sizes;
tools/quant_kernels_gpu.py checks and times them at Qwen-7B's sizes on a GPU.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

pytest.importorskip("triton", reason="triton is not installed (pip install triton): kernels untested here")

from kernel_checks import DEVICE, randn, rel_err, tol  # noqa: E402

from qwen_triton.kernels.quant_linear import (  # noqa: E402
    QuantLaunch,
    choose_launch,
    int4_weight_linear,
    int8_weight_linear,
    quantize_rows,
)
from qwen_triton.quant import formats as fm  # noqa: E402
from qwen_triton.quant import torch_kernels as tk  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]
N, K = 40, 128  # N not a power of two; K a multiple of every group size tested


def reference(x, weight, bias):
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


# launches beside the default: the GEMV shape (one row, or 4 rows a program) split with a second pass, the
# dot tile split with atomics, a GEMM tile without split, and (int4) a K tile spanning two groups
LAUNCHES = {
    "auto": lambda m: None,
    "gemv split3": lambda m: QuantLaunch(1 if m == 1 else 4, 16, 32, split_k=3),
    "dot split2 atomic": lambda m: QuantLaunch(16, 16, 32, split_k=2, use_dot=True, reduce="atomic"),
    "gemm": lambda m: QuantLaunch(32, 32, 64, use_dot=True),
    "two groups a tile": lambda m: QuantLaunch(16, 16, 64, split_k=2, use_dot=m > 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16, 33])
@pytest.mark.parametrize("launch", list(LAUNCHES)[:4])
def test_int8_weight_linear(dtype, m, launch):
    weight = randn(N, K, seed=1)
    stored = fm.quantize_int8(weight, per_tensor=(m == 3))  # one case with a single scale
    x, bias = randn(m, K, seed=2, dtype=dtype), (randn(N, seed=3, dtype=dtype) if m != 16 else None)
    got = int8_weight_linear(x, stored["qweight"], stored["scales"], bias, launch=LAUNCHES[launch](m))
    assert got.dtype == dtype and got.shape == (m, N)
    assert rel_err(got, reference(x, fm.dequantize_int8(**stored), bias)) < tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16, 33])
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_int4_weight_linear(dtype, m, launch):
    group = 32
    stored = fm.quantize_int4(randn(N, K, seed=4), group)
    cfg = LAUNCHES[launch](m)
    x, bias = randn(m, K, seed=5, dtype=dtype), (randn(N, seed=6, dtype=dtype) if m != 3 else None)
    got = int4_weight_linear(x, stored["qweight"], stored["scales"], stored["zeros"], group, bias, launch=cfg)
    assert got.dtype == dtype and got.shape == (m, N)
    ref = reference(x, fm.dequantize_int4(stored["qweight"], stored["scales"], stored["zeros"]), bias)
    assert rel_err(got, ref) < tol(dtype)


def test_int4_act_order_is_the_callers_permutation():
    group, m = 64, 2
    stored = fm.quantize_int4(randn(N, K, seed=7), group)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(8)).to(torch.int32).to(DEVICE)
    x = randn(m, K, seed=9)
    got = int4_weight_linear(x[:, perm.long()], stored["qweight"], stored["scales"], stored["zeros"], group)
    ref = reference(x, fm.dequantize_int4(stored["qweight"], stored["scales"], stored["zeros"], perm), None)
    assert rel_err(got, ref) < tol(torch.float32)


def test_leading_dims_and_empty_batch():
    stored = fm.quantize_int8(randn(N, K, seed=10))
    x = randn(2, 3, K, seed=11)
    got = int8_weight_linear(x, stored["qweight"], stored["scales"])
    assert got.shape == (2, 3, N)
    assert rel_err(got, reference(x.reshape(6, K), fm.dequantize_int8(**stored), None).view(2, 3, N)) < 1e-5
    assert int8_weight_linear(x[:0, 0], stored["qweight"], stored["scales"]).shape == (0, N)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_rows_matches_the_reference(kind, calibrated, dtype):
    x = (3 * randn(5, 300, seed=12)).to(dtype)
    x[2] = 0  # an all-zero row: the scale's floor, codes 0
    act_scale = torch.tensor([0.01], device=DEVICE) if calibrated else None  # clamps the large values
    codes, scales = quantize_rows(x, kind, act_scale)
    ref_codes, ref_scales = fm.quantize_activations(x, kind, act_scale)
    assert codes.dtype == ref_codes.dtype and scales.shape == ref_scales.shape
    assert torch.equal(scales, ref_scales)
    assert torch.equal(codes.float(), ref_codes.float())


def test_default_launch_splits_k_to_fill_the_gpu_only_when_needed():
    for bits in (8, 4):
        small = choose_launch(1, 4096, 4096, bits, num_sms=132)
        assert not small.use_dot and small.split_k > 1
        assert (4096 // small.block_n) * small.split_k >= 2 * 132  # one token still fills 132 SMs
        assert choose_launch(1, 22016, 4096, bits, num_sms=132).split_k <= 2
        big = choose_launch(256, 22016, 4096, bits, num_sms=132)
        assert big.use_dot and big.split_k == 1 and big.block_m >= 64
    assert choose_launch(8, 4096, 4096, 4, num_sms=132, group_size=32).block_k <= 32


# -- torch's library kernels (CPU variants here) ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inner_k_tiles", [2, 8])
def test_tinygemm_int4(dtype, inner_k_tiles):
    n, group = 48, 64  # the CPU packer wants N % 16
    stored = fm.quantize_int4(randn(n, K, seed=13), group)
    prepared = tk.prepare_int4_tinygemm(stored["qweight"], stored["scales"], stored["zeros"], group,
                                        inner_k_tiles, dtype=dtype)
    x, bias = randn(3, K, seed=14, dtype=dtype), randn(n, seed=15, dtype=dtype)
    ref = reference(x, fm.dequantize_int4(stored["qweight"], stored["scales"], stored["zeros"]), bias)
    assert rel_err(tk.linear_int4_tinygemm(x, prepared, bias), ref) < tol(dtype)
    got = tk.linear_int4_dequant(x, tk.prepare_int4_dequant(**stored), bias)
    assert rel_err(got, ref) < tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_library_kernels(dtype):
    stored = fm.quantize_int8(randn(N, K, seed=16))
    prepared = tk.prepare_int8(**stored, dtype=dtype)
    x, bias = randn(3, K, seed=17, dtype=dtype), randn(N, seed=18, dtype=dtype)
    ref = reference(x, fm.dequantize_int8(**stored), bias)
    for linear in (tk.linear_int8_pack, tk.linear_int8_dequant, tk.linear_int8_scale_after):
        assert rel_err(linear(x, prepared, bias), ref) < tol(dtype), linear.__name__


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("quantizer", ["torch", "triton"])
def test_w8a8_and_fp8_library_kernels(per_tensor, calibrated, quantizer):
    weight, dtype = randn(48, K, seed=19), torch.bfloat16
    x, bias = randn(5, K, seed=20, dtype=dtype), randn(48, seed=21, dtype=dtype)
    act_scale = torch.tensor([0.02], device=DEVICE) if calibrated else None
    quantize = quantize_rows if quantizer == "triton" else fm.quantize_activations
    i8 = fm.quantize_int8(weight, per_tensor=per_tensor)
    ref = reference(fm.fake_quantize_activations(x, "int8", act_scale), fm.dequantize_int8(**i8), bias)
    got = tk.linear_w8a8(x, tk.prepare_w8a8(**i8, act_scale=act_scale), bias, quantize=quantize)
    assert got.dtype == dtype and rel_err(got, ref) < tol(dtype)
    f8 = fm.quantize_fp8(weight, per_tensor=per_tensor)
    prepared = tk.prepare_fp8(**f8, act_scale=act_scale)
    assert prepared["tensorwise"] == (per_tensor and calibrated)
    ref = reference(fm.fake_quantize_activations(x, "fp8", act_scale), fm.dequantize_fp8(**f8), bias)
    got = tk.linear_fp8(x, prepared, bias, quantize=quantize)
    assert got.dtype == dtype and rel_err(got, ref) < tol(dtype)


@pytest.mark.parametrize("use_dot", [False, True])
def test_k_tiles_past_the_end_are_masked(use_dot):
    k, group = 96, 32  # K tiles of 64 (K % 64 != 0); int4 tiles then span two groups
    x = randn(3, k, seed=22)
    launch = QuantLaunch(16 if use_dot else 4, 16, 64, split_k=2, use_dot=use_dot)
    i4 = fm.quantize_int4(randn(N, k, seed=23), group)
    got = int4_weight_linear(x, i4["qweight"], i4["scales"], i4["zeros"], group, launch=launch)
    assert rel_err(got, reference(x, fm.dequantize_int4(i4["qweight"], i4["scales"], i4["zeros"]), None)) < 1e-5
    i8 = fm.quantize_int8(randn(N, k, seed=24))
    got = int8_weight_linear(x, i8["qweight"], i8["scales"], launch=launch)
    assert rel_err(got, reference(x, fm.dequantize_int8(**i8), None)) < 1e-5
