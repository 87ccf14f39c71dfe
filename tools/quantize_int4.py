#!/usr/bin/env python3
"""Quantize a float checkpoint folder to a published 4-bit checkpoint (GPTQ or AutoAWQ GEMM), on the CPU.

    .venv/bin/python tools/quantize_int4.py --method gptq SRC DST [--act-order] [--asym] [--group-size 64]
    .venv/bin/python tools/quantize_int4.py --method awq SRC DST [--clip]

SRC: a llama / qwen2 / qwen3 checkpoint transformers loads (e.g. artifacts/gguf/<model>/); DST gets what
GPTQModel or AutoAWQ would save (qwen_triton/quant/export.py), which the build imports (quant/imported.py).

Calibration: the build's calibration set qwen_triton/quant/calibration.jsonl (default; 48 conversations,
about 14,000 tokens, rendered with the model's own chat template), or tools/accuracy.py's own data (--calib
prompts: tools/data/accuracy_prompts.jsonl; plain: tools/data/plain_text.txt; both), which flatters the
scores the accuracy tool reports; tokenized into one stream and cut into --seq-len windows, up to --tokens.

Layers are quantized in order (sequential): each decoder layer sees the output of the layers before it
*already quantized*. Within a layer all four linear groups are quantized from the float layer's inputs
(qkv, o, gate_up, down: not GPTQ's "true sequential"); the next layer's inputs are the quantized layer's
outputs. Everything runs in float32 through transformers' own decoder layers, hooks capturing each
linear's input.
  gptq  Hessian X^T X of each linear's inputs, damp 0.01, act-order optional (--act-order), sym by default;
        q/k/v and gate/up are quantized stacked (same input: same Hessian, hence one shared g_idx)
  awq   scales searched on a 20-point grid of a in [0, 1) over --search-tokens tokens, the error measured
        as AutoAWQ does on the attention's output (qkv: whole windows), the MLP's output (gate_up) and
        o_proj's and down_proj's own outputs, s = 1 (no scaling) a candidate too; folded as AutoAWQ does:
        qkv into input_layernorm, gate_up into post_attention_layernorm, down_proj into up_proj's rows,
        o_proj into v_proj's rows only without GQA (with GQA one v row feeds several o inputs); then
        (--clip) per-group clipping ranges (not for q, k), then zero-point round-to-nearest

Measured on the default model (Qwen2.5-Coder-0.5B-Instruct, itself dequantized from GGUF Q4_K_M), 4,096
prompt tokens, group 128, one thread on a busy 2-core machine: gptq 4 min (sym or --act-order --asym),
awq 3.6 min. Perplexity over the first 2,048 tokens of plain_text.txt (windows of 512, weights
dequantized into transformers): float 43.9, round-to-nearest (asym) 48.9, gptq sym 48.2, gptq
--act-order --asym 46.9, awq 49.5 (awq --clip and awq without the s = 1 candidate: 50-53).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from qwen_triton.chat import load_tokenizer, parse_messages, render_prompt
from qwen_triton.quant import algorithms as algo
from qwen_triton.quant.export import quantization_config, write_published_checkpoint
from qwen_triton.quant.published import Int4Weight

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPTS_FILE = DATA_DIR / "accuracy_prompts.jsonl"
PLAIN_TEXT_FILE = DATA_DIR / "plain_text.txt"
# (our group name, the transformers modules stacked in it, the module whose input they all read)
GROUPS = (("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.q_proj"),
          ("o", ("self_attn.o_proj",), "self_attn.o_proj"),
          ("gate_up", ("mlp.gate_proj", "mlp.up_proj"), "mlp.gate_proj"),
          ("down", ("mlp.down_proj",), "mlp.down_proj"))


class _Stop(Exception):
    """Raised by the hook on the first decoder layer once it has its inputs."""


def calibration_ids(src: Path, calib: str, tokens: int, seq_len: int) -> torch.Tensor:
    """int64 [windows, seq_len]: the calibration text's tokens, consecutive windows of one stream."""
    tok = load_tokenizer(src)
    stream: list[int] = []
    if calib == "calibration":  # the build's own calibration set, distinct from what accuracy.py scores
        from qwen_triton.quant.calibration import calibration_token_ids

        for ids in calibration_token_ids(tok):
            stream += ids
    if calib in ("prompts", "both"):
        for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
            if line.strip():
                stream += render_prompt(tok, parse_messages(json.loads(line)["messages"]))
    if calib in ("plain", "both"):
        stream += tok.encode(PLAIN_TEXT_FILE.read_text(encoding="utf-8"))
    windows = min(tokens, len(stream)) // seq_len
    if windows < 1:
        raise SystemExit(f"only {len(stream)} calibration tokens: lower --seq-len")
    return torch.tensor(stream[:windows * seq_len]).reshape(windows, seq_len)


def first_layer_inputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The hidden states [B, S, hidden] and keyword arguments (rotary, mask) the first decoder layer gets."""
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs.pop("hidden_states")
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["x"], seen["kwargs"]


def run_layer(layer, x: torch.Tensor, kwargs: dict, capture: tuple[str, ...] = (),
              on_input=None) -> torch.Tensor:
    """The layer's output for x; on_input(name, x [T, K]) is called with each captured module's input."""
    handles = []
    for name in capture:
        def hook(module, args, name=name):
            on_input(name, args[0].reshape(-1, args[0].shape[-1]).float())
        handles.append(layer.get_submodule(name).register_forward_pre_hook(hook))
    try:
        out = layer(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out[0] if isinstance(out, tuple) else out


def _set_weights(layer, names: tuple[str, ...], stacked: Int4Weight, prefix: str, out: dict) -> None:
    """Split a stacked Int4Weight back into its modules: record each and load its dequantized weight."""
    row = 0
    for name in names:
        module = layer.get_submodule(name)
        n = module.weight.shape[0]
        part = Int4Weight(stacked.codes[row:row + n], stacked.scales[row:row + n], stacked.zeros[row:row + n],
                          stacked.g_idx)
        module.weight.data.copy_(part.dequantize())
        out[f"{prefix}.{name}"] = part
        row += n


def gptq_layer(layer, x, kwargs, args, prefix: str, out: dict) -> None:
    hessians: dict[str, torch.Tensor] = {}

    def accumulate(name, inp):
        h = hessians.setdefault(name, torch.zeros(inp.shape[1], inp.shape[1]))
        h.addmm_(inp.t(), inp)

    run_layer(layer, x, kwargs, tuple(src for _, _, src in GROUPS), on_input=accumulate)
    for _, names, src in GROUPS:
        w = torch.cat([layer.get_submodule(n).weight.detach().float() for n in names])
        q = algo.gptq_quantize(w, hessians[src], args.group_size, act_order=args.act_order, sym=not args.asym,
                               damp=args.damp)
        _set_weights(layer, names, q, prefix, out)


def _scale_rows(module, s: torch.Tensor) -> None:
    """Divide the module's output rows (and bias) by s: what feeds the next linear shrinks by s."""
    module.weight.data.div_(s[:, None])
    if module.bias is not None:
        module.bias.data.div_(s)


def _windows(t: torch.Tensor, kwargs: dict, shape: torch.Size, count: int) -> tuple[torch.Tensor, dict]:
    """The first `count` calibration windows of t [B * S, H] as [count, S, H], and the layer's kwargs cut
    to them (rotary tables and masks are per window)."""
    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == shape[0]:
            return v[:count]
        return tuple(cut(e) for e in v) if isinstance(v, tuple) else v

    return t.reshape(shape[0], shape[1], -1)[:count], {k: cut(v) for k, v in kwargs.items()}


def _block_loss(layer, names: tuple[str, ...], run):
    """loss(candidates) of awq_search_scales: the error of run()'s output with `names`' weights replaced."""
    reference = run()

    def loss(candidates: list[torch.Tensor]) -> float:
        modules = [layer.get_submodule(n) for n in names]
        saved = [m.weight.data for m in modules]
        for m, c in zip(modules, candidates):
            m.weight.data = c
        try:
            return float((run() - reference).pow(2).mean())
        finally:
            for m, w in zip(modules, saved):
                m.weight.data = w

    return loss


def _awq_losses(layer, inputs: dict, x: torch.Tensor, kwargs: dict, sample: torch.Tensor, args) -> dict:
    """What each group's scale search measures, as AutoAWQ does: qkv on the attention's output (whole
    windows: attention mixes tokens), gate_up on the MLP's output, o and down on their own outputs."""
    windows = max(1, min(x.shape[0], args.search_tokens // x.shape[1]))
    x_attn, kw_attn = _windows(inputs["self_attn.q_proj"], kwargs, x.shape, windows)
    x_mlp = inputs["mlp.gate_proj"][sample]
    losses = {"qkv": _block_loss(layer, GROUPS[0][1], lambda: layer.self_attn(x_attn, **kw_attn)[0]),
              "gate_up": _block_loss(layer, GROUPS[2][1], lambda: layer.mlp(x_mlp))}
    for group, names, src in (GROUPS[1], GROUPS[3]):
        losses[group] = algo.linear_output_loss(inputs[src][sample], [layer.get_submodule(n).weight for n in names])
    return losses


def awq_layer(layer, x, kwargs, args, prefix: str, out: dict) -> None:
    inputs: dict[str, torch.Tensor] = {}
    run_layer(layer, x, kwargs, tuple(src for _, _, src in GROUPS), on_input=inputs.__setitem__)
    tokens = next(iter(inputs.values())).shape[0]
    sample = torch.arange(0, tokens, max(1, tokens // args.search_tokens))[:args.search_tokens]  # evenly spaced
    attn, mlp = layer.self_attn, layer.mlp
    folds = {"qkv": lambda s: layer.input_layernorm.weight.data.div_(s),
             "gate_up": lambda s: layer.post_attention_layernorm.weight.data.div_(s),
             "down": lambda s: _scale_rows(mlp.up_proj, s)}
    if attn.v_proj.weight.shape[0] == attn.o_proj.weight.shape[1]:  # no GQA: v rows are o's inputs
        folds["o"] = lambda s: _scale_rows(attn.v_proj, s)
    losses = _awq_losses(layer, inputs, x, kwargs, sample, args)
    chosen = {}
    for group, names, src in GROUPS:
        if group in folds:
            weights = [layer.get_submodule(n).weight.detach().float() for n in names]
            chosen[group] = algo.awq_search_scales(weights, args.group_size, inputs[src].abs().mean(dim=0),
                                                   losses[group])[0]
    for group, names, _ in GROUPS:
        if group in chosen:  # searched first, applied after: every search saw the float weights
            folds[group](chosen[group])
            for n in names:
                layer.get_submodule(n).weight.data.mul_(chosen[group])
    for group, names, src in GROUPS:
        x_sample = inputs[src][sample] / chosen.get(group, torch.ones(1))
        for n in names:
            module = layer.get_submodule(n)
            if args.clip and n not in ("self_attn.q_proj", "self_attn.k_proj"):
                bound = algo.awq_search_clip(x_sample, module.weight.detach(), args.group_size)
                module.weight.data.copy_(algo.clip_weight(module.weight.detach(), bound))
            q = algo.rtn_quantize(module.weight.detach(), args.group_size, sym=False, style="awq")
            module.weight.data.copy_(q.dequantize())
            out[f"{prefix}.{n}"] = q


@torch.no_grad()
def quantize(args) -> dict:
    from transformers import AutoModelForCausalLM

    start = time.time()
    ids = calibration_ids(args.src, args.calib, args.tokens, args.seq_len)
    model = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32).eval()
    x, kwargs = first_layer_inputs(model, ids)
    layers: dict[str, Int4Weight] = {}
    for i, layer in enumerate(model.model.layers):
        (gptq_layer if args.method == "gptq" else awq_layer)(layer, x, kwargs, args, f"model.layers.{i}", layers)
        x = run_layer(layer, x, kwargs)
        print(f"layer {i + 1}/{len(model.model.layers)} quantized ({time.time() - start:.0f} s)", file=sys.stderr)
    overrides = {n: p.detach() for n, p in model.named_parameters() if n.endswith(("norm.weight", ".bias"))}
    fmt = "gptq_v2" if args.v2 else "gptq"
    qconfig = quantization_config(args.method, args.group_size, desc_act=args.act_order, sym=not args.asym,
                                  checkpoint_format=fmt, damp_percent=args.damp)
    write_published_checkpoint(args.dst, args.src, layers, qconfig, overrides=overrides,
                               float_dtype=getattr(torch, args.dtype))
    return {"method": args.method, "calibration": args.calib, "tokens": int(ids.numel()),
            "windows": int(ids.shape[0]), "layers": len(layers), "seconds": round(time.time() - start, 1),
            "quantization_config": qconfig, "dst": str(args.dst)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=("gptq", "awq"), required=True)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--group-size", type=int, default=128, choices=(32, 64, 128))
    p.add_argument("--act-order", action="store_true", help="gptq: desc_act (columns by decreasing Hessian)")
    p.add_argument("--asym", action="store_true", help="gptq: asymmetric (sym false); awq is always asymmetric")
    p.add_argument("--v2", action="store_true", help="gptq: write checkpoint_format gptq_v2 (zeros as they are)")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: damping, a fraction of the mean diagonal")
    p.add_argument("--clip", action="store_true",
                   help="awq: also search per-group clipping ranges (AutoAWQ's default; off here: on Qwen2.5-0.5B "
                        "it lowered each layer's output error yet raised the whole model's perplexity)")
    p.add_argument("--search-tokens", type=int, default=512, help="awq: tokens the searches measure on")
    p.add_argument("--calib", choices=("calibration", "prompts", "plain", "both"), default="calibration",
                   help="calibration: qwen_triton/quant/calibration.jsonl (the build's set; default); prompts / "
                        "plain: tools/accuracy.py's own data (flatters its scores)")
    p.add_argument("--tokens", type=int, default=4096, help="calibration tokens (at most)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="dtype of the written float tensors (published checkpoints ship float16)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: torch's default). 1 by default: GPTQ's column loop is thousands of small "
                        "ops, which on a busy 2-core machine run ~20x slower with 2 threads waiting on each other")
    args = p.parse_args(argv)
    if args.method == "awq" and (args.act_order or args.asym or args.v2):
        p.error("--act-order, --asym and --v2 are gptq options")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(quantize(args), indent=2))


if __name__ == "__main__":
    main()
