"""Tensor parallelism's speed and output: the engine at tensor_parallel_size 1 against N, at Qwen-7B's
shapes with random bf16 weights (`python3 -m tools.benchmark --tp N`; both sizes draw the same weights).

    python3 -m tools.benchmark --tp 2 --out tp2.json      # on 2 GPUs: TP=1 on cuda:0, then TP=2 on cuda:0-1
    python3 -m tools.benchmark --tp 1 --quick             # one GPU: the TP=1 half alone (a smoke run)

For each size, one engine in turn (the first is closed and its memory freed before the next starts):
  batch1   one request, 128 in / --batch1-out out: median decode ms/step and tok/s
  fixed    128/128 x 1024 requests all at once (--quick 256): output tok/s
  greedy   a few seeded prompts, 64 greedy tokens each; with N > 1, whether TP=N gives TP=1's tokens
Without a GPU it runs a tiny model in float32 on the CPU (over gloo): a check that the script works, not
a measurement. In bf16 the ranks sum their partial products in another order than one GPU does, so
greedy tokens of random weights may part late in a sequence; the report gives each prompt's common prefix.
"""
from __future__ import annotations

import gc
import tempfile
import time

import numpy as np
import torch

from qwen_triton import LLMEngine
from qwen_triton.models.loader import write_random_checkpoint
from tools.benchmark import QWEN_7B, engine_batch1, engine_config, forced, linear_weight_bytes, random_prompts

TINY = {**QWEN_7B, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 8, "vocab_size": 151936, "max_position_embeddings": 1024}
CPU_LIMITS = {"device": "cpu", "dtype": "float32", "max_num_seqs": 16, "max_num_batched_tokens": 512,
              "max_model_len": 512}
GREEDY_PROMPTS, GREEDY_TOKENS = 8, 64


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fixed(engine: LLMEngine, requests: int, rng) -> dict:
    for i, prompt in enumerate(random_prompts(requests, 128, rng)):
        engine.add_request(f"tp-fixed-{i}", prompt, forced(128))
    generated, steps = 0, 0
    _sync()
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        generated += sum(len(o.new_token_ids) for o in engine.step())
        steps += 1
    elapsed = time.perf_counter() - start
    return {"in": 128, "out": 128, "requests": requests, "seconds": elapsed, "output_tok_s": generated / elapsed,
            "steps": steps}


def run_size(path: str, tp: int, args, model: dict, limits: dict, requests: int) -> dict:
    """One engine of `tp` ranks: its setup, batch-1, 128/128 and greedy tokens (the same rng seed for every
    size, so both see the same prompts)."""
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    engine = LLMEngine(path, engine_config(args, tensor_parallel_size=tp, **limits))
    out = {"tp": tp, "setup_s": time.perf_counter() - start, "kv_blocks": engine.runner.num_blocks}
    try:
        engine.generate(random_prompts(4, 32, rng), forced(8))  # warm-up: prefill shapes, sampler
        # no sync per step: TP=1 on a GPU schedules asynchronously, and a sync would hide its step time
        out["batch1"] = engine_batch1(engine, 128, args.batch1_out, linear_weight_bytes(model), None, rng)
        out["fixed"] = fixed(engine, requests, rng)
        out["greedy"] = engine.generate(random_prompts(GREEDY_PROMPTS, 32, rng), forced(GREEDY_TOKENS))
    finally:
        engine.close()
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"TP={tp}: batch 1 {out['batch1']['ms_per_step']:.2f} ms/step, 128/128 x{requests} "
          f"{out['fixed']['output_tok_s']:.0f} tok/s", flush=True)
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run_tp(args) -> dict:
    """TP=1, then TP=args.tp when it is more than 1; the comparison between them."""
    gpu = torch.cuda.is_available()
    model, limits = (QWEN_7B, {}) if gpu else (TINY, CPU_LIMITS)
    requests = 256 if args.quick else 1024
    if not gpu:
        print("no GPU: a tiny model in float32 on the CPU (checks the script, measures nothing)", flush=True)
        args.batch1_out, requests = min(args.batch1_out, 32), 16
    path = write_random_checkpoint(tempfile.mkdtemp(prefix="tp-random-"), model, seed=args.seed)
    sizes = [1] if args.tp == 1 else [1, args.tp]
    runs = {tp: run_size(path, tp, args, model, limits, requests) for tp in sizes}
    res = {"device": torch.cuda.get_device_name() if gpu else "cpu", "gpus": torch.cuda.device_count(),
           "model": model, "runs": {str(tp): {k: v for k, v in r.items() if k != "greedy"} for tp, r in runs.items()}}
    if args.tp > 1:
        one, many = runs[1], runs[args.tp]
        prefixes = [common_prefix(a, b) for a, b in zip(one["greedy"], many["greedy"])]
        res["greedy"] = {"equal": one["greedy"] == many["greedy"], "common_prefix": prefixes,
                         "tokens": GREEDY_TOKENS}
        res["speedup"] = {"batch1_decode": one["batch1"]["ms_per_step"] / many["batch1"]["ms_per_step"],
                          "fixed_128_128": many["fixed"]["output_tok_s"] / one["fixed"]["output_tok_s"]}
        print(f"TP={args.tp} vs TP=1: batch-1 decode {res['speedup']['batch1_decode']:.2f}x, 128/128 "
              f"{res['speedup']['fixed_128_128']:.2f}x; greedy equal: {res['greedy']['equal']} "
              f"(common prefixes {prefixes} of {GREEDY_TOKENS})", flush=True)
    return res


def main_tp(args) -> None:
    """`tools.benchmark --tp N`: run_tp, its JSON written to args.out."""
    import datetime
    import json
    import sys

    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "versions": {"torch": torch.__version__}, **run_tp(args)}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}", flush=True)
