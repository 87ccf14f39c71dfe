#!/usr/bin/env python3
"""Quantized layers on a GPU: the kernels each mode dispatches to (qwen_triton/quant/dispatch.py) against the
reference path (the weight dequantized, activations rounded through their format) at every M range the
dispatch distinguishes, and a whole quantized model scored with both paths (bf16 logprobs close).

    PYTHONPATH=. python -m tools.check_quant_gpu --out $OUT
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from qwen_triton import EngineConfig, LLMEngine
from qwen_triton.models.loader import write_random_checkpoint
from qwen_triton.quant.linear import linear_class, prepare_model, quantized_layers
from qwen_triton.quant.spec import QuantSpec, write_quant_spec

SPECS = {
    "int8_wo": QuantSpec(weights="int8_wo"),
    "int4_wo": QuantSpec(weights="int4_wo"),
    "int4_wo-act-order": QuantSpec(weights="int4_wo", act_order=True),
    "w8a8": QuantSpec(weights="w8a8"),
    "w8a8-per-tensor": QuantSpec(weights="w8a8", weight_scales="per_tensor", act_scales="per_tensor"),
    "fp8": QuantSpec(weights="fp8"),
    "fp8-per-tensor": QuantSpec(weights="fp8", weight_scales="per_tensor", act_scales="per_tensor"),
}
SHAPES = [(4096, 4096), (12288, 4096), (4096, 11008)]  # (N, K)
ROWS = [1, 3, 8, 9, 16, 17, 64, 256]


def check_layers() -> list[dict]:
    rows = []
    for name, spec in SPECS.items():
        for n, k in SHAPES:
            layer = linear_class(spec.weights)(k, n, True, torch.bfloat16, spec).cuda()
            layer.quantize_from(torch.randn(n, k, device="cuda") * 0.02)
            if getattr(layer, "perm", None) is not None:
                layer.perm.copy_(torch.randperm(k, device="cuda").to(torch.int32))
            if getattr(layer, "act_scale", None) is not None:
                layer.act_scale.fill_(4.0 / 127)
            layer.bias.data.normal_(0, 0.01)
            for m in ROWS:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                layer.prepare("torch")
                ref = layer(x).float()
                layer.prepare("kernels")
                got = layer(x).float()
                err = ((got - ref).norm() / ref.norm()).item()
                rows.append({"mode": name, "n": n, "k": k, "m": m, "rel_err": err, "ok": err < 2e-2})
    return rows


def check_model(cfg: dict) -> list[dict]:
    """Scored logprobs of one random model per mode, kernels against the reference path, both bf16."""
    out = []
    ids = torch.randint(100, 150000, (200,)).tolist()
    for name, spec in SPECS.items():
        path = write_random_checkpoint(tempfile.mkdtemp(), cfg, seed=1)
        write_quant_spec(path, spec)
        engine = LLMEngine(path, EngineConfig(max_num_seqs=8, max_model_len=512, enforce_eager=True))
        got = engine.score(ids)
        prepare_model(engine.runner.model, "torch")
        ref = engine.score(ids)
        diffs = [abs(a - b) for a, b in zip(got, ref, strict=True)]
        layers = len(quantized_layers(engine.runner.model))
        out.append({"mode": name, "layers": layers, "max_abs_logprob_diff": max(diffs),
                    "mean_abs_logprob_diff": sum(diffs) / len(diffs)})
        del engine
        torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    layers = check_layers()
    bad = [r for r in layers if not r["ok"]]
    worst = {}
    for r in layers:
        worst[r["mode"]] = max(worst.get(r["mode"], 0.0), r["rel_err"])
    print("layers: worst relative error per mode", json.dumps(worst, indent=1), flush=True)
    cfg = {"model_type": "qwen2", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
           "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16"}
    model = check_model(cfg)
    for r in model:
        print(f"model {r['mode']}: {r['layers']} quantized layers, |log p| diff mean "
              f"{r['mean_abs_logprob_diff']:.4f} max {r['max_abs_logprob_diff']:.4f}", flush=True)
    (args.out / "check_quant_gpu.json").write_text(json.dumps({"layers": layers, "model": model}, indent=1))
    print(f"{len(bad)} layer checks over tolerance" + "".join(
        f"\n  {r['mode']} N{r['n']} K{r['k']} M{r['m']}: {r['rel_err']:.3g}" for r in bad[:20]))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
