#!/usr/bin/env python3
"""The engine against transformers' generate, in one run, on one GPU, at
Qwen-7B's shapes with random bf16 weights (nothing is downloaded).

    python3 -m tools.benchmark --out results.json            # the full run (docs/benchmarks.md)
    python3 -m tools.benchmark --quick --out quick.json       # fewer requests, smaller sweeps

Measures, in this order:
  copy       device-to-device copy bandwidth (bytes read + written), the ceiling for T1
  hf         transformers generate at batch 1 and at static batches (--hf-batches), 128 in / 128 out
  batch1     engine, one request: decode ms/step, tok/s, GB/s of weights read, share of copy bandwidth
  fixed      engine at full load: 128/128, 128/2048, 2048/128 (output tok/s)
  sharegpt   engine on a seeded ShareGPT-like length mix, all requests at once (req/s, output tok/s)
  load       with --seqs-curve / --multi-turn: throughput against max_num_seqs, and a multi-turn chat's
             time to first token with prefix caching (tools/benchmark_load.py)
  quant      with --quant MODE,...: batch-1 decode and --quant-fixed per quantization mode
             (random weights quantized as they load; KV cache with --kv-cache-dtype), beside bf16
Every output length is forced (min_tokens == max_tokens, the end id masked until then).
HF and the engine use different random weights of the same shapes: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.models.loader import write_random_checkpoint

EOS = 151643
QWEN_7B = {  # Qwen-7B's shapes as a Qwen2 config: MHA, qkv bias, untied lm_head
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 151936,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "eos_token_id": EOS, "bos_token_id": EOS,
    "torch_dtype": "bfloat16", "use_sliding_window": False,
}


def forced(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, end_ids=(EOS,))


def random_prompts(n: int, length: int, rng: np.random.Generator) -> list[list[int]]:
    return rng.integers(100, 150000, size=(n, length)).tolist()


def linear_weight_bytes(cfg: dict) -> int:
    """Bytes of every linear weight (qkv, o, gate_up, down per layer; lm_head) in bf16:
    what one batch-1 decode step must read. Biases, norms and the one embedding row are
    left out (under 0.1%)."""
    h, i, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    per_layer = 3 * h * h + h * h + 2 * h * i + i * h
    return 2 * (n * per_layer + v * h)


# -- ceilings --------------------------------------------------------------------------


def copy_bandwidth() -> float:
    """GB/s of a 2 GiB device-to-device copy, bytes read + written, median of CUDA events."""
    from triton.testing import do_bench

    buf = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    half = 1 << 30
    ms = do_bench(lambda: buf[:half].copy_(buf[half:]), warmup=100, rep=500, return_mode="median")
    return 2 * half / ms / 1e6


# -- transformers -----------------------------------------------------------------------


def build_hf():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**{k: v for k, v in QWEN_7B.items() if k not in ("model_type", "architectures")})
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def hf_generate(model, batch: int, in_len: int, out_len: int, rng) -> dict:
    ids = torch.tensor(random_prompts(batch, in_len, rng), device="cuda")
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=out_len,
              min_new_tokens=out_len, pad_token_id=0, eos_token_id=EOS)
    model.generate(ids[:, :8], **{**kw, "attention_mask": torch.ones_like(ids[:, :8]),
                                  "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kw)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    generated = (out.shape[1] - in_len) * batch
    return {"batch": batch, "in": in_len, "out": out_len, "seconds": elapsed,
            "output_tok_s": generated / elapsed, "ms_per_step": 1e3 * elapsed / out_len}


def run_hf(batches: list[int], out_len: int, rng) -> dict:
    model = build_hf()
    results = {"batch1": hf_generate(model, 1, 128, out_len, rng), "static": []}
    print(f"hf batch 1: {results['batch1']['output_tok_s']:.1f} tok/s", flush=True)
    for batch in batches:
        try:
            r = hf_generate(model, batch, 128, out_len, rng)
        except torch.OutOfMemoryError:
            print(f"hf batch {batch}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        results["static"].append(r)
        print(f"hf batch {batch}: {r['output_tok_s']:.0f} tok/s", flush=True)
    results["best_static"] = max(results["static"], key=lambda r: r["output_tok_s"], default=None)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return results


# -- the engine ---------------------------------------------------------------------------


def engine_batch1(engine: LLMEngine, in_len: int, out_len: int, weight_bytes: int, copy_gbps: float | None,
                  rng) -> dict:
    """One request, in_len in / out_len out: the median decode step (wall clock between step returns,
    no sync per step) and the weights' read rate against copy_gbps (None: not compared)."""
    engine.add_request("b1", random_prompts(1, in_len, rng)[0], forced(out_len))
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # once: a sync per step would undo async scheduling's overlap
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()  # ends with a step's sampled token on the host: in steady state, one step's period
        times.append(time.perf_counter() - start)
    decode = times[1:]  # the first step is the prefill
    ms = 1e3 * statistics.median(decode)
    gbps = weight_bytes / ms / 1e6
    return {"in": in_len, "out": out_len, "ms_per_step": ms, "mean_ms_per_step": 1e3 * statistics.mean(decode),
            "tok_s": 1e3 / ms, "weights_GBps": gbps, "share_of_copy": gbps / copy_gbps if copy_gbps else None,
            "first_step_ms": 1e3 * times[0]}


def engine_run(engine: LLMEngine, prompts: list[list[int]], outs: list[int]) -> dict:
    """All requests at once; run to completion, timing every step (wall clock,
    each step ends with its sampled tokens on the host)."""
    for i, (p, n) in enumerate(zip(prompts, outs)):
        engine.add_request(f"run-{id(prompts)}-{i}", p, forced(n))
    generated, steps = 0, []
    torch.cuda.synchronize()
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        generated += sum(len(o.new_token_ids) for o in engine.step())
        steps.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    assert generated == sum(outs), "an output came back short"
    return {"requests": len(prompts), "seconds": elapsed, "output_tok_s": generated / elapsed,
            "req_s": len(prompts) / elapsed, "input_tokens": sum(map(len, prompts)), "output_tokens": generated,
            "steps": len(steps), "median_step_ms": 1e3 * statistics.median(steps)}


@torch.inference_mode()
def graph_step_ms(runner, batch: int, ctx: int, reps: int = 20) -> float | None:
    """GPU time of one replayed decode step (batch sequences at context ctx,
    random block tables, no KV writes): the device's share of a step."""
    graphs = runner.graphs
    size = graphs.bucket(batch) if graphs else None
    if size is None:
        return None
    width = -(-ctx // runner.block_size)
    graphs.static["ids"][:size].random_(100, 150000)
    graphs.static["positions"][:size].fill_(ctx - 1)
    graphs.static["prompt_lens"][:size].fill_(ctx)
    graphs.static["slots"][:size].fill_(-1)
    graphs.static["seq_lens"][:size].fill_(ctx)
    graphs.static["tables"][:size, :width].random_(0, runner.num_blocks)
    graph, _ = graphs.graphs[size]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    graphs.static["seq_lens"].zero_()
    return statistics.median(times)


def sharegpt_like(n: int, rng) -> tuple[list[list[int]], list[int]]:
    """Seeded lognormal lengths shaped like ShareGPT conversations (median about
    200 tokens in, 180 out; long tails clipped at 1536 / 1024)."""
    ins = np.clip(rng.lognormal(np.log(200), 0.9, n), 4, 1536).astype(int)
    outs = np.clip(rng.lognormal(np.log(180), 0.9, n), 4, 1024).astype(int)
    return [rng.integers(100, 150000, size=k).tolist() for k in ins], outs.tolist()


def engine_config(args, **overrides) -> EngineConfig:
    return EngineConfig(**{"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                           "max_model_len": args.max_model_len, "enforce_eager": args.eager,
                           "kv_cache_memory_fraction": args.kv_fraction, **overrides})


def run_engine(path: str, args, weight_bytes: int, copy_gbps: float, rng) -> dict:
    config = engine_config(args)
    start = time.perf_counter()
    engine = LLMEngine(path, config)
    setup_s = time.perf_counter() - start
    runner = engine.runner
    info = {"setup_s": setup_s, "kv_blocks": runner.num_blocks, "block_size": config.block_size,
            "kv_tokens": runner.num_blocks * config.block_size,
            "graph_sizes": sorted(runner.graphs.graphs) if runner.graphs else [],
            "config": {k: getattr(config, k) for k in config.__dataclass_fields__}}
    print(f"engine ready in {setup_s:.1f} s: {info['kv_tokens']} KV tokens", flush=True)
    engine_run(engine, random_prompts(16, 64, rng), [16] * 16)  # warm-up: prefill shapes, sampler
    out = {"setup": info, "batch1": engine_batch1(engine, 128, args.batch1_out, weight_bytes, copy_gbps, rng)}
    out["graph_step_ms"] = {f"B{b} ctx{c}": graph_step_ms(runner, b, c)
                            for b, c in ((1, 192), (1, 2048), (32, 2100), (256, 192), (256, 256))}
    print(f"graph replay ms: {out['graph_step_ms']}", flush=True)
    print(f"engine batch 1: {out['batch1']['ms_per_step']:.2f} ms/step", flush=True)
    out["fixed"] = []
    for in_len, out_len, n in args.fixed:
        r = engine_run(engine, random_prompts(n, in_len, rng), [out_len] * n)
        r.update({"in": in_len, "out": out_len})
        out["fixed"].append(r)
        print(f"engine {in_len}/{out_len} x{n}: {r['output_tok_s']:.0f} tok/s", flush=True)
    if args.sharegpt:
        prompts, outs = sharegpt_like(args.sharegpt, rng)
        out["sharegpt"] = engine_run(engine, prompts, outs)
        print(f"engine sharegpt x{args.sharegpt}: {out['sharegpt']['output_tok_s']:.0f} tok/s", flush=True)
    del engine, runner
    gc.collect()
    torch.cuda.empty_cache()
    return out


# -- report ---------------------------------------------------------------------------------


def table(res: dict) -> str:
    e, hf = res["engine"], res.get("hf")
    b1 = e["batch1"]
    rows = [("copy bandwidth (read + write)", f"{res['copy_GBps']:.0f} GB/s"),
            ("engine batch 1 decode", f"{b1['ms_per_step']:.2f} ms/step, {b1['tok_s']:.1f} tok/s, "
             f"{b1['weights_GBps']:.0f} GB/s = {b1['share_of_copy']:.0%} of copy")]
    for r in e["fixed"]:
        rows.append((f"engine {r['in']}/{r['out']} x{r['requests']}",
                     f"{r['output_tok_s']:.0f} output tok/s ({r['req_s']:.2f} req/s, "
                     f"{r['steps']} steps, median {r['median_step_ms']:.1f} ms)"))
    for name, ms in e["graph_step_ms"].items():
        if ms is not None:
            rows.append((f"engine decode step GPU time {name}", f"{ms:.2f} ms (graph replay alone)"))
    s = e.get("sharegpt")
    if s:
        rows.append((f"engine ShareGPT-like x{s['requests']}",
                     f"{s['req_s']:.2f} req/s, {s['output_tok_s']:.0f} output tok/s"))
    if hf:
        rows.append(("HF batch 1, 128/128", f"{hf['batch1']['ms_per_step']:.1f} ms/step, "
                     f"{hf['batch1']['output_tok_s']:.1f} tok/s"))
        for r in hf["static"]:
            rows.append((f"HF static batch {r['batch']}, 128/128", f"{r['output_tok_s']:.0f} output tok/s"))
        for name, value in res["ratios"].items():
            rows.append((name, f"{value:.1f}x"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def ratios(res: dict) -> dict:
    hf, e = res.get("hf"), res["engine"]
    if not hf:
        return {}
    out = {"batch-1 decode vs HF batch 1": e["batch1"]["tok_s"] / hf["batch1"]["output_tok_s"]}
    r128 = next((r for r in e["fixed"] if (r["in"], r["out"]) == (128, 128)), None)
    if r128 and hf["best_static"]:
        out[f"128/128 vs HF best static (batch {hf['best_static']['batch']})"] = \
            r128["output_tok_s"] / hf["best_static"]["output_tok_s"]
    return out


def parse_fixed(text: str) -> list[tuple[int, int, int]]:
    """"128/128x1024,128/2048x32" -> [(128, 128, 1024), (128, 2048, 32)]."""
    out = []
    for item in text.split(","):
        lengths, n = item.split("x")
        a, b = lengths.split("/")
        out.append((int(a), int(b), int(n)))
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--hf-batches", default="64,256")
    parser.add_argument("--hf-out", type=int, default=128)
    parser.add_argument("--fixed", default="128/128x1024,128/2048x48,2048/128x256")
    parser.add_argument("--sharegpt", type=int, default=512)
    parser.add_argument("--batch1-out", type=int, default=256)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-fraction", type=float, default=0.9)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quant", default="", help="quantization modes to measure, e.g. int8_wo,int4_wo,fp8 "
                        "(MODE or MODE:key=value;...; tools/benchmark_quant.py)")
    parser.add_argument("--quant-fixed", default="128/128x1024", help="fixed runs per quantization mode")
    parser.add_argument("--kv-cache-dtype", default="auto", help="KV cache of the --quant runs: auto, int8, fp8")
    parser.add_argument("--only-quant", action="store_true", help="skip HF and the bf16 fixed/ShareGPT runs")
    parser.add_argument("--seqs-curve", default="", help="128/128 throughput at each max_num_seqs, e.g. "
                        "128,256,384,512 (tools/benchmark_load.py)")
    parser.add_argument("--multi-turn", action="store_true", help="a 5-turn chat's time to first token with and "
                        "without prefix caching against fresh prompts (T7; tools/benchmark_load.py)")
    parser.add_argument("--tp", type=int, default=0, help="only TP=1 against TP=N (tensor parallel over N GPUs; "
                        "tools/benchmark_tp.py)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.quick:
        args.fixed, args.sharegpt, args.hf_batches, args.batch1_out = "128/128x256,2048/128x32", 64, "64", 64
        args.hf_out = 32
    args.fixed = parse_fixed(args.fixed)
    if args.tp:
        from tools.benchmark_tp import main_tp

        return main_tp(args)
    rng = np.random.default_rng(args.seed)
    import transformers
    import triton

    res = {"device": torch.cuda.get_device_name(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "versions": {"torch": torch.__version__, "triton": triton.__version__,
                        "transformers": transformers.__version__},
           "command": " ".join(sys.argv), "model": QWEN_7B, "weight_bytes": linear_weight_bytes(QWEN_7B)}
    res["copy_GBps"] = copy_bandwidth()
    print(f"copy bandwidth {res['copy_GBps']:.0f} GB/s", flush=True)
    if args.only_quant:  # the bf16 baseline runs what each mode runs
        args.no_hf, args.fixed, args.sharegpt = True, parse_fixed(args.quant_fixed), 0
    if not args.no_hf:
        res["hf"] = run_hf([int(b) for b in args.hf_batches.split(",")], args.hf_out, rng)
    path = write_random_checkpoint(tempfile.mkdtemp(prefix="qwen7b-random-"), QWEN_7B, seed=args.seed)
    res["engine"] = run_engine(path, args, res["weight_bytes"], res["copy_GBps"], rng)
    res["ratios"] = ratios(res)
    if args.seqs_curve:
        from tools.benchmark_load import seqs_curve

        res["seqs_curve"] = seqs_curve(path, args, [int(m) for m in args.seqs_curve.split(",")], rng)
    if args.multi_turn:
        from tools.benchmark_load import multi_turn

        res["multi_turn"] = multi_turn(path, args, rng)
    if args.quant:
        from tools.benchmark_quant import run_modes

        res["quant"] = run_modes(args, QWEN_7B, res, rng)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\n{res['device']}, {res['date']}, torch {torch.__version__}\n{table(res)}", flush=True)
    if args.quant:
        from tools.benchmark_quant import quant_table

        print(quant_table(res), flush=True)


if __name__ == "__main__":
    main()
