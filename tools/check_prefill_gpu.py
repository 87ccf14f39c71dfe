#!/usr/bin/env python3
"""GPU checks and timings of the paged prefill kernel (kernels/paged_prefill.py) and the Triton
backend's graph-safe path (TritonAttentionBackend.forward_graphed) at Qwen-7B shapes (128 dims,
blocks of 16):
  - the kernel against its torch reference on mixed batches (prompts, chunks after cached context,
    decodes, padding), H 32/32 and 28/4, token- and head-major blocks, the launch policy and other tiles,
    one split and split-K (num_splits 2-16: chunks after up to 4,000 cached tokens, contexts shorter than
    the splits), over float and int8 / fp8 caches (both scale kinds: the scales across the merge);
  - forward_graphed over int8 / fp8 caches against the kernels' references over the same cache;
  - forward_graphed captured in a CUDA graph on one batch and replayed on another of the same bucket
    sizes (other lengths, other mix) against the torch backend, at a 512-token bucket and at a 160-token
    one whose launch splits (chunks after 2,000 cached tokens);
  - timings: the kernel (policy and other tiles; the policy's tiles at 2-16 splits beside one, the
    chooser's pick marked) against the eager path's flash varlen attention, for 128-, 512- and 2048-token
    prompts and 16-, 64- and 144-token chunks after 2,000 tokens of context, 32 heads.

Off a GPU (Triton's interpreter, TRITON_INTERPRET=1) the checks run with DEV set to the CPU: slow at these
sizes, and the graph replay is a plain call on the same static tensors.

tools/check_kernels_gpu.py runs these with its own checks; alone:

    python3 -m tools.check_prefill_gpu [--json OUT.json] [--skip-timing]

The CPU twin is tests/test_paged_prefill.py.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from qwen_triton.attention import AttentionMetadata
from qwen_triton.attention.kv_quant import QMAX, KVCacheSpec, gather_kv, new_kv_cache
from qwen_triton.attention.torch_backend import TorchAttentionBackend, context_slots
from qwen_triton.attention.torch_backend import write_kv_cache as write_kv_reference
from qwen_triton.attention.triton_backend import TritonAttentionBackend, _varlen_causal, _varlen_kwargs
from qwen_triton.kernels.paged_attention import paged_decode_attention_reference
from qwen_triton.kernels.paged_prefill import (
    choose_prefill_launch,
    paged_prefill_attention,
    paged_prefill_attention_reference,
)
from tools.check_kv_quant_gpu import rel_err, report

DEV = torch.device("cuda")
Check = Callable[..., None]  # check(name, err, limit, **extra), as in tools/check_kernels_gpu.py
# (cached, new) per sequence: prompts, chunks after context, decodes; (-1, n): padding (seq_len 0, slots -1)
GROUPS_A = [(100, 1), (0, 300), (37, 1), (0, 5), (200, 64), (-1, 1), (1000, 1), (0, 129), (16, 17), (-1, 0)]
GROUPS_B = [(0, 2), (513, 1), (64, 200), (0, 1), (-1, 1), (3, 250), (700, 1), (-1, 1), (1, 1), (0, 40)]
# split-K: short chunks after long contexts, contexts shorter than the splits (empty splits), a prompt
GROUPS_C = [(2000, 144), (0, 2), (1, 3), (3000, 16), (-1, 1), (500, 1), (63, 65), (0, 200), (-1, 0), (4000, 64)]
# a 160-token bucket of at most 4 sequences (its launch splits), two batches of it
GROUPS_D = [(2000, 144), (37, 1), (-1, 1)]
GROUPS_E = [(900, 100), (0, 40), (1500, 1), (5, 15)]
QUANT_KINDS = ((torch.int8, "dynamic"), (torch.int8, "calibrated"), (torch.float8_e4m3fn, "dynamic"),
               (torch.float8_e4m3fn, "calibrated"))


def _tag(dtype) -> str:
    return str(dtype).split(".")[-1]


def padded_meta(groups, block_size=16, num_blocks=400, num_seqs=None, num_tokens=None, width=None):
    """Metadata over random block tables, padded to num_seqs sequences (seq_len 0, one token, slot -1)
    and num_tokens rows (the rest past the last sequence, slot -1)."""
    groups = list(groups) + [(-1, 1)] * ((num_seqs or len(groups)) - len(groups))
    perm = torch.randperm(num_blocks).tolist()
    tables, slots, cu, seq_lens = [], [], [0], []
    for cached, new in groups:
        total = cached + new if cached >= 0 else 0
        need = -(-total // block_size)
        table, perm = perm[:need], perm[need:]
        tables.append(table)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(cached, total)] \
            if cached >= 0 else [-1] * new
        cu.append(cu[-1] + new)
        seq_lens.append(total)
    slots += [-1] * ((num_tokens or cu[-1]) - cu[-1])
    width = width or max(len(t) for t in tables)
    return AttentionMetadata(
        torch.tensor(cu, dtype=torch.int32, device=DEV), torch.tensor(seq_lens, dtype=torch.int32, device=DEV),
        torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEV),
        torch.tensor(slots, dtype=torch.int64, device=DEV), [n for _, n in groups], seq_lens, block_size)


def _unpadded(meta: AttentionMetadata) -> tuple[AttentionMetadata, torch.Tensor]:
    """The same step without padding sequences and rows (for the torch backend), and which rows stay."""
    keep = meta.slot_mapping >= 0
    real = [i for i, s in enumerate(meta.seq_lens_cpu) if s > 0]
    lens = [meta.query_lens_cpu[i] for i in real]
    cu = torch.tensor([0] + lens, dtype=torch.int32, device=DEV).cumsum(0).to(torch.int32)
    return AttentionMetadata(cu, meta.seq_lens[real], meta.block_tables[real], meta.slot_mapping[keep], lens,
                             [meta.seq_lens_cpu[i] for i in real], meta.block_size), keep


def check_kernel(check: Check, dtype) -> None:
    for heads, kv_heads in ((32, 32), (28, 4)):
        meta = padded_meta(GROUPS_A)
        cache = torch.randn(2, 400, 16, kv_heads, 128, device=DEV).to(dtype)
        q = torch.randn(len(meta.slot_mapping), heads, 128, device=DEV).to(dtype)
        args = (meta.block_tables, meta.query_start_loc, meta.seq_lens, 128 ** -0.5)
        ref = paged_prefill_attention_reference(q, cache, *args, out=torch.zeros_like(q))
        rows = torch.tensor([1 < n for n in meta.query_lens_cpu for _ in range(n)], device=DEV)
        policy = choose_prefill_launch(512, 128, num_heads=heads, num_sms=_num_sms())
        head_major = cache.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
        for layout, kv in (("token-major", cache), ("head-major", head_major)):
            for block_m, block_n, warps, splits in {(policy.block_m, policy.block_n, policy.num_warps, s)
                                                    for s in (1, 4, policy.num_splits)} | {
                                                   (64, 32, 4, 1), (128, 64, 8, 1), (128, 64, 8, 4)}:
                got = paged_prefill_attention(q, kv, *args, out=torch.full_like(q, 7.0), max_query_len=512,
                                              block_m=block_m, block_n=block_n, num_warps=warps, num_splits=splits)
                name = f"paged_prefill {_tag(dtype)} H{heads}/{kv_heads} {layout} m{block_m} n{block_n} w{warps}"
                name += f" splits{splits}" if splits > 1 else ""
                check(name, rel_err(got[rows], ref[rows]), 2e-2)
                check(f"{name}: other rows untouched", 0.0 if bool((got[~rows] == 7.0).all()) else 1.0, 0.5)


def _num_sms() -> int:
    """The GPU's multiprocessors (the chooser's input); 4 off a GPU, as the Triton backend takes."""
    return torch.cuda.get_device_properties(DEV).multi_processor_count if DEV.type == "cuda" else 4


def _quant_cache(code, scales, num_blocks, kv_heads):
    """An int8 / fp8 cache of num_blocks blocks of 16, every slot written from unit-normal bf16 K/V."""
    calib = torch.full((2,), 4.5 / QMAX[code], device=DEV)
    cache = new_kv_cache(KVCacheSpec(code, scales), num_blocks, 16, kv_heads, 128, DEV, calib)
    slots = num_blocks * 16
    write_kv_reference(cache, *(torch.randn(slots, kv_heads, 128, device=DEV).to(torch.bfloat16) for _ in range(2)),
                       torch.arange(slots, device=DEV))
    return cache


def check_split(check: Check, dtype) -> None:
    """Split-K on GROUPS_C (chunks after up to 4,000 cached tokens, contexts shorter than the splits) at
    the policy's tiles, 1-16 splits over float caches and 1 and 4 over each int8 / fp8 cache (both scale
    kinds), against the reference over the same cache."""
    meta = padded_meta(GROUPS_C, num_blocks=800)
    args = (meta.block_tables, meta.query_start_loc, meta.seq_lens, 128 ** -0.5)
    rows = torch.tensor([1 < n for n in meta.query_lens_cpu for _ in range(n)], device=DEV)
    tiles = choose_prefill_launch(256, 128, dtype)
    cases = [(f"H{h}/{kv}", h, (1, 2, 4, 16), torch.randn(2, 800, 16, kv, 128, device=DEV).to(dtype))
             for h, kv in ((32, 32), (28, 4))]
    cases += [(f"H32/8 {'int8' if code == torch.int8 else 'fp8'}-{scales}", 32, (1, 4),
               _quant_cache(code, scales, 800, 8)) for code, scales in QUANT_KINDS]
    for name, heads, split_counts, cache in cases:
        q = torch.randn(len(meta.slot_mapping), heads, 128, device=DEV).to(dtype)
        ref = paged_prefill_attention_reference(q, cache, *args, out=torch.zeros_like(q))
        for splits in split_counts:
            got = paged_prefill_attention(q, cache, *args, out=torch.full_like(q, 7.0), max_query_len=256,
                                          block_m=tiles.block_m, block_n=tiles.block_n, num_splits=splits)
            tag = f"paged_prefill split-K {_tag(dtype)} {name} long contexts m{tiles.block_m} splits{splits}"
            check(tag, rel_err(got[rows], ref[rows]), 2e-2)
            check(f"{tag}: other rows untouched", 0.0 if bool((got[~rows] == 7.0).all()) else 1.0, 0.5)


def check_quantized(check: Check) -> None:
    """forward_graphed over each quantized cache against both kernels' references over that cache."""
    for code, scales in QUANT_KINDS:
        cache = _quant_cache(code, scales, 400, 8)
        meta = padded_meta(GROUPS_A, num_tokens=1000)
        q, k, v = (torch.randn(1000, h, 128, device=DEV).to(torch.bfloat16) for h in (32, 8, 8))
        got = TritonAttentionBackend(DEV).forward_graphed(q, k, v, cache, meta, 128 ** -0.5, max_query_len=512)
        expected = torch.zeros_like(q)
        paged_prefill_attention_reference(q, cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
                                          128 ** -0.5, out=expected)
        paged_decode_attention_reference(q, cache, meta.block_tables, meta.seq_lens, 128 ** -0.5,
                                         query_start_loc=meta.query_start_loc, out=expected)
        name = f"{'int8' if code == torch.int8 else 'fp8'}-{scales}"
        check(f"forward_graphed bf16 {name} H32/8 vs kernel references", rel_err(got, expected), 2e-2)


def capture(fn: Callable[[], object]) -> Callable[[], None]:
    """fn captured in a CUDA graph (after a warm-up run on a side stream, which compiles): its replay.
    Off a GPU: fn itself (it reads the same static tensors a replay would)."""
    if DEV.type != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def check_graph_replay(check: Check, dtype, batches=(("A", GROUPS_A), ("B", GROUPS_B)),
                       num_seqs=12, num_tokens=1024, width=64, bucket=512) -> None:
    """Captured on the first batch, replayed on each (the same B, T, block-table width and max_query_len
    `bucket`; other lengths, another mix) after copying each into the captured tensors."""
    kv_heads = 4
    backend = TritonAttentionBackend(DEV)
    static = padded_meta(batches[0][1], num_seqs=num_seqs, num_tokens=num_tokens, width=width)
    qkv = [torch.randn(num_tokens, h, 128, device=DEV).to(dtype) for h in (28, kv_heads, kv_heads)]
    cache = torch.randn(2, 400, 16, kv_heads, 128, device=DEV).to(dtype)
    out = torch.empty_like(qkv[0])
    replay = capture(lambda: out.copy_(backend.forward_graphed(*qkv, cache, static, 128 ** -0.5, bucket)))
    splits = choose_prefill_launch(bucket, 128, dtype, num_heads=28, num_sms=backend.num_sms,
                                   max_context=width * 16).num_splits
    for name, groups in batches:
        name = f"{name} (bucket {bucket}, {splits} splits)"
        meta = padded_meta(groups, num_seqs=num_seqs, num_tokens=num_tokens, width=width)
        for src in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
            getattr(static, src).copy_(getattr(meta, src))
        for x in qkv:
            x.copy_(torch.randn(x.shape, device=DEV).to(dtype))
        ref_cache = cache.clone()
        replay()
        ref_meta, keep = _unpadded(meta)
        ref = TorchAttentionBackend().forward(*(x[keep] for x in qkv), ref_cache, ref_meta, 128 ** -0.5)
        check(f"forward_graphed {_tag(dtype)} graph replay on batch {name}", rel_err(out[keep], ref), 2e-2)
        check(f"forward_graphed {_tag(dtype)} graph replay on batch {name}: cache written, padding rows zero",
              0.0 if torch.equal(cache, ref_cache) and not out[~keep].any() else 1.0, 0.5)


def run_checks(check: Check) -> None:
    for dtype in (torch.bfloat16, torch.float16):
        check_kernel(check, dtype)
        check_split(check, dtype)
        check_graph_replay(check, dtype)
        check_graph_replay(check, dtype, (("D", GROUPS_D), ("E", GROUPS_E)), num_seqs=4, num_tokens=160, width=256,
                           bucket=160)
    check_quantized(check)


# -- timings ------------------------------------------------------------------------------------

TILES = [(64, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 4, 2), (64, 32, 4, 3), (128, 128, 8, 2)]
SPLITS = (2, 4, 8, 16)  # split-K counts timed at the policy's tiles, beside one split


def _timing_case(groups, heads=32):
    """A step of `groups` at 7B shapes, bf16: its metadata, q/k/v, a cache holding the context."""
    total = sum(c + n for c, n in groups)
    meta = padded_meta(groups, num_blocks=-(-total // 16) + len(groups))
    num_tokens = len(meta.slot_mapping)
    q, k, v = (torch.randn(num_tokens, heads, 128, device=DEV).to(torch.bfloat16) for _ in range(3))
    cache = torch.randn(2, -(-total // 16) + len(groups), 16, heads, 128, device=DEV).to(torch.bfloat16)
    write_kv_reference(cache, k, v, meta.slot_mapping)
    return meta, q, k, v, cache


def _varlen_call(meta, q, k, v, cache):
    """The eager path's attention for a step of prompts only or chunks only (flash varlen; chunks
    gather their context from the cache first), or None when this torch has no varlen attention."""
    if _varlen_kwargs() is None:
        return None
    lens = meta.query_lens_cpu
    cu, scale = meta.query_start_loc, 128 ** -0.5
    if meta.seq_lens_cpu == lens:
        return lambda: _varlen_causal(q, k, v, cu, max(lens), scale)
    slots = torch.cat([context_slots(meta.block_tables[i], s, 16) for i, s in enumerate(meta.seq_lens_cpu)])
    cu_k = torch.tensor([0] + meta.seq_lens_cpu, device=DEV).cumsum(0).to(torch.int32)

    def call():
        ctx_k, ctx_v = gather_kv(cache, slots)
        return _varlen_causal(q, ctx_k, ctx_v, cu, max(lens), scale, cu_k, max(meta.seq_lens_cpu))
    return call


def _time_any(graph_us, fn) -> float:
    """Microseconds of fn from a CUDA graph, or eagerly (triton's do_bench) when it cannot be captured."""
    try:
        return graph_us(fn)
    except RuntimeError as exc:
        from triton.testing import do_bench

        print(f"  (not capturable: {str(exc)[:80]}; timed eagerly)", flush=True)
        torch.cuda.synchronize()
        return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def _time_kernel(graph_us, name, meta, q, cache, bucket, flops, num_sms) -> dict:
    """The kernel on one step with max_query_len `bucket`: the policy's tiles and the other TILES at one
    split, the policy's tiles at SPLITS; "policy" marks the launch forward_graphed would choose."""
    policy = choose_prefill_launch(bucket, 128, num_heads=q.shape[1], num_sms=num_sms,
                                   max_context=meta.block_tables.shape[1] * 16)
    tiles = (policy.block_m, policy.block_n, policy.num_warps, policy.num_stages)
    result, by_splits = {}, {}
    for block_m, block_n, warps, stages, splits in sorted({(*tiles, 1), *((*t, 1) for t in TILES),
                                                           *((*tiles, s) for s in SPLITS)}):
        dst = torch.empty_like(q)
        us = graph_us(lambda: paged_prefill_attention(  # noqa: B023 (timed within this iteration)
            q, cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, 128 ** -0.5, out=dst,  # noqa: B023
            max_query_len=bucket, block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages,  # noqa: B023
            num_splits=splits))  # noqa: B023
        chosen = (block_m, block_n, warps, stages, splits) == (*tiles, policy.num_splits)
        key = f"paged bucket{bucket} m{block_m} n{block_n} w{warps} s{stages}"
        key += f" splits{splits}" if splits > 1 else ""
        result[key] = {"us": us, "TFLOPs": flops / us / 1e6, "policy": chosen, "splits": splits}
        if (block_m, block_n, warps, stages) == tiles:
            by_splits[splits] = us
        print(f"time prefill {name} {key}: {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s{' <- policy' if chosen else ''}",
              flush=True)
    best = min(by_splits, key=by_splits.get)
    result[f"bucket{bucket} splits"] = summary = {
        "chosen": policy.num_splits, "best": best, "us_by_splits": by_splits,
        "chosen_over_best": by_splits[policy.num_splits] / by_splits[best],
        "one_split_over_chosen": by_splits[1] / by_splits[policy.num_splits]}
    print(f"time prefill {name} bucket{bucket}: chooser {policy.num_splits} splits, best {best} "
          f"({summary['chosen_over_best']:.2f}x the best; one split {summary['one_split_over_chosen']:.2f}x it)",
          flush=True)
    return result


def time_prefill(graph_us: Callable[[Callable[[], object]], float], num_sms: int | None = None) -> dict:
    """Microseconds and TFLOP/s (causal: 4 * H * D per query-key pair) of the kernel, with max_query_len
    the step's and a power-of-two bucket above it, one split and SPLITS, against the eager path's flash
    varlen attention."""
    num_sms = num_sms or _num_sms()
    out = {}
    cases = {"prompt 1x128": [(0, 128)], "prompt 16x128": [(0, 128)] * 16, "prompt 1x512": [(0, 512)],
             "prompt 4x512": [(0, 512)] * 4, "prompt 1x2048": [(0, 2048)],
             "chunk 1x16 after 2000": [(2000, 16)], "chunk 1x64 after 2000": [(2000, 64)],
             "chunk 1x144 after 2000": [(2000, 144)], "chunk 8x144 after 2000": [(2000, 144)] * 8}
    for name, groups in cases.items():
        meta, q, k, v, cache = _timing_case(groups)
        flops = 4 * 32 * 128 * sum(sum(range(c + 1, c + n + 1)) for c, n in groups)
        max_q = max(n for _, n in groups)
        result = out[name] = {}
        for bucket in sorted({max_q, 1 << (max_q - 1).bit_length()}):
            result.update(_time_kernel(graph_us, name, meta, q, cache, bucket, flops, num_sms))
        varlen = _varlen_call(meta, q, k, v, cache)
        if varlen is not None:
            us = _time_any(graph_us, varlen)
            result["flash varlen (eager path)"] = {"us": us, "TFLOPs": flops / us / 1e6}
            print(f"time prefill {name} flash varlen (eager path): {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s",
                  flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    from tools.check_kernels_gpu import RESULTS, check, graph_us

    torch.manual_seed(0)
    run_checks(check)
    timings = {} if args.skip_timing else time_prefill(graph_us)
    return report(RESULTS, timings, args.json)


if __name__ == "__main__":
    sys.exit(main())
