#!/usr/bin/env python3
"""The accuracy of each quantization mode on a real checkpoint, against the same model unquantized.

    .venv/bin/python -m tools.accuracy_quant --model artifacts/gguf/<folder> --out docs/accuracy-quant/qwen \\
        --variant int8_wo --variant int4_wo:group_size=64 --variant w8a8 --variant fp8 \\
        --variant kv_int8:weights=none,kv_cache=int8 --variant gptq:from=/ckpt/gptq

Each --variant is NAME[:key=value,...]: NAME is a weights mode (qwen_triton.quant.spec) unless `weights=`
says otherwise, the keys are QuantSpec fields; `from=DIR` builds from that checkpoint instead of --model
(a published GPTQ / AWQ one made by tools/quantize_gptq.py / quantize_awq.py). Every variant is quantized
by the build's own converter (qwen_triton.quant.convert) and measured with tools/accuracy.py against the
unquantized --model run by our engine (computed once and cached): greedy exact match and agreement, ROUGE,
perplexity. Writes <out>/<name>.json per variant and appends a row per variant to <out>/summary.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from qwen_triton.quant.convert import quantize_checkpoint
from qwen_triton.quant.spec import QuantSpec
from tools import accuracy

FIELDS = {f.name: f.type for f in dataclasses.fields(QuantSpec)}


def parse_variant(text: str) -> tuple[str, QuantSpec, Path | None]:
    name, _, rest = text.partition(":")
    values: dict = {"weights": name}
    source = None
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        if key == "from":
            source = Path(value)
        elif key not in FIELDS:
            raise SystemExit(f"--variant {text!r}: unknown key {key!r} (QuantSpec fields: {', '.join(FIELDS)})")
        else:
            kind = str(FIELDS[key])
            values[key] = (int(value) if kind == "int" else float(value) if kind == "float"
                           else value.lower() in ("1", "true") if kind == "bool" else value)
    return name, QuantSpec(**values), source


def summary_row(name: str, spec: QuantSpec, report: dict, build_s: float) -> str:
    g, p = report["groups"]["all"], report["perplexity"]
    return (f"| {name} | {spec.weights} | {spec.kv_cache} | {p['candidate']:.4f} | {p['reference']:.4f} | "
            f"{(p['ratio'] - 1) * 100:+.2f}% | {g['exact']:.3f} | {g['agreement']:.3f} | {g['rouge1']:.4f} | "
            f"{g['rouge2']:.4f} | {g['rougeL']:.4f} | {build_s:.0f} s |")


HEADER = ("| variant | weights | kv cache | perplexity | unquantized | change | exact | agreement | ROUGE-1 | "
          "ROUGE-2 | ROUGE-L | build |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the unquantized real checkpoint")
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("artifacts/accuracy-quant"), help="quantized checkpoints")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="EngineConfig field for both sides, e.g. max_num_batched_tokens=128: perplexity windows "
                        "then run in chunks, so the later chunks read the (quantized) KV cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "summary.md"
    if not summary.exists():
        summary.write_text(f"reference: {args.model.name} unquantized (our engine, CPU float32)\n\n{HEADER}\n",
                           encoding="utf-8")
    for text in args.variant:
        name, spec, source = parse_variant(text)
        started = time.perf_counter()
        dst = quantize_checkpoint(source or args.model, args.work / f"{args.model.name}-{name}", spec)
        build_s = time.perf_counter() - started
        acc_args = accuracy.build_parser().parse_args([
            "--model", str(dst), "--reference", str(args.model), "--max-new-tokens", str(args.max_new_tokens),
            "--threads", str(args.threads), "--reference-cache", str(args.out / "reference-cache.json"),
            *(["--limit", str(args.limit)] if args.limit else []),
            *[f"--set={kv}" for kv in args.settings], *[f"--reference-set={kv}" for kv in args.settings]])
        report = accuracy.evaluate(acc_args)
        report["quant_spec"], report["build_seconds"] = spec.to_json(), build_s
        (args.out / f"{name}.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        with summary.open("a", encoding="utf-8") as f:
            f.write(summary_row(name, spec, report, build_s) + "\n")
        print(accuracy.format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
