"""The default model's speed on a CPU machine: our engine against transformers, in one run.

    .venv/bin/python -m tools.cpu_benchmark --model artifacts/gguf/<folder> [--json out.json]
    .venv/bin/python -m tools.cpu_benchmark --model ... --served localhost:8001   # + a running server

Measures, in this order (every figure a median over --runs):
  bandwidth   torch copy (bytes read + written) and a sum over 1 GiB of float32 (bytes read): the ceiling
  bound       weight bytes read per decode token (every linear weight and the LM head; one embedding row)
              and the tokens/s that the read bandwidth allows at best
  engine      LLMEngine, one request: time to first token of a short chat (prefill + first token) and
              decode tokens/s over --new-tokens forced tokens (--dense-attention: again with the
              backend's dense reference attention, the before of the SDPA step)
  hf          transformers `generate` on the same checkpoint and prompt: the same two figures
  served      (with --served HOST:PORT) the same chat through the ensemble over gRPC streaming at one user:
              time to the first chunk and decode tokens/s, as a client sees them
Greedy in float32 throughout; output lengths forced (min_tokens / min_new_tokens).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

CHAT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def bandwidth(nbytes: int = 1 << 30, runs: int = 5) -> dict[str, float]:
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)

    def best(fn) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    return {"copy_GBps": 2 * nbytes / best(lambda: dst.copy_(src)) / 1e9,
            "read_GBps": nbytes / best(lambda: src.sum()) / 1e9}


def weight_bytes_per_token(model_dir: str) -> int:
    """Bytes of every tensor a decode step reads in full: all 2-D weights but the embedding table
    (one row of it), in the engine's float32."""
    from qwen_triton.models import load_model_config

    cfg = load_model_config(model_dir)
    per_layer = cfg.hidden_size * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * cfg.hidden_size \
        + 3 * cfg.hidden_size * cfg.intermediate_size
    return 4 * (cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size)


def engine_speed(model_dir: str, prompt: list[int], new_tokens: int, runs: int,
                 dense_attention: bool = False) -> dict[str, float]:
    """`dense_attention`: the backend attends through the dense reference `causal_attention` (what it
    did before the SDPA step), for a before/after in one run."""
    from qwen_triton.attention import torch_backend

    fused = torch_backend.sdpa_causal_attention
    if dense_attention:
        torch_backend.sdpa_causal_attention = torch_backend.causal_attention
    try:
        return _engine_speed(model_dir, prompt, new_tokens, runs)
    finally:
        torch_backend.sdpa_causal_attention = fused


def _engine_speed(model_dir: str, prompt: list[int], new_tokens: int, runs: int) -> dict[str, float]:
    from qwen_triton import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(model_dir, EngineConfig(device="cpu", dtype="float32", max_num_seqs=4))
    engine.generate([prompt], SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
    ttfts, steps = [], []
    for run in range(runs):
        engine.add_request(f"r{run}", prompt, SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens,
                                                             temperature=0.0))
        times = []
        while engine.has_unfinished_requests():
            t = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t)
        ttfts.append(times[0])
        steps.append(statistics.median(times[1:]))
    return {"ttft_s": statistics.median(ttfts), "decode_tok_s": 1 / statistics.median(steps)}


def hf_speed(model_dir: str, prompt: list[int], new_tokens: int, runs: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])

    def generate(n: int) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    generate(4)  # warm-up
    ttft = statistics.median(generate(1) for _ in range(runs))
    total = statistics.median(generate(new_tokens) for _ in range(runs))
    return {"ttft_s": ttft, "decode_tok_s": (new_tokens - 1) / (total - ttft)}


def served_speed(url: str, new_tokens: int, runs: int) -> dict[str, float]:
    from clients.triton_client import GenerateRequest, GrpcClient

    client = GrpcClient(url)
    ttfts, rates = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        stream = client.stream(GenerateRequest(messages=CHAT, max_tokens=new_tokens, min_tokens=new_tokens,
                                               temperature=0.0, stream=True))
        for _chunk in stream:
            pass
        s = stream.stats
        ttfts.append(s.first_chunk_s)
        rates.append((new_tokens - 1) / (s.latency_s - s.first_chunk_s))
    return {"ttft_s": statistics.median(ttfts[1:]), "decode_tok_s": statistics.median(rates[1:])}


def main(argv: list[str] | None = None) -> int:
    from qwen_triton.chat import load_tokenizer, parse_messages, render_prompt

    p = argparse.ArgumentParser(prog="python -m tools.cpu_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (e.g. the imported default)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--served", metavar="HOST:PORT", help="also measure a running server over gRPC")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--dense-attention", action="store_true",
                   help="also time the engine with the dense reference attention (the backend before SDPA)")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt = render_prompt(load_tokenizer(args.model), parse_messages(CHAT))
    result = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "prompt_tokens": len(prompt),
              "new_tokens": args.new_tokens, "bandwidth": bandwidth()}
    nbytes = weight_bytes_per_token(args.model)
    result["bound"] = {"weight_GB_per_token": nbytes / 1e9,
                       "max_tok_s": result["bandwidth"]["read_GBps"] * 1e9 / nbytes}
    print(json.dumps(result, indent=1), flush=True)
    stages = [("engine", lambda: engine_speed(args.model, prompt, args.new_tokens, args.runs))]
    if args.dense_attention:
        stages.append(("engine_dense_attention",
                       lambda: engine_speed(args.model, prompt, args.new_tokens, args.runs, dense_attention=True)))
    if not args.skip_hf:
        stages.append(("hf", lambda: hf_speed(args.model, prompt, args.new_tokens, args.runs)))
    if args.served:
        stages.append(("served", lambda: served_speed(args.served, args.new_tokens, args.runs)))
    for name, run in stages:
        result[name] = run()
        print(name, json.dumps(result[name]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
