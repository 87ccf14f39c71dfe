#!/usr/bin/env python3
"""GPU checks and timings of the int8 / fp8 KV cache (EngineConfig.kv_cache_dtype) at Qwen-7B shapes
(32 KV heads of 128, blocks of 16), with dynamic and calibrated scales:
  - the Triton write kernel against the torch reference (codes and scales bit for bit, padding skipped);
  - the Triton paged decode kernel over a quantized cache against the reference over the same cache;
  - the accuracy cost: decode with a quantized cache against the bf16 cache holding the same K/V;
  - the Triton backend against the torch backend on a mixed batch over a quantized cache;
  - timings: paged decode with int8 / fp8 caches against bf16, batch 64-256, context 512-2048, in GB/s
    of cache read (codes plus scales) and as a speed-up over bf16.

tools/check_kernels_gpu.py runs these with its own checks; alone:

    python3 -m tools.check_kv_quant_gpu [--json OUT.json] [--skip-timing]

The CPU twin is tests/test_kv_quant.py.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable

import torch

from qwen_triton.attention import AttentionMetadata, QuantKVCache
from qwen_triton.attention.kv_quant import QMAX, KVCacheSpec, new_kv_cache
from qwen_triton.attention.torch_backend import TorchAttentionBackend
from qwen_triton.attention.torch_backend import write_kv_cache as write_kv_reference
from qwen_triton.attention.triton_backend import TritonAttentionBackend
from qwen_triton.kernels import kv_cache
from qwen_triton.kernels.paged_attention import choose_launch, paged_decode_attention, paged_decode_attention_reference

DEV = torch.device("cuda")
FP8 = torch.float8_e4m3fn
KINDS = ((torch.int8, "dynamic"), (torch.int8, "calibrated"), (FP8, "dynamic"), (FP8, "calibrated"))
# decode output with a quantized cache vs the bf16 cache, unit-normal K/V, context up to 2048
# (measured on the CPU reference at 2048: int8 0.010 dynamic / 0.015 calibrated, fp8 0.037 / 0.039)
COST_LIMIT = {torch.int8: 3e-2, FP8: 8e-2}
Check = Callable[..., None]  # check(name, err, limit, **extra), as in tools/check_kernels_gpu.py


def _tag(dtype, scales) -> str:
    return f"{'int8' if dtype == torch.int8 else 'fp8'}-{scales}"


def rel_err(got, ref) -> float:
    got, ref = got.double(), ref.double()
    if torch.isnan(got).any():
        return float("nan")
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def quant_cache(dtype, scales, num_blocks, kv_heads=32, dim=128, block_size=16) -> QuantKVCache:
    # calibrated: the range of unit-normal K/V (|x| past 4.5 clamps)
    calib = torch.full((2,), 4.5 / QMAX[dtype], device=DEV)
    return new_kv_cache(KVCacheSpec(dtype, scales), num_blocks, block_size, kv_heads, dim, DEV, calib)


def _bytes(cache: QuantKVCache) -> torch.Tensor:
    return cache.data.view(torch.uint8)


def _filled(cache, num_blocks, kv_heads=32, dim=128, seed=0):
    """Every slot of `cache` written (through the reference) with unit-normal bf16 K/V; returns them."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    k, v = (torch.randn(num_blocks * 16, kv_heads, dim, device=DEV, generator=gen).to(torch.bfloat16)
            for _ in range(2))
    write_kv_reference(cache, k, v, torch.arange(num_blocks * 16, device=DEV))
    return k, v


def check_write(check: Check) -> None:
    kvs = torch.randn(4096, 3, 32, 128, device=DEV).to(torch.bfloat16)
    slots = torch.randperm(600 * 16, device=DEV)[:4096]
    for dtype, scales in KINDS:
        got, expected = quant_cache(dtype, scales, 600), quant_cache(dtype, scales, 600)
        write_kv_reference(expected, kvs[:4000, 1], kvs[:4000, 2], slots[:4000])
        padded = slots.clone()
        padded[4000:] = -1
        kv_cache.write_kv_cache(got, kvs[:, 1], kvs[:, 2], padded)
        differ = (_bytes(got) != _bytes(expected)).float().mean().item()  # bit for bit: 0
        same_scales = torch.equal(got.scales, expected.scales)
        check(f"kv quant write {_tag(dtype, scales)} T4096 (96 slots -1): share of codes differing, 1 if the "
              "scales differ", differ if same_scales else 1.0, 1e-12)


def check_decode(check: Check, num_sms: int) -> None:
    for num_tokens, kv_heads, max_ctx in ((1, 32, 4096), (64, 32, 2048), (33, 4, 1000), (256, 32, 300)):
        heads = 32 if kv_heads == 32 else 28
        width = -(-max_ctx // 16)
        num_blocks = num_tokens * width + 7
        tables = torch.randperm(num_blocks, device=DEV)[:num_tokens * width].view(num_tokens, width).int()
        ctx = torch.randint(1, max_ctx + 1, (num_tokens,), device=DEV, dtype=torch.int32)
        ctx[0] = max_ctx
        q = torch.randn(num_tokens, heads, 128, device=DEV).to(torch.bfloat16)
        plain = torch.zeros(2, num_blocks, 16, kv_heads, 128, dtype=torch.bfloat16, device=DEV)
        k, v = _filled(plain, num_blocks, kv_heads)
        base = paged_decode_attention(q, plain, tables, ctx, 128 ** -0.5, num_splits=1, block_n=128)
        launch = choose_launch(num_tokens, heads, num_sms)
        for dtype, scales in KINDS:
            cache = quant_cache(dtype, scales, num_blocks, kv_heads)
            write_kv_reference(cache, k, v, torch.arange(num_blocks * 16, device=DEV))
            ref = paged_decode_attention_reference(q, cache, tables, ctx, 128 ** -0.5)
            name = f"kv quant decode {_tag(dtype, scales)} N{num_tokens} H{heads}/{kv_heads} ctx<={max_ctx}"
            for splits in sorted({launch.num_splits, 1, 4}):
                got = paged_decode_attention(q, cache, tables, ctx, 128 ** -0.5, num_splits=splits, block_n=128)
                check(f"{name} splits{splits}", rel_err(got, ref), 2e-2)
            check(f"{name}: vs the bf16 cache", rel_err(got, base), COST_LIMIT[dtype])


def check_backend(check: Check) -> None:
    groups = [(100, 1), (0, 300), (37, 1), (0, 5), (200, 64), (0, 1), (1000, 1), (0, 129), (16, 17)]
    slots, cu, seq_lens, tables, perm = [], [0], [], [], torch.randperm(400).tolist()
    for cached, new in groups:
        need = -(-(cached + new) // 16)
        table, perm = perm[:need], perm[need:]
        tables.append(table + [0] * (70 - need))
        slots += [table[p // 16] * 16 + p % 16 for p in range(cached, cached + new)]
        cu.append(cu[-1] + new)
        seq_lens.append(cached + new)
    meta = AttentionMetadata(torch.tensor(cu, dtype=torch.int32, device=DEV),
                             torch.tensor(seq_lens, dtype=torch.int32, device=DEV),
                             torch.tensor(tables, dtype=torch.int32, device=DEV), torch.tensor(slots, device=DEV),
                             [n for _, n in groups], seq_lens, 16)
    total = cu[-1]
    q, k, v = (torch.randn(total, 32, 128, device=DEV).to(torch.bfloat16) for _ in range(3))
    for dtype, scales in KINDS:
        caches = [quant_cache(dtype, scales, 400) for _ in range(2)]
        for cache in caches:
            _filled(cache, 400, seed=1)  # the same cached context in both
        ref = TorchAttentionBackend().forward(q, k, v, caches[0], meta, 128 ** -0.5)
        got = TritonAttentionBackend(DEV).forward(q, k, v, caches[1], meta, 128 ** -0.5)
        check(f"kv quant triton backend {_tag(dtype, scales)} mixed H32/32", rel_err(got, ref), 2e-2)
        same = torch.equal(_bytes(caches[0]), _bytes(caches[1])) and torch.equal(caches[0].scales, caches[1].scales)
        check(f"kv quant triton backend {_tag(dtype, scales)} cache written", 0.0 if same else 1.0, 0.5)


def run_checks(check: Check, num_sms: int) -> None:
    check_write(check)
    check_decode(check, num_sms)
    check_backend(check)


def time_decode(graph_us: Callable[[Callable[[], object]], float], copy_bw: float, num_sms: int) -> dict:
    """Paged decode (the engine's launch policy) over a full cache of each kind; one cache per case
    (every case is far beyond L2)."""
    out = {}
    kinds = ((torch.bfloat16, None),) + KINDS
    for num_tokens in (64, 128, 256):
        for ctx_len in (512, 1024, 2048):
            num_blocks = num_tokens * ctx_len // 16
            tables = torch.randperm(num_blocks, device=DEV).view(num_tokens, -1).int()
            ctx = torch.full((num_tokens,), ctx_len, dtype=torch.int32, device=DEV)
            q = torch.randn(num_tokens, 32, 128, device=DEV).to(torch.bfloat16)
            launch = choose_launch(num_tokens, 32, num_sms)
            base_us = None
            for dtype, scales in kinds:
                spec = KVCacheSpec(dtype, scales)
                if scales is None:
                    cache = torch.randn(2, num_blocks, 16, 32, 128, device=DEV, dtype=dtype)
                else:
                    cache = quant_cache(dtype, scales, num_blocks)
                    cache.data.view(torch.uint8).random_(0, 120)  # finite positive codes of either dtype
                    cache.scales.uniform_(0.01, 0.03)
                nbytes = num_tokens * ctx_len * spec.token_bytes(32, 128)
                us = graph_us(functools.partial(paged_decode_attention, q, cache, tables, ctx, 0.088, launch.num_splits,
                                                launch.block_n, launch.num_warps, launch.num_stages, launch.v_with_k))
                base_us = base_us or us
                key = f"decode {spec.name} N{num_tokens} ctx{ctx_len}"
                out[key] = {"us": us, "GBps": nbytes / us / 1e3, "share_of_copy": nbytes / us / 1e3 / copy_bw,
                            "speedup_vs_bf16": base_us / us}
                print(f"time {key}: {us:.1f} us, {nbytes / us / 1e3:.0f} GB/s ({nbytes / us / 1e3 / copy_bw:.0%} "
                      f"of copy), x{base_us / us:.2f} vs bf16", flush=True)
                cache = None  # freed before the next kind's
    return out


def main() -> int:
    from tools.check_kernels_gpu import RESULTS, check, copy_bandwidth, graph_us

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    num_sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    print(f"device: {torch.cuda.get_device_name()}, {num_sms} SMs, torch {torch.__version__}", flush=True)
    run_checks(check, num_sms)
    timings = {} if args.skip_timing else time_decode(graph_us, copy_bandwidth(), num_sms)
    return report(RESULTS, timings, args.json)


def report(results: list[dict], timings: dict, json_path: str | None) -> int:
    """Print the passed / failed count and each failure, write the JSON report; the exit status."""
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed", flush=True)
    for name in failed:
        print(f"  FAILED: {name}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "checks": results, "timings": timings}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
