"""tools/benchmark.py's load studies: the throughput curve against max_num_seqs, and a multi-turn chat
whose turns share their history (prefix caching, target T7).

    python3 -m tools.benchmark --no-hf --fixed 128/128x1024 --sharegpt 0 --seqs-curve 128,256,384,512
    python3 -m tools.benchmark --no-hf --fixed 128/128x1024 --sharegpt 0 --multi-turn

seqs curve: one engine per max_num_seqs m (CUDA graphs up to m, the rest of the settings as given), 128/128 with
max(1024, 4 m) requests all at once; output tok/s and the median step.
multi-turn: one user at a time on an idle engine. Turn 1 is a 592-token prompt (a system prompt and a document);
each later turn's prompt is the previous prompt, the reply (256 forced tokens) and a 128-token user message, so
turn 5's prompt holds 2,128 tokens of which 2,000 were in the conversation before. Time to first token (add_request
to the step that returns the first token, the device idle before) for each turn, with prefix caching on and,
on the same engine with caching switched off, without; and for fresh 128-token prompts. T7: turn 5 with caching
<= 1.2x the fresh prompt.
"""
from __future__ import annotations

import gc
import statistics
import time

import torch

from qwen_triton import LLMEngine

from .benchmark import engine_config, engine_run, forced, random_prompts

FIRST_TURN, REPLY, USER, TURNS = 592, 256, 128, 5


def seqs_curve(path: str, args, seqs: list[int], rng) -> list[dict]:
    rows = []
    for m in seqs:
        start = time.perf_counter()
        engine = LLMEngine(path, engine_config(args, max_num_seqs=m, cuda_graph_max_batch=m))
        setup = time.perf_counter() - start
        engine_run(engine, random_prompts(64, 64, rng), [16] * 64)  # warm-up
        n = max(1024, 4 * m)
        r = engine_run(engine, random_prompts(n, 128, rng), [128] * n)
        r.update({"max_num_seqs": m, "setup_s": setup, "kv_blocks": engine.runner.num_blocks,
                  "max_running_seen": engine.stats().max_running_seen})
        rows.append(r)
        print(f"max_num_seqs {m}: {r['output_tok_s']:.0f} tok/s (median step {r['median_step_ms']:.1f} ms, "
              f"setup {setup:.0f} s)", flush=True)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def first_token_ms(engine: LLMEngine, request_id: str, prompt: list[int], out_len: int) -> tuple[float, list[int]]:
    """Add one request to the idle engine; ms to its first token, and all its tokens (run to the end)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.add_request(request_id, prompt, forced(out_len))
    ttft, tokens = None, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id and out.new_token_ids:
                if ttft is None:
                    ttft = 1e3 * (time.perf_counter() - start)
                tokens += out.new_token_ids
    return ttft, tokens


def conversation(engine: LLMEngine, name: str, rng) -> list[dict]:
    prompt = random_prompts(1, FIRST_TURN, rng)[0]
    rows = []
    for turn in range(1, TURNS + 1):
        hits = engine.stats().prefix_cache_hits
        ttft, reply = first_token_ms(engine, f"{name}-{turn}", prompt, REPLY)
        rows.append({"turn": turn, "prompt_tokens": len(prompt), "ttft_ms": ttft,
                     "cached_tokens": engine.stats().prefix_cache_hits - hits})
        prompt = prompt + reply + random_prompts(1, USER, rng)[0]
    return rows


def multi_turn(path: str, args, rng) -> dict:
    engine = LLMEngine(path, engine_config(args))
    engine_run(engine, random_prompts(16, 64, rng), [16] * 16)  # warm-up
    fresh = [first_token_ms(engine, f"fresh-{i}", random_prompts(1, USER, rng)[0], 4)[0] for i in range(7)]
    cached = conversation(engine, "cached", rng)
    engine.scheduler.blocks.caching = False  # the same engine without reuse: every turn computes its prompt
    uncached = conversation(engine, "uncached", rng)
    fresh_ms = statistics.median(fresh[2:])
    out = {"fresh_128_ttft_ms": fresh_ms, "fresh_all_ms": fresh, "with_caching": cached,
           "without_caching": uncached, "turn5_over_fresh": cached[-1]["ttft_ms"] / fresh_ms,
           "turn5_without_over_fresh": uncached[-1]["ttft_ms"] / fresh_ms}
    print(f"multi-turn: fresh 128-token TTFT {fresh_ms:.1f} ms; turn 5 ({cached[-1]['prompt_tokens']} tokens, "
          f"{cached[-1]['cached_tokens']} cached) {cached[-1]['ttft_ms']:.1f} ms = {out['turn5_over_fresh']:.2f}x; "
          f"without caching {uncached[-1]['ttft_ms']:.1f} ms", flush=True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return out
