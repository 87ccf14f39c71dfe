"""The 16-bit GEMV (kernels/gemv.py) against its float32 torch reference: 1-8 rows, N and K with tails (odd
N, K not a multiple of the K tile), with and without bias, split-K 1/2/4 (a second pass over float32
partials), broadcast and tl.dot products, float32 and bf16. Without a GPU the kernel runs in Triton's
interpreter at small sizes; tools/gemv_benchmark.py times it at Qwen-7B's sizes on a GPU.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

pytest.importorskip("triton", reason="triton is not installed (pip install triton): kernels untested here")

from kernel_checks import DEVICE, randn, rel_err, tol  # noqa: E402

from qwen_triton.kernels.gemv import choose_gemv_launch, gemv, gemv_reference  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]


def case(m, n, k, dtype, with_bias, seed=0):
    x = randn(m, k, dtype=dtype, seed=seed + 1)
    w = randn(n, k, dtype=dtype, seed=seed + 2) / k ** 0.5
    b = randn(n, dtype=dtype, seed=seed + 3) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("split_k", [1, 2, 4])
def test_gemv_matches_reference(dtype, m, split_k):
    # N = 37: a partial last row tile; K = 200: the K tile of 64 leaves a tail of 8 (masked loads)
    for with_bias, (n, k, block_k) in ((True, (37, 200, 64)), (False, (48, 256, 64))):
        x, w, b = case(m, n, k, dtype, with_bias, seed=m)
        got = gemv(x, w, b, block_n=16, block_k=block_k, split_k=split_k, num_warps=4, num_stages=2)
        assert got.shape == (m, n) and got.dtype == dtype
        assert rel_err(got, gemv_reference(x, w, b)) < tol(dtype), (with_bias, n, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 4, 8])
def test_gemv_dot_product_matches_reference(dtype, m):
    x, w, b = case(m, 40, 160, dtype, True, seed=10 + m)  # K tile 32: a tail of 0; split 2 over 5 tiles
    got = gemv(x, w, b, block_n=16, block_k=32, split_k=2, num_warps=4, num_stages=2, use_dot=True)
    assert rel_err(got, gemv_reference(x, w, b)) < tol(dtype)


def test_gemv_more_splits_than_k_tiles_and_strided_x():
    # split_k 4 over 2 K tiles: only the 2 non-empty splits run; x a column slice (row stride 2K)
    base = randn(3, 2 * 64, seed=21)
    x, w = base[:, :64], randn(24, 64, seed=22)
    got = gemv(x, w, None, block_n=8, block_k=32, split_k=4)
    assert rel_err(got, gemv_reference(x, w)) < tol(torch.float32)


def test_choose_gemv_launch_is_the_measured_policy():
    """Qwen-7B's shapes take the launches measured fastest on the H200 (see choose_gemv_launch)."""
    one = choose_gemv_launch(1, 4096, 4096, num_sms=132)
    assert (one.block_n, one.block_k, one.split_k, one.use_dot) == (8, 1024, 1, False)
    down = choose_gemv_launch(1, 4096, 11008, num_sms=132)  # 1,024 does not divide 11,008
    assert (down.block_n, down.block_k, down.split_k, down.use_dot) == (16, 256, 2, False)
    for n, k, split in ((4096, 4096, 4), (4096, 11008, 4), (12288, 4096, 1), (22016, 4096, 1), (151936, 4096, 1)):
        cfg = choose_gemv_launch(8, n, k, num_sms=132)
        assert (cfg.block_n, cfg.block_k, cfg.split_k, cfg.use_dot) == (64, 128, split, True), (n, k)
    assert choose_gemv_launch(4, 64, 256, num_sms=132).split_k == 1  # no split below two K tiles a split


def test_linear_is_f_linear_off_the_gpu_path():
    """ops.linear of the Triton layer ops: F.linear itself where gemv does not apply (here: not CUDA)."""
    from qwen_triton.kernels.gemv import linear

    x, w, b = case(2, 33, 96, torch.float32, True, seed=31)
    assert torch.equal(linear(x, w, b), torch.nn.functional.linear(x, w, b))


def test_choose_gemv_launch_runs_small_shapes():
    x, w, b = case(2, 33, 96, torch.float32, True, seed=30)
    cfg = choose_gemv_launch(2, 33, 96, num_sms=8)
    assert rel_err(gemv(x, w, b, **vars(cfg)), gemv_reference(x, w, b)) < tol(torch.float32)


def test_gemv_rejects_bad_arguments():
    x, w, _ = case(2, 16, 32, torch.float32, False)
    with pytest.raises(ValueError, match="weight"):
        gemv(x, w[:, :16], block_n=16, block_k=16)
    with pytest.raises(ValueError, match="bias"):
        gemv(x, w, torch.zeros(15, device=DEVICE), block_n=16, block_k=16)
    with pytest.raises(ValueError, match="block_k"):
        gemv(x, w, block_n=16, block_k=24)
    with pytest.raises(ValueError, match="dtype"):
        gemv(x, w.to(torch.bfloat16), block_n=16, block_k=16)
