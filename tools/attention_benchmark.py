#!/usr/bin/env python3
"""The paged decode attention kernel in GB/s of KV cache read, against the device's copy bandwidth.

    python3 -m tools.attention_benchmark --out attention.json

At Qwen-7B's attention shapes (32 query and 32 KV heads of 128, bf16), for batches from 1 to 256 sequences and
contexts up to 8k tokens, blocks scattered at random over the pool: each (batch, context) is timed for two
block layouts, token-major [block_size, Hkv, D] (the engine's today) and head-major [Hkv, block_size, D] (a
permuted view: the kernel follows strides), and a sweep of launch settings (tile width, warps, stages, splits)
around the engine's own choice (`choose_launch`). Bytes: every K and V element of every context, once.
Reports the engine's choice and the best setting per shape, each as GB/s and as a share of the copy bandwidth
measured in the same run. The reference check (tools/check_kernels_gpu.py) covers correctness.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json

import torch
from triton.testing import do_bench

from qwen_triton.kernels.paged_attention import choose_launch, paged_decode_attention

from .benchmark import copy_bandwidth

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 32, 128, 16
SHAPES = ((1, 2048), (1, 8192), (8, 4096), (32, 2048), (64, 2048), (128, 1024), (256, 256), (256, 1024),
          (256, 2048), (512, 256))


def make_case(batch: int, ctx: int, head_major: bool, gen: torch.Generator):
    """q [B, H, D], a cache just big enough (blocks in random order), tables, context lengths."""
    width = -(-ctx // BLOCK_SIZE)
    num_blocks = batch * width
    shape = (2, num_blocks, KV_HEADS, BLOCK_SIZE, HEAD_DIM) if head_major else \
        (2, num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    cache = torch.randn(shape, dtype=torch.bfloat16, device="cuda")
    if head_major:
        cache = cache.permute(0, 1, 3, 2, 4)  # logical [2, blocks, block_size, Hkv, D]
    tables = torch.randperm(num_blocks, generator=gen).view(batch, width).to(torch.int32).cuda()
    ctx_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    return q, cache, tables, ctx_lens


def launches(batch: int, num_sms: int) -> list[dict]:
    """The engine's choice first, then the sweep."""
    chosen = choose_launch(batch, HEADS, num_sms)
    out = [{"num_splits": chosen.num_splits, "block_n": chosen.block_n, "num_warps": chosen.num_warps,
            "num_stages": chosen.num_stages, "v_with_k": chosen.v_with_k}]
    splits = sorted({chosen.num_splits, max(chosen.num_splits // 2, 1), chosen.num_splits * 2})
    for s, n, w, st in itertools.product(splits, (64, 128), (4, 8), (2, 3)):
        setting = {"num_splits": s, "block_n": n, "num_warps": w, "num_stages": st, "v_with_k": True}
        if setting not in out:
            out.append(setting)
    return out


def measure(batch: int, ctx: int, head_major: bool, copy_gbps: float, num_sms: int, gen) -> dict:
    case = make_case(batch, ctx, head_major, gen)  # q, cache, tables, ctx_lens
    nbytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * case[1].element_size()
    results = []
    for setting in launches(batch, num_sms):
        call = lambda s=setting, c=case: paged_decode_attention(*c, HEAD_DIM ** -0.5, **s)  # noqa: E731
        try:
            call()  # compile first: do_bench sizes its loops from one timed call, which must not compile
            torch.cuda.synchronize()
            ms = do_bench(call, warmup=5, rep=40, return_mode="median")
        except Exception as exc:  # a setting Triton cannot compile (shared memory): skip it
            results.append({**setting, "error": f"{type(exc).__name__}: {str(exc)[:120]}"})
            continue
        gbps = nbytes / ms / 1e6
        results.append({**setting, "us": 1e3 * ms, "GBps": gbps, "share_of_copy": gbps / copy_gbps})
    timed = [r for r in results if "GBps" in r]
    del case
    torch.cuda.empty_cache()
    return {"batch": batch, "ctx": ctx, "layout": "head_major" if head_major else "token_major",
            "kv_bytes": nbytes, "chosen": timed[0], "best": max(timed, key=lambda r: r["GBps"]),
            "all": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="attention.json")
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    args = parser.parse_args()
    copy_gbps = copy_bandwidth()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch, ctx in (SHAPES[:1] + SHAPES[3:4] + SHAPES[7:8]) if args.quick else SHAPES:
        for head_major in (False, True):
            row = measure(batch, ctx, head_major, copy_gbps, num_sms, gen)
            rows.append(row)
            c, b = row["chosen"], row["best"]
            print(f"B{batch:<4} ctx{ctx:<5} {row['layout']:<11} chosen {c['GBps']:6.0f} GB/s "
                  f"({c['share_of_copy']:.0%})  best {b['GBps']:6.0f} GB/s ({b['share_of_copy']:.0%}) "
                  f"splits {b['num_splits']} n{b['block_n']} w{b['num_warps']} s{b['num_stages']}", flush=True)
    result = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "copy_GBps": copy_gbps, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
