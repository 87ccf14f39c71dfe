#!/usr/bin/env python3
"""bf16 batch-1..8 matrix-vector products at Qwen-7B's shapes on a GPU: cuBLAS (F.linear) against our GEMV
(qwen_triton/kernels/gemv.py) over a sweep of launch settings, and the linear part of one batch-1 decode step
(32 layers of qkv, o, gate_up, down + lm_head, one CUDA graph) with cuBLAS and with the best settings found.

    python -m tools.gemv_benchmark --out gemv.json      (from the repo root, on a GPU; --quick: fewer settings)

The full sweep is about 3,000 timings; --quick (about 700) fits a 10-minute run, and --budget-s (480 s by
default) times only the policy's settings once it is spent, so a run always reaches the step chain.

Every timing is a CUDA-graph replay of calls that rotate over copies of the weight (>= 256 MB in all, past
the 60 MB L2, so each call reads its weight from HBM), median of triton.testing.do_bench after a compile
call and a warm replay; GB/s counts the weight bytes only, % is of tools/benchmark.copy_bandwidth measured
in the same run. Each launch setting is first checked against gemv_reference (a failing one is recorded
with its error and skipped).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import traceback
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

from qwen_triton.kernels.gemv import GemvLaunch, choose_gemv_launch, gemv, gemv_reference
from tools.benchmark import copy_bandwidth

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (151936, 4096)}  # name: (N, K) of Qwen-7B's bf16 weights
LAYER = ("qkv", "o", "gate_up", "down")
LAYERS = 32
MS = (1, 2, 4, 8)
ROTATE_BYTES = 256 << 20  # weight copies a timing rotates over: several times the H200's 60 MB L2
MIN_CALLS = 16  # calls a timed graph holds (launch gaps amortized as in the decode graph)
DTYPE = torch.bfloat16
DEV = "cuda"


def sweep(m: int, n: int, k: int, num_sms: int, quick: bool) -> list[tuple[str, GemvLaunch]]:
    """(name, launch) to time: the policy's pick, its split halved / doubled, then a grid of tiles,
    splits, warps and stages (the broadcast product's [BM, BN, BK] capped to keep it in registers)."""
    auto = choose_gemv_launch(m, n, k, num_sms)
    out = [("auto", auto), ("auto split/2", replace(auto, split_k=max(1, auto.split_k // 2))),
           ("auto split*2", replace(auto, split_k=2 * auto.split_k))]
    rows = 1 << max(min(m, 8) - 1, 0).bit_length()
    if m == 1:
        tiles = [(4, 1024), (8, 512), (8, 1024), (16, 256), (16, 512), (32, 256), (32, 128)]
    else:  # the broadcast product [rows, BN, BK] in float32 registers: at most 16K values a program
        tiles = [(bn, bk) for bn in (4, 8, 16, 32) for bk in (128, 256, 512, 1024) if rows * bn * bk <= 16384]
    splits = (1, 2, 4) if quick else (1, 2, 4, 8)
    warps = (4,) if quick else (4, 8)
    stages = (3,) if quick else (2, 4)
    for (bn, bk), s, w, st in itertools.product(tiles, splits, warps, stages):
        if k % bk == 0:
            out.append((f"bn{bn} bk{bk} s{s} w{w} st{st}", GemvLaunch(bn, bk, s, w, st)))
    if m >= 2:
        for (bn, bk), s, w in itertools.product([(16, 256), (16, 512), (32, 256), (64, 128)], splits, warps):
            if k % bk == 0:
                out.append((f"dot bn{bn} bk{bk} s{s} w{w}", GemvLaunch(bn, bk, s, w, 3, use_dot=True)))
    return out


def graph_us(calls) -> float:
    """Median microseconds a call: a CUDA graph of `calls` (zero-argument callables), timed by do_bench."""
    from triton.testing import do_bench

    for c in calls[:2]:  # compile and allocate before capture
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    graph.replay()  # warm replay: do_bench sizes its loops from its first timed call
    torch.cuda.synchronize()
    ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
    return 1000.0 * ms / len(calls)


def weight_copies(n: int, k: int) -> list[torch.Tensor]:
    per = n * k * 2
    count = max(2, math.ceil(ROTATE_BYTES / per))
    return [torch.empty(n, k, dtype=DTYPE, device=DEV).normal_(std=k ** -0.5) for _ in range(count)]


def rotated_calls(fn, x: torch.Tensor, weights: list[torch.Tensor]) -> list:
    reps = max(1, math.ceil(MIN_CALLS / len(weights)))
    return [lambda w=w: fn(x, w) for _ in range(reps) for w in weights]


def measure_shape(name: str, n: int, k: int, ms, num_sms: int, copy_gbps: float, quick: bool,
                  deadline: float) -> list[dict]:
    """Rows {shape, m, impl, launch, us, gbps, pct} (or error) for cuBLAS and each launch of the sweep
    (past `deadline`, time.time(), only the policy's three)."""
    weights, rows = weight_copies(n, k), []
    nbytes = n * k * 2

    def row(m, impl, launch, us):
        gbps = nbytes / us / 1e3
        return {"shape": name, "n": n, "k": k, "m": m, "impl": impl, "launch": launch, "us": round(us, 2),
                "gbps": round(gbps, 1), "pct": round(100 * gbps / copy_gbps, 1)}

    for m in ms:
        x = torch.randn(m, k, dtype=DTYPE, device=DEV)
        ref = gemv_reference(x, weights[0])
        rows.append(row(m, "cublas", None, graph_us(rotated_calls(lambda a, w: F.linear(a, w), x, weights))))
        for label, cfg in sweep(m, n, k, num_sms, quick)[:None if time.time() < deadline else 3]:
            try:
                got = gemv(x, weights[0], **asdict(cfg)).float()
                err = ((got - ref.float()).norm() / ref.float().norm()).item()
                if not err < 1e-2:
                    raise AssertionError(f"relative error {err:.3g} against gemv_reference")
                us = graph_us(rotated_calls(lambda a, w, c=cfg: gemv(a, w, **asdict(c)), x, weights))
                rows.append(row(m, label, asdict(cfg), us))
            except Exception as exc:  # a setting that fails to compile or check is recorded, the sweep goes on
                rows.append({"shape": name, "m": m, "impl": label, "launch": asdict(cfg),
                             "error": f"{type(exc).__name__}: {exc}"[:300]})
                traceback.print_exc()
        best = min((r for r in rows if r["m"] == m and r["impl"] != "cublas" and "us" in r),
                   key=lambda r: r["us"], default=None)
        cub = next(r for r in rows if r["m"] == m and r["impl"] == "cublas")
        print(f"{name:8s} m={m}: cublas {cub['us']:7.1f} us {cub['pct']:5.1f}% | best {best and best['impl']}: "
              f"{best and best['us']} us {best and best['pct']}%", flush=True)
    del weights
    torch.cuda.empty_cache()
    return rows


def best_launches(rows: list[dict], m: int) -> dict[str, GemvLaunch]:
    """Per shape, the fastest checked launch of ours at m rows."""
    out = {}
    for name in SHAPES:
        ours = [r for r in rows if r["shape"] == name and r["m"] == m and r.get("launch") and "us" in r]
        if ours:
            out[name] = GemvLaunch(**min(ours, key=lambda r: r["us"])["launch"])
    return out


def chain_ms(fns: dict, weights: dict, x: dict, lm_head: torch.Tensor) -> float:
    """ms of one graph: LAYERS x (qkv, o, gate_up, down) over each layer's own weights, then the lm_head."""
    calls = [lambda f=fns[s], w=w, s=s: f(x[s], w) for layer in weights for s, w in zip(LAYER, layer)]
    calls.append(lambda: fns["lm_head"](x["lm_head"], lm_head))
    return graph_us(calls) * len(calls) / 1000.0


def _ours(launches: dict[str, GemvLaunch]) -> dict:
    """shape -> (x, w) -> gemv with that shape's launch."""
    return {s: (lambda a, w, c=c: gemv(a, w, **asdict(c))) for s, c in launches.items()}


def step_floor(best: dict[str, GemvLaunch], num_sms: int, copy_gbps: float) -> dict:
    """The batch-1 step's linear weights (14.2 GB, every layer its own) through cuBLAS, the policy and the
    best launches, each chain one CUDA graph: a floor estimate of the decode step's GPU time."""
    layers = [[torch.empty(*SHAPES[s], dtype=DTYPE, device=DEV).normal_(std=0.02) for s in LAYER]
              for _ in range(LAYERS)]
    lm_head = torch.empty(*SHAPES["lm_head"], dtype=DTYPE, device=DEV).normal_(std=0.02)
    x = {s: torch.randn(1, SHAPES[s][1], dtype=DTYPE, device=DEV) for s in SHAPES}
    nbytes = 2 * (LAYERS * sum(n * k for n, k in (SHAPES[s] for s in LAYER)) + lm_head.numel())

    policy = {s: choose_gemv_launch(1, *SHAPES[s], num_sms) for s in SHAPES}
    variants = {"cublas": {s: (lambda a, w: F.linear(a, w)) for s in SHAPES}, "policy": _ours(policy)}
    if len(best) == len(SHAPES):
        variants["best"] = _ours(best)
    out = {"weight_gb": round(nbytes / 1e9, 3), "floor_ms": round(nbytes / copy_gbps / 1e6, 3)}
    for label, fns in variants.items():
        ms = chain_ms(fns, layers, x, lm_head)
        out[label] = {"ms": round(ms, 3), "gbps": round(nbytes / ms / 1e6, 1),
                      "pct": round(100 * nbytes / ms / 1e6 / copy_gbps, 1)}
        print(f"step chain {label}: {ms:.3f} ms, {out[label]['pct']}% of copy bandwidth", flush=True)
    del layers, lm_head
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer launch settings (splits 1-4, 4 warps, 3 stages)")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="rows to time, comma-separated")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="past this many seconds only the policy's settings are timed (shapes in --shapes order)")
    ap.add_argument("--no-chain", action="store_true", help="skip the 32-layer step graph")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gemv_benchmark needs a CUDA GPU")
    ms = [int(m) for m in args.ms.split(",")]
    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {unknown}; known {list(SHAPES)}")
    props = torch.cuda.get_device_properties(0)
    t0 = time.time()
    copy_gbps = copy_bandwidth()
    print(f"{props.name}: copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
    rows = []
    for name in names:
        rows += measure_shape(name, *SHAPES[name], ms, props.multi_processor_count, copy_gbps, args.quick,
                              t0 + args.budget_s)
    result = {"device": props.name, "sms": props.multi_processor_count, "copy_gbps": round(copy_gbps, 1),
              "torch": torch.__version__, "quick": args.quick, "rows": rows,
              "best_m1": {s: asdict(c) for s, c in best_launches(rows, 1).items()}}
    if not args.no_chain:
        result["step_chain_m1"] = step_floor(best_launches(rows, 1), props.multi_processor_count, copy_gbps)
    result["seconds"] = round(time.time() - t0, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
