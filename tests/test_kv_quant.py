"""The int8 / fp8 KV cache (EngineConfig.kv_cache_dtype): the quantizer's error bounds, the torch backend
against the float cache, the Triton write and decode kernels against the torch reference (in Triton's
interpreter without a GPU, tiny sizes), and the engine end to end on a tiny random checkpoint."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

from kernel_checks import DEVICE, randn, rel_err  # noqa: E402

from qwen_triton.attention import AttentionMetadata, QuantKVCache  # noqa: E402
from qwen_triton.attention.kv_quant import (  # noqa: E402
    QMAX,
    KVCacheSpec,
    check_calibrated_scales,
    dequantize,
    new_kv_cache,
    quantize,
    row_scales,
)
from qwen_triton.attention.torch_backend import TorchAttentionBackend, write_kv_cache  # noqa: E402

FP8 = torch.float8_e4m3fn
KINDS = [(torch.int8, "dynamic"), (torch.int8, "calibrated"), (FP8, "dynamic"), (FP8, "calibrated")]
KIND_IDS = ["int8-dynamic", "int8-calibrated", "fp8-dynamic", "fp8-calibrated"]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

if importlib.util.find_spec("triton") is not None:
    import triton
    import triton.language as tl

    from qwen_triton.kernels.kv_cache import _round_to_e4m3

    @triton.jit
    def _fp8_cast_kernel(y_ptr, out_ptr, BLOCK: tl.constexpr):
        """The write kernel's fp32 -> fp8 step alone."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + i, _round_to_e4m3(tl.load(y_ptr + i)).to(out_ptr.dtype.element_ty))


def quant_cache(dtype, scales, num_blocks, block_size, kv_heads, dim) -> QuantKVCache:
    # calibrated scales fit unit-normal K and V: |x| up to about 3.5 (larger values clamp)
    calib = torch.tensor([3.5 / QMAX[dtype], 3.0 / QMAX[dtype]], device=DEVICE)
    return new_kv_cache(KVCacheSpec(dtype, scales), num_blocks, block_size, kv_heads, dim, torch.device(DEVICE), calib)


def as_bytes(cache: QuantKVCache) -> torch.Tensor:
    return cache.data.view(torch.uint8)


# -- the quantizer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, FP8], ids=["int8", "fp8"])
def test_round_trip_error_bounds(dtype):
    # rows of very different magnitudes, and one all-zero row
    x = randn(40, 3, 64, seed=1) * torch.exp(2 * randn(40, 3, 1, seed=2))
    x[7, 1] = 0
    scale = row_scales(x, dtype)  # [40, 3]
    codes = quantize(x, scale, dtype)
    y = dequantize(codes, scale)
    assert codes.dtype == dtype and y.dtype == torch.float32
    assert scale[7, 1] == 0 and torch.count_nonzero(y[7, 1]) == 0
    err = (y - x).abs()
    s = scale[..., None]
    if dtype == torch.int8:
        assert codes.abs().max() == 127 and (codes.abs().amax(-1)[scale > 0] == 127).all()  # each row's absmax
        assert (err <= 0.5 * s * (1 + 1e-5)).all()  # half a step
    else:
        # e4m3: 3 mantissa bits (half-ulp 2^-4 relative); subnormal steps 2^-9 of the scale
        assert (err <= torch.maximum(x.abs() * 2**-4, s * 2**-10) * (1 + 1e-5)).all()
    # a calibrated scale below a row's range clamps it to +-qmax * scale, and is exact inside it
    calib = torch.tensor(1.0 / QMAX[dtype], device=DEVICE)
    y = dequantize(quantize(x, calib, dtype), calib)
    assert y.abs().max() <= 1.0 and torch.allclose(y, x.clamp(-1, 1), atol=2**-4 if dtype == FP8 else 0.5 / 127)


def test_block_bytes_at_qwen_7b_shapes():
    """32 layers, 32 KV heads of 128, blocks of 16 tokens: int8 / fp8 blocks are about half of bf16's."""
    from qwen_triton.config import ModelConfig
    from qwen_triton.model_runner import kv_block_bytes

    m = ModelConfig("qwen", 151936, 4096, 32, 32, 32, 128, 11008, 1e-6, 8192)
    bf16 = kv_block_bytes(m, 16, torch.bfloat16)
    assert bf16 == 8 << 20
    assert kv_block_bytes(m, 16, KVCacheSpec(torch.int8, "calibrated")) == 4 << 20
    dynamic = kv_block_bytes(m, 16, KVCacheSpec(FP8, "dynamic"))
    assert dynamic == 32 * 16 * 2 * 32 * (128 + 4)  # + float32 scale per token and KV head
    assert bf16 / dynamic > 1.93


def test_missing_calibrated_scales_are_refused():
    """The model's kv_scale buffer starts NaN (what the loader leaves when the checkpoint has no
    scales), outside the state dict; the runner's check names the layers without scales."""
    from qwen_triton.config import ModelConfig
    from qwen_triton.models.decoder import Attention

    attn = Attention(ModelConfig("qwen2", 512, 64, 2, 4, 2, 16, 128, 1e-6, 512), TorchAttentionBackend())
    assert attn.kv_scale.dtype == torch.float32 and attn.kv_scale.shape == (2,) and torch.isnan(attn.kv_scale).all()
    assert "kv_scale" not in attn.state_dict()
    good = torch.tensor([0.02, 0.03])
    check_calibrated_scales([good, good])
    with pytest.raises(ValueError, match=r"layers \[1\].*kv_cache_scales=dynamic"):
        check_calibrated_scales([good, attn.kv_scale])
    with pytest.raises(ValueError, match=r"layers \[0\]"):
        check_calibrated_scales([torch.tensor([0.02, 0.0]), good])


# -- backends ----------------------------------------------------------------------------------------


def mixed_step(block_size=4, num_blocks=40, heads=4, kv_heads=2, dim=16, seed=0):
    """One step of decodes, fresh prefills and prefill chunks after cached context, with the cached
    context's k/v (written before the step) and this step's q/k/v."""
    groups = [(9, 1), (0, 7), (5, 1), (6, 5), (0, 1), (0, 3)]  # (cached, new) per sequence
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    tables, slots, ctx_slots, cu = [], [], [], [0]
    for cached, new in groups:
        need = -(-(cached + new) // block_size)
        tables.append(perm[:need] + [0] * (5 - need))
        perm = perm[need:]
        slot = [tables[-1][p // block_size] * block_size + p % block_size for p in range(cached + new)]
        ctx_slots += slot[:cached]
        slots += slot[cached:]
        cu.append(cu[-1] + new)
    seq_lens = [c + n for c, n in groups]
    meta = AttentionMetadata(
        torch.tensor(cu, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        torch.tensor(tables, dtype=torch.int32, device=DEVICE), torch.tensor(slots, device=DEVICE),
        [n for _, n in groups], seq_lens, block_size)
    total, cached = cu[-1], len(ctx_slots)
    step = randn(total, heads, dim, seed=seed + 1), randn(total, kv_heads, dim, seed=seed + 2), randn(
        total, kv_heads, dim, seed=seed + 3)
    context = torch.tensor(ctx_slots, device=DEVICE), randn(cached, kv_heads, dim, seed=seed + 4), randn(
        cached, kv_heads, dim, seed=seed + 5)
    return meta, step, context, (num_blocks, block_size, kv_heads, dim)


# relative error of the attention output with a quantized cache against the float cache, unit-normal q, k, v
# (measured: int8 0.003 dynamic, 0.012 calibrated with some clamping; fp8 0.015 and 0.019)
BOUND = {(torch.int8, "dynamic"): 0.01, (torch.int8, "calibrated"): 0.025, (FP8, "dynamic"): 0.03,
         (FP8, "calibrated"): 0.04}


@pytest.mark.parametrize("dtype,scales", KINDS, ids=KIND_IDS)
def test_torch_backend_quantized_cache_close_to_float(dtype, scales):
    meta, (q, k, v), (ctx_slots, ctx_k, ctx_v), shape = mixed_step()
    outs = []
    for cache in (torch.zeros(2, *shape, device=DEVICE), quant_cache(dtype, scales, *shape)):
        write_kv_cache(cache, ctx_k, ctx_v, ctx_slots)
        outs.append(TorchAttentionBackend().forward(q, k, v, cache, meta, 0.25))
    ref, got = outs
    fresh = [*range(1, 8), *range(15, 18)]  # whole prompts of 2+ tokens
    assert torch.equal(got[fresh], ref[fresh])  # attend over their own unquantized k/v
    err = rel_err(got, ref)
    assert 0 < err < BOUND[dtype, scales]


@needs_triton
@pytest.mark.parametrize("dtype,scales", KINDS, ids=KIND_IDS)
def test_triton_write_kernel_matches_reference(dtype, scales):
    from qwen_triton.kernels import kv_cache as kv_kernels

    tokens, kv_heads, dim, shape = 9, 3, 16, (6, 4, 3, 16)
    kv = randn(tokens, 3, kv_heads, dim, seed=6, dtype=torch.bfloat16) * 2
    kv[:4, :, 0, :6] *= 1e-4  # tiny next to their row's absmax: subnormal fp8 codes, small int8 ones
    k, v = kv[:, 1], kv[:, 2]  # strided views, as split from a qkv projection
    slots = torch.randperm(24, generator=torch.Generator().manual_seed(7))[:tokens].to(DEVICE)
    got, expected = quant_cache(dtype, scales, *shape), quant_cache(dtype, scales, *shape)
    fill = torch.randint(0, 120, got.data.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(8))
    for cache in (got, expected):
        as_bytes(cache).copy_(fill)  # what untouched slots must keep
    write_kv_cache(expected, k[:6], v[:6], slots[:6])
    slots[6:] = -1  # padding rows: untouched cache
    kv_kernels.write_kv_cache(got, k, v, slots)
    assert torch.equal(as_bytes(got), as_bytes(expected))  # the same codes, bit for bit
    assert torch.equal(got.scales, expected.scales)


@needs_triton
def test_triton_fp8_rounding_matches_torch_cast():
    """The write kernel's fp8 codes equal torch's cast bit for bit: every e4m3 value, every midpoint
    between neighbours (ties to even) and the floats either side of it, random values, signed zeros."""
    grid = torch.arange(127, dtype=torch.uint8).view(FP8).float()  # the non-negative finite e4m3 values
    mid = (grid[1:] + grid[:-1]) / 2
    ys = torch.cat([grid, mid, torch.nextafter(mid, torch.tensor(0.0)), torch.nextafter(mid, torch.tensor(448.0)),
                    torch.exp2(torch.rand(4000, generator=torch.Generator().manual_seed(1)) * 24 - 14).clamp_max(448)])
    ys = torch.cat([ys, -ys, torch.tensor([1e-30, -1e-30])])
    y = torch.zeros(-(-len(ys) // 1024) * 1024)
    y[:len(ys)] = ys
    got = torch.zeros(len(y), dtype=FP8, device=DEVICE)
    _fp8_cast_kernel[(len(y) // 1024,)](y.to(DEVICE), got, BLOCK=1024)
    assert torch.equal(got.cpu().view(torch.uint8), y.to(FP8).view(torch.uint8))


@needs_triton
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("dtype,scales", KINDS, ids=KIND_IDS)
def test_triton_decode_kernel_matches_reference(dtype, scales, splits):
    from qwen_triton.kernels.paged_attention import paged_decode_attention, paged_decode_attention_reference

    tokens, heads, kv_heads, dim, block_size, max_ctx = 3, 4, 2, 16, 4, 37
    gen = torch.Generator().manual_seed(8)
    width = -(-max_ctx // block_size)
    num_blocks = tokens * width + 3
    tables = torch.randperm(num_blocks, generator=gen)[:tokens * width].view(tokens, width).to(torch.int32)
    ctx = torch.tensor([max_ctx, 11, 0], dtype=torch.int32)  # the last: a padding row
    cache = quant_cache(dtype, scales, num_blocks, block_size, kv_heads, dim)
    all_slots = torch.arange(num_blocks * block_size, device=DEVICE)
    write_kv_cache(cache, randn(len(all_slots), kv_heads, dim, seed=9), randn(len(all_slots), kv_heads, dim, seed=10),
                   all_slots)
    q = randn(tokens, heads, dim, seed=11)
    args = q, cache, tables.to(DEVICE), ctx.to(DEVICE), dim ** -0.5
    got = paged_decode_attention(*args, num_splits=splits, block_n=16)
    assert rel_err(got, paged_decode_attention_reference(*args)) < 1e-5
    assert torch.count_nonzero(got[-1]) == 0


@needs_triton
@pytest.mark.parametrize("dtype,scales", KINDS, ids=KIND_IDS)
def test_triton_backend_matches_torch_backend(dtype, scales):
    from qwen_triton.attention.triton_backend import TritonAttentionBackend

    meta, (q, k, v), (ctx_slots, ctx_k, ctx_v), shape = mixed_step(seed=20)
    caches = [quant_cache(dtype, scales, *shape) for _ in range(2)]
    for cache in caches:
        write_kv_cache(cache, ctx_k, ctx_v, ctx_slots)
    ref = TorchAttentionBackend().forward(q, k, v, caches[0], meta, 0.25)
    got = TritonAttentionBackend(torch.device(DEVICE)).forward(q, k, v, caches[1], meta, 0.25)
    assert torch.equal(as_bytes(caches[1]), as_bytes(caches[0])) and torch.equal(caches[1].scales, caches[0].scales)
    assert rel_err(got, ref) < 1e-5


# -- the engine ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    import checkpoints as ck

    return ck.write_qwen2(str(tmp_path_factory.mktemp("kvq") / "qwen2"), seed=2)


def engine(path, kv_cache_dtype="auto", **kw):
    from qwen_triton import EngineConfig, LLMEngine

    kw.setdefault("device", "cpu")
    return LLMEngine(path, EngineConfig(dtype="float32", block_size=4, max_num_batched_tokens=8,
                                        kv_cache_max_bytes=200_000, kv_cache_dtype=kv_cache_dtype, **kw))


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_engine_with_quantized_cache(qwen2, kv):
    """Greedy generation runs; scored log probabilities (prefill chunks of 8 over quantized context)
    stay close to the float cache's; the same byte cap holds more blocks."""
    from qwen_triton import SamplingParams
    from qwen_triton.model_runner import kv_block_bytes

    gen = torch.Generator().manual_seed(3)
    seq = torch.randint(3, 500, (40,), generator=gen).tolist()
    ref_engine, quant_engine = engine(qwen2), engine(qwen2, kv)
    ref, got = torch.tensor(ref_engine.score(seq)), torch.tensor(quant_engine.score(seq))
    assert torch.equal(got[:7], ref[:7])  # the first chunk attends over its own unquantized k/v
    assert (got - ref).abs().max() < {"int8": 0.03, "fp8": 0.15}[kv]  # measured 0.009 and 0.044 (nats)
    params = SamplingParams(max_tokens=12, min_tokens=12, temperature=0.0, end_ids=(2,))
    outs = quant_engine.generate([seq[:5], seq[:17]], params)
    assert [len(o) for o in outs] == [12, 12]
    # fp32 float cache: 2 * 16 * 4 bytes a token and KV head; int8 / fp8 with a float32 scale: 2 * (16 + 4)
    runner = quant_engine.runner
    assert runner.num_blocks == 200_000 // kv_block_bytes(runner.model_config, 4, runner.kv_spec)
    assert runner.num_blocks == 200_000 // (2 * 4 * 2 * 2 * (16 + 4)) > 3 * ref_engine.runner.num_blocks


@needs_triton
def test_engine_with_triton_backend_and_int8_cache_matches_torch_backend(qwen2):
    """The Triton backend and write kernel (interpreted on the CPU) in the engine with an int8 cache:
    the same greedy tokens as the torch backend (both attend over the same quantized context)."""
    from qwen_triton import SamplingParams

    gen = torch.Generator().manual_seed(4)
    ps = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (5, 19, 1)]
    params = SamplingParams(max_tokens=6, min_tokens=6, temperature=0.0, end_ids=(2,))
    outs = [engine(qwen2, "int8", device=DEVICE, attention_backend=backend, enforce_eager=True).generate(ps, params)
            for backend in ("torch", "triton")]
    assert outs[1] == outs[0]
