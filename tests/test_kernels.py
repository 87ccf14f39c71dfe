"""Each Triton kernel against its plain-torch reference, on random inputs of
several shapes. Without a GPU the kernels run in Triton's interpreter
(TRITON_INTERPRET=1) at small sizes; tools/check_kernels_gpu.py runs the same
comparisons at Qwen-7B's sizes on a GPU. Skipped when triton is not installed.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

pytest.importorskip("triton", reason="triton is not installed (pip install triton): kernels untested here")

from kernel_checks import DEVICE, randn, rel_err, tol  # noqa: E402

from qwen_triton.attention.torch_backend import write_kv_cache as write_kv_reference  # noqa: E402
from qwen_triton.kernels import activation, kv_cache, norm, rotary  # noqa: E402
from qwen_triton.kernels.paged_attention import (  # noqa: E402
    choose_num_splits,
    paged_decode_attention,
    paged_decode_attention_reference,
)
from qwen_triton.models import layers  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 64), (7, 96), (5, 256)])
def test_rms_norm_and_add(dtype, rows, cols):
    x, res = randn(rows, cols, dtype=dtype, seed=1), randn(rows, cols, dtype=dtype, seed=2)
    w = 1 + 0.1 * randn(cols, dtype=dtype, seed=3)
    assert rel_err(norm.rms_norm(x, w, 1e-6), layers.rms_norm(x, w, 1e-6)) < tol(dtype)
    out, total = norm.add_rms_norm(x, res, w, 1e-6)
    ref_out, ref_total = layers.add_rms_norm(x, res, w, 1e-6)
    # on a GPU the add rounds exactly as torch's (the interpreter may truncate to bf16)
    assert torch.equal(total, ref_total) if DEVICE == "cuda" else rel_err(total, ref_total) < tol(dtype)
    assert rel_err(out, ref_out) < tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim", [(1, 4, 4, 32), (6, 4, 2, 64), (3, 3, 1, 16)])
def test_rotary_in_place_on_qkv_views(dtype, tokens, heads, kv_heads, dim):
    qkv = randn(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, seed=4)
    q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k = q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim)
    positions = torch.randint(0, 5000, (tokens,), device=DEVICE)
    cos, sin = layers.rope_cos_sin(positions, layers.compute_inv_freq(layers.RopeConfig(), dim).to(DEVICE))
    ref_q, ref_k = layers.apply_rotary_qk(q.clone(), k.clone(), cos, sin)
    got_q, got_k = rotary.apply_rotary_(q, k, cos, sin)
    assert rel_err(got_q, ref_q) < tol(dtype) and rel_err(got_k, ref_k) < tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(1, 64), (5, 200), (3, 1100)])
def test_silu_and_mul(dtype, rows, width):
    x = randn(rows, 2 * width, dtype=dtype, seed=5)
    assert rel_err(activation.silu_and_mul(x), layers.silu_and_mul(x)) < tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_skips_negative_slots(dtype):
    tokens, kv_heads, dim, blocks, block_size = 9, 2, 16, 6, 4
    kv = randn(tokens, 3, kv_heads, dim, dtype=dtype, seed=6)
    k, v = kv[:, 1], kv[:, 2]  # strided views, as split from a qkv projection
    slots = torch.randperm(blocks * block_size, device=DEVICE)[:tokens]
    cache = randn(2, blocks, block_size, kv_heads, dim, dtype=dtype, seed=7)
    expected = cache.clone()
    write_kv_reference(expected, k[:6], v[:6], slots[:6])
    slots[6:] = -1  # padding rows: untouched cache
    kv_cache.write_kv_cache(cache, k, v, slots)
    assert torch.equal(cache, expected)


def random_paged_case(num_tokens, heads, kv_heads, dim, block_size, max_ctx, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randint(1, max_ctx + 1, (num_tokens,), generator=gen)
    ctx[0] = max_ctx
    width = -(-max_ctx // block_size)
    num_blocks = num_tokens * width + 3
    tables = torch.randperm(num_blocks, generator=gen)[:num_tokens * width].view(num_tokens, width)
    cache = randn(2, num_blocks, block_size, kv_heads, dim, dtype=dtype, seed=seed + 1)
    q = randn(num_tokens, heads, dim, dtype=dtype, seed=seed + 2)
    return q, cache, tables.to(torch.int32).to(DEVICE), ctx.to(torch.int32).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("heads,kv_heads,dim,block_size,max_ctx", [(2, 2, 32, 4, 37), (4, 1, 16, 8, 70)])
def test_paged_decode_attention(dtype, splits, heads, kv_heads, dim, block_size, max_ctx):
    q, cache, tables, ctx = random_paged_case(3, heads, kv_heads, dim, block_size, max_ctx, dtype, seed=8)
    ctx[-1] = 0  # a padding row: zeros
    scale = dim ** -0.5
    got = paged_decode_attention(q, cache, tables, ctx, scale, num_splits=splits, block_n=16)
    ref = paged_decode_attention_reference(q, cache, tables, ctx, scale)
    assert rel_err(got, ref) < tol(dtype)
    assert torch.count_nonzero(got[-1]) == 0


@pytest.mark.parametrize("splits", [1, 4])
def test_paged_decode_attention_reads_head_major_blocks(splits):
    """The kernel follows the cache's strides: blocks stored [Hkv, block_size, D] (a permuted view) give
    the same result as the same values stored token-major."""
    q, cache, tables, ctx = random_paged_case(3, 4, 2, 32, 8, 45, torch.float32, seed=9)
    head_major = cache.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)  # same values, other strides
    assert head_major.stride(2) == 32 and torch.equal(head_major, cache)
    scale = 32 ** -0.5
    got = paged_decode_attention(q, head_major, tables, ctx, scale, num_splits=splits, block_n=16)
    assert torch.equal(got, paged_decode_attention(q, cache, tables, ctx, scale, num_splits=splits, block_n=16))


def test_num_splits_fill_the_gpu_from_the_batch_alone():
    assert choose_num_splits(1, 32, 132) * 32 >= 4 * 132  # one long sequence still fills 132 SMs
    assert choose_num_splits(256, 32, 132) == 1


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_decoder_with_triton_layer_ops_matches_torch_ops(tmp_path, arch):
    """The whole decoder with the fused layer kernels against the plain layers (fp32)."""
    import checkpoints as ck

    from qwen_triton.attention.torch_backend import TorchAttentionBackend
    from qwen_triton.model_runner import _dummy_prefill
    from qwen_triton.models import load_model, load_model_config

    path = getattr(ck, f"write_{arch}")(str(tmp_path / arch))
    config = load_model_config(path)
    host = _dummy_prefill([5, 9], block_size=4)
    host.ids[:] = torch.randint(3, 500, (len(host.ids),)).numpy()
    logits = []
    for ops in (layers.TORCH_OPS, layers.triton_layer_ops()):
        model = load_model(path, config, torch.float32, DEVICE, TorchAttentionBackend(), ops)
        caches = [torch.zeros(2, 8, 4, config.num_kv_heads, config.head_dim, device=DEVICE)
                  for _ in range(config.num_layers)]
        logits.append(model.compute_logits(model(host.to_device(torch.device(DEVICE), 4), caches)))
    assert rel_err(logits[1], logits[0]) < 1e-5


def test_triton_backend_matches_torch_backend_on_a_mixed_batch():
    """Decodes, fresh prefills and prefill chunks after cached context in one step."""
    from qwen_triton.attention import AttentionMetadata
    from qwen_triton.attention.torch_backend import TorchAttentionBackend
    from qwen_triton.attention.triton_backend import TritonAttentionBackend

    block_size, num_blocks, heads, kv_heads, dim = 4, 40, 4, 2, 16
    groups = [(9, 1), (0, 7), (5, 1), (6, 5), (0, 1), (0, 3)]  # (cached, new) per sequence
    perm = torch.randperm(num_blocks).tolist()
    tables, slots, cu = [], [], [0]
    for cached, new in groups:
        need = -(-(cached + new) // block_size)
        tables.append(perm[:need] + [0] * (5 - need))
        perm = perm[need:]
        slots += [tables[-1][p // block_size] * block_size + p % block_size for p in range(cached, cached + new)]
        cu.append(cu[-1] + new)
    seq_lens = [c + n for c, n in groups]
    meta = AttentionMetadata(
        torch.tensor(cu, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        torch.tensor(tables, dtype=torch.int32, device=DEVICE), torch.tensor(slots, device=DEVICE),
        [n for _, n in groups], seq_lens, block_size)
    total = cu[-1]
    q = randn(total, heads, dim, dtype=torch.float32, seed=9)
    k, v = randn(total, kv_heads, dim, dtype=torch.float32, seed=10), randn(total, kv_heads, dim, dtype=torch.float32,
                                                                            seed=11)
    cache = randn(2, num_blocks, block_size, kv_heads, dim, dtype=torch.float32, seed=12)
    ref_cache = cache.clone()
    ref = TorchAttentionBackend().forward(q, k, v, ref_cache, meta, dim ** -0.5)
    got = TritonAttentionBackend(torch.device(DEVICE)).forward(q, k, v, cache, meta, dim ** -0.5)
    assert torch.equal(cache, ref_cache)
    assert rel_err(got, ref) < 1e-5


def test_engine_with_triton_paths_matches_reference(tmp_path):
    """The engine end to end with the Triton attention backend and layer kernels
    (interpreted on the CPU): the same greedy tokens as the torch reference in fp32,
    with chunked prefill next to decodes."""
    import checkpoints as ck

    from qwen_triton import EngineConfig, LLMEngine, SamplingParams

    path = ck.write_qwen2(str(tmp_path / "qwen2"), seed=2)
    gen = torch.Generator().manual_seed(3)
    ps = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (5, 23, 1, 12)]
    params = SamplingParams(max_tokens=10, min_tokens=10, temperature=0.0, end_ids=(2,))
    outs = []
    for backend in ("torch", "triton"):
        config = EngineConfig(device=DEVICE, dtype="float32", block_size=4, max_num_batched_tokens=16,
                              attention_backend=backend, layer_kernels=backend, enforce_eager=True)
        outs.append(LLMEngine(path, config).generate(ps, params))
    assert outs[1] == outs[0]
