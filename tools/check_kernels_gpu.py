#!/usr/bin/env python3
"""GPU checks at full size: every Triton kernel against its plain-torch
reference (Qwen-7B shapes, fresh random inputs, bf16 and fp16), the Triton
attention backend against the torch backend on mixed batches, the int8 / fp8
KV cache's kernels (tools/check_kv_quant_gpu.py), the paged prefill kernel and the
backend's graph-safe path, captured and replayed (tools/check_prefill_gpu.py), and the engine's fast path
(Triton kernels, CUDA graphs) against its reference path and transformers on
tiny checkpoints. Also times the kernels once, paged decode over int8 / fp8
caches against bf16 and paged prefill against flash varlen included.

    python3 -m tools.check_kernels_gpu [--json OUT.json]

Exits non-zero when a check fails. The CPU twin is tests/test_kernels.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from qwen_triton.attention import AttentionMetadata
from qwen_triton.attention.torch_backend import TorchAttentionBackend
from qwen_triton.attention.torch_backend import write_kv_cache as write_kv_reference
from qwen_triton.attention.triton_backend import TritonAttentionBackend
from qwen_triton.kernels import activation, kv_cache, norm, rotary
from qwen_triton.kernels.paged_attention import (
    choose_num_splits,
    paged_decode_attention,
    paged_decode_attention_reference,
)
from qwen_triton.models import layers
from tools.check_kv_quant_gpu import report
from tools.check_kv_quant_gpu import run_checks as run_kv_quant_checks
from tools.check_kv_quant_gpu import time_decode as time_kv_quant_decode
from tools.check_prefill_gpu import run_checks as run_prefill_checks
from tools.check_prefill_gpu import time_prefill

DEV = torch.device("cuda")
RESULTS: list[dict] = []


def rel_err(got, ref) -> float:
    got, ref = got.double(), ref.double()
    if torch.isnan(got).any():
        return float("nan")
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(name: str, err: float, limit: float, **extra) -> None:
    ok = err == err and err < limit
    RESULTS.append({"check": name, "rel_err": err, "limit": limit, "ok": ok, **extra})
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (limit {limit:.0e}) {extra or ''}", flush=True)


def randn(*shape, dtype):
    return torch.randn(*shape, device=DEV).to(dtype)


def tol(dtype):
    return 2e-2 if dtype != torch.float32 else 1e-5


# -- kernels -----------------------------------------------------------------------


def check_layer_kernels(dtype):
    tag = str(dtype).split(".")[-1]
    x, res = randn(4096, 4096, dtype=dtype), randn(4096, 4096, dtype=dtype)
    w = 1 + 0.1 * randn(4096, dtype=dtype)
    check(f"rms_norm {tag} 4096x4096", rel_err(norm.rms_norm(x, w, 1e-6), layers.rms_norm(x, w, 1e-6)), tol(dtype))
    out, total = norm.add_rms_norm(x, res, w, 1e-6)
    ref_out, ref_total = layers.add_rms_norm(x, res, w, 1e-6)
    check(f"add_rms_norm {tag} sum exact", 0.0 if torch.equal(total, ref_total) else 1.0, 0.5)
    check(f"add_rms_norm {tag} out", rel_err(out, ref_out), tol(dtype))
    for tokens, heads, kv_heads in ((2048, 32, 32), (777, 28, 4)):
        qkv = randn(tokens, (heads + 2 * kv_heads) * 128, dtype=dtype)
        q, k, _ = qkv.split([heads * 128, kv_heads * 128, kv_heads * 128], dim=-1)
        q, k = q.view(tokens, heads, 128), k.view(tokens, kv_heads, 128)
        pos = torch.randint(0, 32768, (tokens,), device=DEV)
        cos, sin = layers.rope_cos_sin(pos, layers.compute_inv_freq(layers.RopeConfig(theta=1e6), 128).to(DEV))
        ref_q, ref_k = layers.apply_rotary_qk(q.clone(), k.clone(), cos, sin)
        got_q, got_k = rotary.apply_rotary_(q, k, cos, sin)
        check(f"rotary {tag} T{tokens} H{heads}/{kv_heads}", max(rel_err(got_q, ref_q), rel_err(got_k, ref_k)),
              tol(dtype))
    gate_up = randn(1024, 2 * 11008, dtype=dtype)
    check(f"silu_and_mul {tag} 1024x11008", rel_err(activation.silu_and_mul(gate_up), layers.silu_and_mul(gate_up)),
          tol(dtype))
    kvs = randn(4096, 3, 32, 128, dtype=dtype)
    cache = randn(2, 600, 16, 32, 128, dtype=dtype)
    slots = torch.randperm(600 * 16, device=DEV)[:4096]
    expected = cache.clone()
    write_kv_reference(expected, kvs[:4000, 1], kvs[:4000, 2], slots[:4000])
    slots[4000:] = -1
    kv_cache.write_kv_cache(cache, kvs[:, 1], kvs[:, 2], slots)
    check(f"write_kv_cache {tag} T4096 (96 slots -1)", 0.0 if torch.equal(cache, expected) else 1.0, 0.5)


def paged_case(num_tokens, heads, kv_heads, max_ctx, dtype, block_size=16):
    ctx = torch.randint(1, max_ctx + 1, (num_tokens,))
    ctx[0] = max_ctx
    width = -(-max_ctx // block_size)
    num_blocks = num_tokens * width + 7
    tables = torch.randperm(num_blocks)[:num_tokens * width].view(num_tokens, width)
    cache = randn(2, num_blocks, block_size, kv_heads, 128, dtype=dtype)
    q = randn(num_tokens, heads, 128, dtype=dtype)
    return q, cache, tables.to(torch.int32).to(DEV), ctx.to(torch.int32).to(DEV)


def check_paged_attention(dtype, num_sms):
    tag = str(dtype).split(".")[-1]
    for num_tokens, heads, kv_heads, max_ctx in ((1, 32, 32, 4096), (64, 32, 32, 2048), (33, 28, 4, 1000),
                                                 (256, 32, 32, 300)):
        q, cache, tables, ctx = paged_case(num_tokens, heads, kv_heads, max_ctx, dtype)
        ctx[-1] = 0 if num_tokens > 1 else ctx[-1]
        ref = paged_decode_attention_reference(q, cache, tables, ctx, 128 ** -0.5)
        for splits, block_n in {(choose_num_splits(num_tokens, heads, num_sms), 64), (1, 128), (4, 128)}:
            got = paged_decode_attention(q, cache, tables, ctx, 128 ** -0.5, num_splits=splits, block_n=block_n)
            check(f"paged_decode {tag} N{num_tokens} H{heads}/{kv_heads} ctx<={max_ctx} splits{splits} "
                  f"block_n{block_n}", rel_err(got, ref), tol(dtype))


# -- the attention backend on mixed batches ----------------------------------------------


def mixed_meta(groups, block_size, num_blocks):
    """groups: (cached, new) tokens per sequence -> metadata with random block tables."""
    perm = torch.randperm(num_blocks).tolist()
    tables, slots, cu, seq_lens = [], [], [0], []
    for cached, new in groups:
        total = cached + new
        need = -(-total // block_size)
        table, perm = perm[:need], perm[need:]
        tables.append(table)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(cached, total)]
        cu.append(cu[-1] + new)
        seq_lens.append(total)
    width = max(len(t) for t in tables)
    padded = [t + [0] * (width - len(t)) for t in tables]
    return AttentionMetadata(
        query_start_loc=torch.tensor(cu, dtype=torch.int32, device=DEV),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEV),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=DEV),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEV),
        query_lens_cpu=[n for _, n in groups], seq_lens_cpu=seq_lens, block_size=block_size)


def check_backend(dtype):
    tag = str(dtype).split(".")[-1]
    for heads, kv_heads in ((32, 32), (28, 4)):
        groups = [(100, 1), (0, 300), (37, 1), (0, 5), (200, 64), (0, 1), (1000, 1), (0, 129), (16, 17)]
        meta = mixed_meta(groups, 16, 400)
        total = sum(n for _, n in groups)
        cache = randn(2, 400, 16, kv_heads, 128, dtype=dtype)
        q, k, v = randn(total, heads, 128, dtype=dtype), randn(total, kv_heads, 128, dtype=dtype), \
            randn(total, kv_heads, 128, dtype=dtype)
        ref_cache = cache.clone()
        ref = TorchAttentionBackend().forward(q, k, v, ref_cache, meta, 128 ** -0.5)
        backend = TritonAttentionBackend(DEV)
        got = backend.forward(q, k, v, cache, meta, 128 ** -0.5)
        check(f"triton backend {tag} mixed H{heads}/{kv_heads} (varlen {backend.use_varlen})",
              rel_err(got, ref), tol(dtype))
        check(f"triton backend {tag} cache written", 0.0 if torch.equal(cache, ref_cache) else 1.0, 0.5)
        check_backend_graphed(groups, meta, q, k, v, ref_cache, ref, f"{tag} mixed H{heads}/{kv_heads}")


def check_backend_graphed(groups, meta, q, k, v, ref_cache, ref, tag):
    """The graph-safe path (paged prefill + decode kernels, fixed launches) on the same step as check_backend,
    max_query_len a power-of-two bucket above the step's. It starts from the reference's cache after the
    step: writing the step's K/V again leaves it as it is, and the contexts are those the reference read."""
    cache = ref_cache.clone()
    bucket = 1 << (max(n for _, n in groups) - 1).bit_length()
    got = TritonAttentionBackend(DEV).forward_graphed(q, k, v, cache, meta, 128 ** -0.5, max_query_len=bucket)
    check(f"triton backend forward_graphed {tag} (bucket {bucket})", rel_err(got, ref), tol(q.dtype))
    check(f"triton backend forward_graphed {tag} cache unchanged", 0.0 if torch.equal(cache, ref_cache) else 1.0, 0.5)


# -- the engine ------------------------------------------------------------------------------


def check_engine():
    from qwen_triton import EngineConfig, LLMEngine, SamplingParams
    from tests import checkpoints as ck
    from tests.test_engine import prompts

    root = tempfile.mkdtemp()
    mha = ck.write_qwen2_mha(os.path.join(root, "qwen2-mha"), seed=4)
    paths = {"qwen2": ck.write_qwen2(os.path.join(root, "qwen2"), seed=2),
             "qwen3": ck.write_qwen3(os.path.join(root, "qwen3"), seed=3),
             "qwen2-mha": mha,
             "qwen-long": ck.convert_qwen2_to_qwen(mha, os.path.join(root, "qwen-long"), seq_length=32)}
    params = SamplingParams(max_tokens=48, min_tokens=48, temperature=0.0, end_ids=(2,))
    fast = dict(max_num_batched_tokens=256, block_size=16, max_model_len=256, max_num_seqs=16)
    reference = dict(attention_backend="torch", layer_kernels="torch", enforce_eager=True)
    for arch, path in paths.items():
        ps = prompts(12, seed=7, lo=2, hi=90)
        # float32: the fast path must give exactly the reference's greedy tokens
        runs = {name: LLMEngine(path, EngineConfig(dtype="float32", device="cuda", **fast, **kw)).generate(ps, params)
                for name, kw in (("reference", reference), ("triton-graphs", {}))}
        check(f"engine {arch} fp32: fast (graphs) tokens == reference tokens",
              0.0 if runs["triton-graphs"] == runs["reference"] else 1.0, 0.5)
        # bf16 and fp16: graphs replay exactly what eager runs; vs the reference only rounding differs
        for dtype, tag in (("bfloat16", "bf16"), ("float16", "fp16")):
            runs = {}
            for name, kw in (("reference", reference), ("triton-eager", dict(enforce_eager=True)),
                             ("triton-graphs", {})):
                engine = LLMEngine(path, EngineConfig(dtype=dtype, device="cuda", **fast, **kw))
                runs[name] = engine.generate(ps, params)
                if name == "triton-graphs":
                    check(f"engine {arch} {tag}: graphs captured", 0.0 if engine.runner.graphs else 1.0, 0.5)
            check(f"engine {arch} {tag}: graph tokens == eager tokens",
                  0.0 if runs["triton-graphs"] == runs["triton-eager"] else 1.0, 0.5)
            first = [x[:8] == y[:8] for x, y in zip(runs["triton-graphs"], runs["reference"])]
            check(f"engine {arch} {tag}: sequences whose first 8 tokens differ from the reference",
                  1 - sum(first) / len(first), 0.5)
        if arch in ("qwen2", "qwen3"):
            for dtype in (torch.bfloat16, torch.float16):
                check_logits_vs_transformers(arch, path, dtype)


def check_logits_vs_transformers(arch, path, dtype=torch.bfloat16):
    """Prefill logits of our bf16 / fp16 model (fast kernels) vs transformers in float32."""
    from transformers import AutoModelForCausalLM

    from qwen_triton.model_runner import _dummy_prefill
    from qwen_triton.models import load_model, load_model_config

    config = load_model_config(path)
    ours = load_model(path, config, dtype, DEV, TritonAttentionBackend(DEV), layers.triton_layer_ops())
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEV).eval()
    ids = torch.randint(3, config.vocab_size, (1, 70))
    host = _dummy_prefill([70], 16)
    host.ids[:] = ids[0].numpy()
    caches = [torch.zeros(2, 8, 16, config.num_kv_heads, config.head_dim, dtype=dtype, device=DEV)
              for _ in range(config.num_layers)]
    with torch.inference_mode():
        got = ours.compute_logits(ours(host.to_device(DEV, 16), caches))
        ref = hf(ids.to(DEV)).logits[0].float()
    tag = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    check(f"prefill logits {arch}: ours {tag} vs transformers fp32", rel_err(got, ref), 3e-2)


# -- timings ----------------------------------------------------------------------------------


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written): the ceiling kernels are held to."""
    from triton.testing import do_bench

    buf = torch.empty(2 << 30, dtype=torch.uint8, device=DEV)
    copy_ms = do_bench(lambda: buf[: 1 << 30].copy_(buf[1 << 30:]), warmup=100, rep=500, return_mode="median")
    return 2 * (1 << 30) / copy_ms / 1e6


def graph_us(fn, reps: int = 20) -> float:
    """Median microseconds per call of fn, replayed from a CUDA graph of `reps` calls."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(7):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


def time_kernels(num_sms):
    """Decode-attention launch configurations inside CUDA graphs (KV rotated over
    4 caches so small cases do not run from L2), and the fused norm."""
    from qwen_triton.kernels.paged_attention import choose_launch

    out = {}
    copy_bw = out["copy_GBps"] = copy_bandwidth()
    print(f"time copy: {copy_bw:.0f} GB/s", flush=True)
    configs = [(64, 4, 2, True), (64, 4, 2, False), (128, 4, 2, True), (128, 4, 2, False), (128, 8, 2, True),
               (64, 8, 2, True)]
    for num_tokens, ctx_len in ((1, 256), (1, 4096), (32, 2048), (64, 1024), (256, 192), (256, 1024)):
        cases = [paged_case(num_tokens, 32, 32, ctx_len, torch.bfloat16) for _ in range(4)]
        ctx = torch.full((num_tokens,), ctx_len, dtype=torch.int32, device=DEV)
        policy = choose_launch(num_tokens, 32, num_sms)
        nbytes = num_tokens * ctx_len * 2 * 32 * 128 * 2
        for splits in sorted({policy.num_splits, 1, 4}):
            for block_n, warps, stages, v_with_k in configs:
                turn = iter(range(1 << 30))

                def call():
                    q, cache, tables, _ = cases[next(turn) % 4]  # noqa: B023 (timed within this iteration)
                    paged_decode_attention(q, cache, tables, ctx, 0.088, splits, block_n, warps, stages,  # noqa: B023
                                           v_with_k)  # noqa: B023

                us = graph_us(call)
                key = (f"N{num_tokens} ctx{ctx_len} splits{splits} block_n{block_n} warps{warps} "
                       f"v_with_k{int(v_with_k)}")
                mark = " <- policy" if (splits, block_n, warps, stages, v_with_k) == (
                    policy.num_splits, policy.block_n, policy.num_warps, policy.num_stages, policy.v_with_k) else ""
                out[key] = {"us": us, "GBps": nbytes / us / 1e3, "share_of_copy": nbytes / us / 1e3 / copy_bw}
                print(f"time decode {key}: {us:.1f} us, {nbytes / us / 1e3:.0f} GB/s "
                      f"({nbytes / us / 1e3 / copy_bw:.0%}){mark}", flush=True)
    x, r, w = randn(256, 4096, dtype=torch.bfloat16), randn(256, 4096, dtype=torch.bfloat16), \
        randn(4096, dtype=torch.bfloat16)
    for name, fn in (("add_rms_norm T256 (triton)", lambda: norm.add_rms_norm(x, r, w, 1e-6)),
                     ("add_rms_norm T256 (torch)", lambda: layers.add_rms_norm(x, r, w, 1e-6))):
        out[name] = {"us": graph_us(fn)}
        print(f"time {name}: {out[name]['us']:.1f} us", flush=True)
    out["kv_quant"] = time_kv_quant_decode(graph_us, copy_bw, num_sms)
    out["prefill"] = time_prefill(graph_us)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    num_sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    print(f"device: {torch.cuda.get_device_name()}, {num_sms} SMs, torch {torch.__version__}", flush=True)
    for dtype in (torch.bfloat16, torch.float16):
        check_layer_kernels(dtype)
        check_paged_attention(dtype, num_sms)
        check_backend(dtype)
    run_kv_quant_checks(check, num_sms)
    run_prefill_checks(check)
    if not args.skip_engine:
        check_engine()
    timings = {} if args.skip_timing else time_kernels(num_sms)
    return report(RESULTS, timings, args.json)


if __name__ == "__main__":
    sys.exit(main())
