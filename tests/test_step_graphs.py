"""What a prefill graph replays, run without the capture on the CPU (Triton's interpreter): a mixed step
(a fresh prompt, a chunk after prefix-cached context, decodes) copied into the graph's static inputs, padded to
a larger token and sequence bucket, through the backend's graph-safe attention, gives each sequence's last-row
logits equal to the eager step's. The capture itself needs a GPU (tools/check_kernels_gpu.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated

pytest.importorskip("triton", reason="triton is not installed: the graph-safe attention is untested here")

from checkpoints import VOCAB, write_qwen2  # noqa: E402

from qwen_triton import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from qwen_triton.cuda_graphs import PrefillGraphs  # noqa: E402
from qwen_triton.host_batch import prepare_host  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = write_qwen2(str(tmp_path_factory.mktemp("graphs") / "qwen2"), seed=6)
    return LLMEngine(path, EngineConfig(device=DEVICE, dtype="float32", attention_backend="triton",
                                        layer_kernels="torch", block_size=4, max_num_batched_tokens=64,
                                        enforce_eager=True, async_scheduling="off"))


def test_padded_graph_inputs_give_the_eager_logits(engine):
    rng = np.random.default_rng(0)
    shared = rng.integers(3, VOCAB, 13).tolist()
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    engine.add_request("first", shared + [7, 8], greedy)
    engine.add_request("decoding", rng.integers(3, VOCAB, 5).tolist(), greedy)
    engine.step()
    engine.step()  # "first" and "decoding" now decode; "first"'s full blocks are cached
    engine.add_request("cached", shared + rng.integers(3, VOCAB, 6).tolist(), greedy)  # 12 tokens from the cache
    engine.add_request("fresh", rng.integers(3, VOCAB, 9).tolist(), greedy)
    sched = engine.scheduler.schedule()
    assert [s.num_tokens for s in sched.scheduled] == [1, 1, 7, 9] and sched.scheduled[2].start_pos == 12
    runner = engine.runner
    host = prepare_host(sched.scheduled, runner.block_size)
    last = host.cu[1:].astype(np.int64) - 1
    with torch.inference_mode():
        want = runner._forward(host, graphs=False)(last)  # eager: [4, vocab]
        graphs = PrefillGraphs(runner.model, runner.kv_caches, 64, 8, 16, runner.block_size, runner.settings.device)
        key = (32, 8)  # 18 tokens of 4 sequences padded to 32 tokens of 8
        graphs.inputs.fill(host, *key, with_cu=True)
        got = graphs._forward(key)  # what the graph of this bucket replays: [8, vocab]
    assert torch.allclose(got[:4], want, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got).all()
