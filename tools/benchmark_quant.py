"""The quantization rows of tools/benchmark.py (--quant): per mode, on Qwen-7B's shapes with random weights
quantized as they load, batch-1 decode (ms/step, GB/s of the bytes a step reads, speed-up over the bf16
engine of the same run) and the fixed runs of --quant-fixed (output tok/s), with the KV pool each mode gets.

A mode is MODE[/key=value...]: MODE a weights mode of qwen_triton.quant.spec (none: bf16 weights), keys
g (int4 group size), w (weight scales: per_channel, per_tensor), a (activation scales: per_token,
per_tensor), head=int8 (the LM head int8 too), ao=1 (GPTQ's act-order: a permutation of each layer's
inputs, as gptq imports of desc_act checkpoints run; gptq and awq otherwise run int4_wo's kernels) and
kv (the KV cache: int8, fp8; else --kv-cache-dtype). E.g. int8_wo/head=int8, int4_wo/g=64, fp8/kv=fp8, none/kv=int8.
"""
from __future__ import annotations

import gc
import tempfile

import torch

from qwen_triton import LLMEngine
from qwen_triton.models.loader import write_random_checkpoint
from qwen_triton.quant.spec import QuantSpec, write_quant_spec
from tools.benchmark import engine_batch1, engine_config, engine_run, parse_fixed, random_prompts

_KEYS = {"g": "group_size", "w": "weight_scales", "a": "act_scales", "head": "lm_head", "ao": "act_order"}


def parse_mode(text: str) -> tuple[QuantSpec, str | None]:
    """(QuantSpec, KV cache dtype or None) of one --quant item."""
    mode, *pairs = text.split("/")
    values: dict = {"weights": mode}
    kv = None
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "kv":
            kv = value
        elif key in _KEYS:
            values[_KEYS[key]] = (int(value) if key == "g" else value == "int8" if key == "head"
                                  else value == "1" if key == "ao" else value)
        else:
            raise SystemExit(f"--quant {text!r}: unknown key {key!r} (g, w, a, head, ao, kv)")
    return QuantSpec(**values), kv


def step_read_bytes(model) -> int:
    """Bytes one batch-1 decode step reads of the weights: every tensor of the linear layers (quantized
    codes, scales, zeros, biases) and the LM head; not the embedding (one row) nor the norms."""
    total = 0
    for name, tensor in model.state_dict().items():
        if "embed_tokens" in name and model.lm_head is not None or "norm" in name:
            continue
        total += tensor.numel() * tensor.element_size()
    return total


def run_mode(text: str, args, cfg: dict, res: dict, rng) -> dict:
    spec, kv = parse_mode(text)
    path = write_random_checkpoint(tempfile.mkdtemp(prefix="qwen7b-quant-"), cfg, seed=args.seed)
    write_quant_spec(path, spec)
    kv = kv or args.kv_cache_dtype
    overrides = {"kv_cache_dtype": kv} if kv != "auto" else {}
    engine = LLMEngine(path, engine_config(args, **overrides))
    runner = engine.runner
    read = step_read_bytes(runner.model)
    out = {"mode": text, "spec": spec.to_json(), "kv_cache_dtype": kv, "kv_tokens": runner.num_blocks *
           runner.block_size, "weights_GB": read / 1e9,
           "memory_allocated_GB": torch.cuda.memory_allocated() / 1e9}
    engine_run(engine, random_prompts(16, 64, rng), [16] * 16)  # warm-up
    out["batch1"] = engine_batch1(engine, 128, args.batch1_out, read, res["copy_GBps"], rng)
    out["batch1"]["speedup_vs_bf16"] = res["engine"]["batch1"]["ms_per_step"] / out["batch1"]["ms_per_step"]
    print(f"{text}: batch 1 {out['batch1']['ms_per_step']:.2f} ms/step "
          f"({out['batch1']['speedup_vs_bf16']:.2f}x bf16), {out['kv_tokens']} KV tokens", flush=True)
    out["fixed"] = []
    for in_len, out_len, n in parse_fixed(args.quant_fixed):
        r = engine_run(engine, random_prompts(n, in_len, rng), [out_len] * n)
        r.update({"in": in_len, "out": out_len})
        out["fixed"].append(r)
        print(f"{text} {in_len}/{out_len} x{n}: {r['output_tok_s']:.0f} tok/s", flush=True)
    del engine, runner
    gc.collect()
    torch.cuda.empty_cache()
    return out


def run_modes(args, cfg: dict, res: dict, rng) -> list[dict]:
    """Every --quant mode; a mode that fails is recorded with its error and the rest still run."""
    results = []
    for text in filter(None, args.quant.split(",")):
        try:
            results.append(run_mode(text, args, cfg, res, rng))
        except Exception as exc:  # noqa: BLE001 - one mode's failure is a result too
            print(f"{text}: FAILED {type(exc).__name__}: {exc}", flush=True)
            results.append({"mode": text, "error": f"{type(exc).__name__}: {exc}"})
            gc.collect()
            torch.cuda.empty_cache()
    return results


def quant_table(res: dict) -> str:
    base = res["engine"]["batch1"]
    lines = ["| mode | KV | weights read GB | batch-1 ms/step | GB/s | x bf16 | KV tokens | fixed runs |",
             "|---|---|---|---|---|---|---|---|",
             f"| bf16 | auto | {res['weight_bytes'] / 1e9:.2f} | {base['ms_per_step']:.2f} | "
             f"{base['weights_GBps']:.0f} | 1.00 | {res['engine']['setup']['kv_tokens']} | "
             + "; ".join(f"{r['in']}/{r['out']} {r['output_tok_s']:.0f} tok/s" for r in res["engine"]["fixed"])
             + " |"]
    for r in res.get("quant", []):
        if "error" in r:
            lines.append(f"| {r['mode']} | | | failed: {r['error'][:120]} | | | | |")
            continue
        b = r["batch1"]
        fixed = "; ".join(f"{f['in']}/{f['out']} {f['output_tok_s']:.0f} tok/s" for f in r["fixed"])
        lines.append(f"| {r['mode']} | {r['kv_cache_dtype']} | {r['weights_GB']:.2f} | {b['ms_per_step']:.2f} | "
                     f"{b['weights_GBps']:.0f} | {b['speedup_vs_bf16']:.2f} | {r['kv_tokens']} | {fixed} |")
    return "\n".join(lines)
