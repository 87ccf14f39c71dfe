"""The paged prefill kernel (kernels/paged_prefill.py), the decode kernel's mixed-step mode
(query_start_loc) and the Triton backend's graph-safe path (forward_graphed) against their plain-torch
references, on random mixed batches: fresh prompts, chunks after cached context, decodes and padding;
the prefill kernel also split along the keys (split-K, num_splits 2 and 4, and its launch choice).
Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1) at small sizes;
tools/check_kernels_gpu.py runs the same comparisons at Qwen-7B's sizes on a GPU.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

pytest.importorskip("triton", reason="triton is not installed (pip install triton): kernels untested here")

from kernel_checks import DEVICE, randn, rel_err, tol  # noqa: E402

from qwen_triton.attention import AttentionMetadata  # noqa: E402
from qwen_triton.attention.kv_quant import QMAX, KVCacheSpec, new_kv_cache  # noqa: E402
from qwen_triton.attention.torch_backend import TorchAttentionBackend, write_kv_cache  # noqa: E402
from qwen_triton.attention.triton_backend import TritonAttentionBackend  # noqa: E402
from qwen_triton.kernels.paged_attention import (  # noqa: E402
    paged_decode_attention,
    paged_decode_attention_reference,
)
from qwen_triton.kernels.paged_prefill import (  # noqa: E402
    choose_prefill_launch,
    paged_prefill_attention,
    paged_prefill_attention_reference,
)

FP8 = torch.float8_e4m3fn
SENTINEL = 7.0  # out's rows the kernel must leave alone start at this value


def random_groups(seed: int, max_len: int = 24) -> list[tuple[int, int]]:
    """(cached, new) tokens per sequence, shuffled: two fresh prompts, three chunks after cached
    context, three decodes, two padding sequences ((0, 1): one token, no context; (0, 0): none)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    groups = [(0, draw(2, max_len)), (0, draw(2, 5)), (draw(1, max_len), draw(2, 12)), (draw(1, 4), draw(2, 3)),
              (draw(max_len, 2 * max_len), draw(2, max_len)), (draw(1, max_len), 1), (0, 1), (draw(1, 40), 1),
              (0, 1), (0, 0)]
    padding = {6, 9}  # indices of the padding sequences before the shuffle
    order = torch.randperm(len(groups), generator=gen).tolist()
    return [groups[i] if i not in padding else (-1, groups[i][1]) for i in order]  # cached -1 marks padding


def mixed_meta(groups, block_size: int, num_blocks: int, extra_tokens: int = 0, seed: int = 0) -> AttentionMetadata:
    """Metadata of a step over random block tables; (-1, new) is a padding sequence (seq_len 0, slots -1)
    and `extra_tokens` padding rows follow the last sequence (slots -1, in no sequence)."""
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    width = max(-(-(max(c, 0) + n) // block_size) for c, n in groups) + 1
    tables, slots, cu, seq_lens = [], [], [0], []
    for cached, new in groups:
        total = cached + new if cached >= 0 else 0
        need = -(-total // block_size)
        table, perm = perm[:need], perm[need:]
        tables.append(table + [0] * (width - need))
        slots += [table[p // block_size] * block_size + p % block_size for p in range(max(cached, 0), total)] \
            if cached >= 0 else [-1] * new
        cu.append(cu[-1] + new)
        seq_lens.append(total)
    slots += [-1] * extra_tokens
    return AttentionMetadata(
        torch.tensor(cu, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        torch.tensor(tables, dtype=torch.int32, device=DEVICE), torch.tensor(slots, dtype=torch.int64, device=DEVICE),
        [n for _, n in groups], seq_lens, block_size)


def prefill_rows(meta: AttentionMetadata) -> torch.Tensor:
    """bool [T]: rows the prefill kernel writes (sequences with 1 < Q <= seq_len)."""
    rows = torch.zeros(int(meta.slot_mapping.shape[0]), dtype=torch.bool)
    starts = meta.query_start_loc.tolist()
    for n, (num_q, seq_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
        rows[starts[n]:starts[n + 1]] = 1 < num_q <= seq_len
    return rows.to(DEVICE)


def quant_cache(dtype, scales, num_blocks, block_size, kv_heads, dim, seed):
    """A QuantKVCache with every slot written (through the reference) from unit-normal K/V."""
    calib = torch.tensor([3.5 / QMAX[dtype], 3.0 / QMAX[dtype]], device=DEVICE)
    cache = new_kv_cache(KVCacheSpec(dtype, scales), num_blocks, block_size, kv_heads, dim, torch.device(DEVICE),
                         calib)
    slots = num_blocks * block_size
    write_kv_cache(cache, randn(slots, kv_heads, dim, dtype=torch.float32, seed=seed),
                   randn(slots, kv_heads, dim, dtype=torch.float32, seed=seed + 1),
                   torch.arange(slots, device=DEVICE))
    return cache


def run_prefill(q, cache, meta, tiles=(16, 16), splits=1):
    """Kernel and reference on one batch, both into outs that start at SENTINEL."""
    args = (q, cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, q.shape[-1] ** -0.5)
    got = paged_prefill_attention(*args, out=torch.full_like(q, SENTINEL), max_query_len=meta.max_query_len,
                                  block_m=tiles[0], block_n=tiles[1], num_splits=splits)
    ref = paged_prefill_attention_reference(*args, out=torch.full_like(q, SENTINEL))
    return got, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("heads,kv_heads,dim,tiles", [(4, 2, 16, (16, 16)), (2, 2, 32, (32, 16)),
                                                      (3, 1, 16, (16, 32))], ids=["gqa", "mha", "gqa3"])
def test_paged_prefill_matches_reference(dtype, block_size, heads, kv_heads, dim, tiles):
    groups = random_groups(seed=block_size + heads)
    meta = mixed_meta(groups, block_size, num_blocks=200 // block_size + 40, seed=1)
    cache = randn(2, 200 // block_size + 40, block_size, kv_heads, dim, dtype=dtype, seed=2)
    q = randn(len(meta.slot_mapping), heads, dim, dtype=dtype, seed=3)
    got, ref = run_prefill(q, cache, meta, tiles)
    rows = prefill_rows(meta)
    assert rows.any() and not rows.all()
    assert torch.all(got[~rows] == SENTINEL)  # decode and padding rows untouched
    assert rel_err(got[rows], ref[rows]) < tol(dtype)


def test_paged_prefill_reads_head_major_blocks():
    """Blocks stored [Hkv, block_size, D] (a permuted view) give what the same values token-major give."""
    meta = mixed_meta(random_groups(seed=5), 8, 40, seed=2)
    cache = randn(2, 40, 8, 2, 32, dtype=torch.float32, seed=4)
    head_major = cache.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    assert head_major.stride(2) == 32 and torch.equal(head_major, cache)
    q = randn(len(meta.slot_mapping), 4, 32, dtype=torch.float32, seed=5)
    got = paged_prefill_attention(q, head_major, meta.block_tables, meta.query_start_loc, meta.seq_lens, 32 ** -0.5,
                                  out=torch.full_like(q, SENTINEL), max_query_len=meta.max_query_len,
                                  block_m=16, block_n=16)
    expected, ref = run_prefill(q, cache, meta)  # the reference gathers from token-major blocks only
    assert torch.equal(got, expected) and rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("code,scales", [(torch.int8, "dynamic"), (torch.int8, "calibrated"), (FP8, "dynamic"),
                                         (FP8, "calibrated")], ids=["int8-dyn", "int8-cal", "fp8-dyn", "fp8-cal"])
def test_paged_prefill_over_quantized_cache(dtype, code, scales):
    meta = mixed_meta(random_groups(seed=6), 8, 40, seed=3)
    cache = quant_cache(code, scales, 40, 8, 2, 16, seed=7)
    q = randn(len(meta.slot_mapping), 4, 16, dtype=dtype, seed=8)
    got, ref = run_prefill(q, cache, meta)
    rows = prefill_rows(meta)
    assert torch.all(got[~rows] == SENTINEL)
    assert rel_err(got[rows], ref[rows]) < tol(dtype)


@pytest.mark.parametrize("splits", [1, 4])
def test_decode_kernel_serves_the_decodes_of_a_mixed_step(splits):
    """With query_start_loc, sequence n's row is query_start_loc[n + 1] - 1 and only sequences of one
    query token are served (a padding one with no context gets zeros); other rows are left alone."""
    meta = mixed_meta(random_groups(seed=9), 4, 80, seed=4)
    cache = randn(2, 80, 4, 2, 16, dtype=torch.float32, seed=10)
    q = randn(len(meta.slot_mapping), 4, 16, dtype=torch.float32, seed=11)
    args = (q, cache, meta.block_tables, meta.seq_lens, 0.25)
    got = paged_decode_attention(*args, num_splits=splits, block_n=16, query_start_loc=meta.query_start_loc,
                                 out=torch.full_like(q, SENTINEL))
    ref = paged_decode_attention_reference(*args, query_start_loc=meta.query_start_loc,
                                           out=torch.full_like(q, SENTINEL))
    decode = torch.zeros(len(q), dtype=torch.bool, device=DEVICE)
    for n, num_q in enumerate(meta.query_lens_cpu):
        decode[int(meta.query_start_loc[n + 1]) - 1] |= num_q == 1
    assert torch.all(got[~decode] == SENTINEL)
    assert torch.any(got[decode] == 0) and rel_err(got[decode], ref[decode]) < 1e-5


def test_prefill_launch_depends_on_the_bucket_only():
    assert choose_prefill_launch(3, 128).block_m == 16  # short chunks: no wasted rows past 16
    assert choose_prefill_launch(2048, 128) == choose_prefill_launch(4096, 128)
    assert choose_prefill_launch(2048, 256).block_m <= 64


# split-K: (cached, new) with a chunk after a long context (several live splits per tile), a fresh
# prompt whose first rows precede split 1's first key (rows with no key in a split), short contexts
# with fewer key tiles than splits (empty splits), decodes and padding (-1: seq_len 0; (-1, 0): no rows)
SPLIT_GROUPS = [(150, 20), (0, 30), (1, 2), (-1, 1), (5, 1), (40, 3), (-1, 0), (2, 17)]


@pytest.mark.parametrize("splits,dtype", [(1, torch.float32), (2, torch.float32), (4, torch.float32),
                                          (4, torch.bfloat16)], ids=["s1", "s2", "s4", "s4-bf16"])
def test_split_prefill_matches_reference(splits, dtype):
    """Split-K over key ranges and the merge give the reference; rows of decodes, padding sequences
    and padding rows past the last sequence keep their values."""
    meta = mixed_meta(SPLIT_GROUPS, 8, 40, extra_tokens=2, seed=5)
    cache = randn(2, 40, 8, 1, 16, dtype=dtype, seed=6)
    q = randn(len(meta.slot_mapping), 2, 16, dtype=dtype, seed=7)
    got, ref = run_prefill(q, cache, meta, tiles=(32, 16), splits=splits)
    rows = prefill_rows(meta)
    assert torch.all(got[~rows] == SENTINEL)
    assert rel_err(got[rows], ref[rows]) < tol(dtype)


@pytest.mark.parametrize("code,scales,splits", [(torch.int8, "dynamic", 4), (torch.int8, "calibrated", 2),
                                                (FP8, "dynamic", 2), (FP8, "calibrated", 4)],
                         ids=["int8-dyn", "int8-cal", "fp8-dyn", "fp8-cal"])
def test_split_prefill_over_quantized_cache(code, scales, splits):
    """The scales survive the merge exactly: fp32 queries meet the reference within fp32 rounding."""
    meta = mixed_meta(SPLIT_GROUPS, 8, 40, seed=8)
    cache = quant_cache(code, scales, 40, 8, 1, 16, seed=9)
    q = randn(len(meta.slot_mapping), 2, 16, dtype=torch.float32, seed=10)
    got, ref = run_prefill(q, cache, meta, tiles=(16, 16), splits=splits)
    rows = prefill_rows(meta)
    assert torch.all(got[~rows] == SENTINEL)
    assert rel_err(got[rows], ref[rows]) < 1e-5


def test_prefill_splits_fill_the_gpu_from_the_bucket():
    """A bucket of one query tile: splits (powers of two) until heads x splits reach one program per SM,
    and no further; buckets of more tiles, an unknown GPU or a context of one key tile: no split."""
    def launch(max_q, **kw):
        return choose_prefill_launch(max_q, 128, num_heads=32, num_sms=132, **kw)

    for max_q in (16, 64):
        got = launch(max_q)
        assert got.num_splits == 8 and 32 * got.num_splits >= 132 > 32 * got.num_splits // 2, (max_q, got)
    for max_q in (128, 144, 160, 256, 512, 2048):
        assert launch(max_q).num_splits == 1
    assert choose_prefill_launch(16, 128).num_splits == 1
    assert launch(64, max_context=64).num_splits == 1 and launch(64, max_context=128).num_splits == 2
    assert choose_prefill_launch(16, 128, num_heads=4, num_sms=132, max_splits=16).num_splits == 16
    # the CPU backend's forward_graphed cases below (8 SMs there) take the split path
    assert choose_prefill_launch(32, 16, torch.float32, num_heads=4, num_sms=8, max_context=100).num_splits > 1


def graphed_case(dtype, heads, kv_heads, seed, extra_tokens=2):
    """A padded mixed step (padding sequences and rows past the last sequence) and the same step
    without its padding, for the torch backend (which writes every slot it is given)."""
    groups = random_groups(seed=seed, max_len=20)
    real = [(c, n) for c, n in groups if c >= 0]
    meta = mixed_meta(groups, 4, 80, extra_tokens=extra_tokens, seed=seed)
    ref_meta = mixed_meta(real, 4, 80, seed=seed)  # the same block tables: padding takes no blocks
    keep = torch.tensor([s >= 0 for s in meta.slot_mapping.tolist()], device=DEVICE)
    total = len(meta.slot_mapping)
    q = randn(total, heads, 16, dtype=dtype, seed=seed + 1)
    k, v = (randn(total, kv_heads, 16, dtype=dtype, seed=seed + i) for i in (2, 3))
    return meta, ref_meta, keep, q, k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (2, 2)], ids=["gqa", "mha"])
def test_forward_graphed_matches_torch_backend(dtype, heads, kv_heads):
    meta, ref_meta, keep, q, k, v = graphed_case(dtype, heads, kv_heads, seed=12)
    cache = randn(2, 80, 4, kv_heads, 16, dtype=dtype, seed=13)
    ref_cache = cache.clone()
    ref = TorchAttentionBackend().forward(q[keep], k[keep], v[keep], ref_cache, ref_meta, 0.25)
    got = TritonAttentionBackend(torch.device(DEVICE)).forward_graphed(q, k, v, cache, meta, 0.25,
                                                                      max_query_len=32)
    assert torch.equal(cache, ref_cache)
    assert rel_err(got[keep], ref) < tol(dtype)
    assert torch.count_nonzero(got[~keep]) == 0  # padding rows: zeros


@pytest.mark.parametrize("code,scales", [(torch.int8, "dynamic"), (FP8, "calibrated")], ids=["int8-dyn", "fp8-cal"])
def test_forward_graphed_over_quantized_cache(code, scales):
    """Every row attends over the cache as written (codes and scales equal to the torch backend's):
    the references of both kernels over that cache, and the torch backend within quantization error."""
    meta, ref_meta, keep, q, k, v = graphed_case(torch.float32, 4, 2, seed=14)
    cache, ref_cache = (quant_cache(code, scales, 80, 4, 2, 16, seed=15) for _ in range(2))
    backend = TorchAttentionBackend().forward(q[keep], k[keep], v[keep], ref_cache, ref_meta, 0.25)
    got = TritonAttentionBackend(torch.device(DEVICE)).forward_graphed(q, k, v, cache, meta, 0.25, max_query_len=24)
    assert torch.equal(cache.data.view(torch.uint8), ref_cache.data.view(torch.uint8))
    assert torch.equal(cache.scales, ref_cache.scales)
    expected = torch.zeros_like(q)
    args = (q, cache, meta.block_tables)
    paged_prefill_attention_reference(*args, meta.query_start_loc, meta.seq_lens, 0.25, out=expected)
    paged_decode_attention_reference(*args, meta.seq_lens, 0.25, query_start_loc=meta.query_start_loc, out=expected)
    assert rel_err(got, expected) < 1e-5
    assert rel_err(got[keep], backend) < 0.1  # fresh prompts: quantized K/V here, their own k/v there
