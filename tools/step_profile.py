#!/usr/bin/env python3
"""Where an engine step's time goes on the host, at 1, 64 and 256 decoding sequences.

    python3 -m tools.step_profile --out steps.json [--batches 1,64,256] [--max-num-seqs 256]

At Qwen-7B's shapes with random bf16 weights (tools/benchmark.py's checkpoint), each batch of B sequences
(128-token prompts, long forced outputs) is brought to steady decoding, then timed twice:
  plain       LLMEngine.step wall time per step, as the engine runs (host work overlaps the GPU where the
              code lets it)
  phases      the same steps with each phase timed and the device synchronised after the forward pass, so
              that host work and GPU work separate: schedule (Scheduler.schedule), prepare (prepare_host:
              numpy packing), launch (ModelRunner._forward: input copies and the graph replay or eager
              launches, host side), gpu (waiting for the forward pass), sample (Sampler.launch: queueing its
              kernels and the tokens' copy to the host), update (Scheduler.update and the outputs)
host_ms = schedule + prepare + launch + update + the sampler's host share is what async scheduling can hide;
`graph_ms` is one replayed decode graph alone (GPU time).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import statistics
import tempfile
import time

import numpy as np
import torch

import qwen_triton.model_runner as model_runner
from qwen_triton import EngineConfig, LLMEngine
from qwen_triton.models.loader import write_random_checkpoint

from .benchmark import QWEN_7B, forced, graph_step_ms, random_prompts


class PhaseTimer:
    """Wraps methods with wall-clock timers (seconds per call, by phase)."""

    def __init__(self):
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.restore: list = []

    def wrap(self, owner, attr: str, phase: str, sync: bool = False) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.times[phase].append(time.perf_counter() - start)
            if sync:
                start = time.perf_counter()
                torch.cuda.synchronize()
                self.times["gpu"].append(time.perf_counter() - start)
            return out

        self.restore.append((owner, attr, owner.__dict__.get(attr)))
        setattr(owner, attr, timed)

    def unwrap(self) -> None:
        for owner, attr, old in reversed(self.restore):
            if old is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)
        self.restore.clear()


def steady(engine: LLMEngine, batch: int, rng) -> None:
    for i, prompt in enumerate(random_prompts(batch, 128, rng)):
        engine.add_request(f"p{batch}-{i}", prompt, forced(1500))
    while engine.stats().num_prefilling or engine.stats().num_waiting:
        engine.step()
    for _ in range(5):
        engine.step()


def profile_batch(engine: LLMEngine, batch: int, steps: int, rng) -> dict:
    steady(engine, batch, rng)
    assert engine.stats().num_running == batch, "the batch does not fit: raise max_num_seqs or the KV pool"
    torch.cuda.synchronize()  # once: a sync per step would undo async scheduling's overlap
    plain = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        plain.append(time.perf_counter() - start)
    timer = PhaseTimer()
    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(model_runner, "prepare_host", "prepare")
    timer.wrap(engine.runner, "_forward", "launch", sync=True)
    timer.wrap(engine.runner.sampler, "launch", "sample")
    timer.wrap(engine.scheduler, "update", "update")
    timer.wrap(engine, "step", "step")
    try:
        for _ in range(steps):
            engine.step()
    finally:
        timer.unwrap()
    for i in range(batch):
        engine.abort_request(f"p{batch}-{i}")
    engine.step()
    ms = {phase: 1e3 * statistics.median(values) for phase, values in timer.times.items()}
    host = sum(ms.get(p, 0.0) for p in ("schedule", "prepare", "launch", "update"))
    ctx = 128 + 5 + steps
    return {"batch": batch, "plain_step_ms": 1e3 * statistics.median(plain), "phases_ms": ms,
            "host_ms_without_sample": host, "graph_ms": graph_step_ms(engine.runner, batch, ctx)}


def find_syncs(engine: LLMEngine, batch: int, rng) -> list[dict]:
    """The host-device synchronisations of steady steps (torch.cuda.set_sync_debug_mode), each with the
    qwen_triton frames that made it: with async scheduling only the wait for the step in flight belongs."""
    import traceback
    import warnings

    steady(engine, batch, rng)
    found: dict[str, dict] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f"{f.filename.split('/src/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_stack()
                  if "qwen_triton" in f.filename or "/tools/" in f.filename]
        key = " <- ".join(reversed(frames[-4:]))
        found.setdefault(key, {"message": str(message)[:160], "where": key, "count": 0})["count"] += 1

    old = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            for _ in range(5):
                engine.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
    for i in range(batch):
        engine.abort_request(f"p{batch}-{i}")
    engine.step()
    return list(found.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="steps.json")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--sync-debug", action="store_true", help="list the synchronisations of steady steps")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        write_random_checkpoint(tmp, QWEN_7B)
        engine = LLMEngine(tmp, EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=8192,
                                             max_model_len=4096, cuda_graph_max_batch=args.max_num_seqs))
        rows, syncs = [], {}
        if args.sync_debug:
            for batch in batches:
                syncs[batch] = find_syncs(engine, batch, rng)
                print(f"B{batch} syncs: {json.dumps(syncs[batch], indent=1)}", flush=True)
        for batch in batches:
            row = profile_batch(engine, batch, args.steps, rng)
            rows.append(row)
            print(f"B{batch}: step {row['plain_step_ms']:.2f} ms, graph {row['graph_ms']:.2f} ms, "
                  f"phases {({k: round(v, 3) for k, v in row['phases_ms'].items()})}", flush=True)
    result = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(0), "rows": rows,
              "syncs": syncs}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
