"""Tensor parallelism served: the random-weight model built with `tensor_parallel_size=2` (as `make
build-engine TP=2` builds it) and served by a real tritonserver. The engine model's process is rank 0 and
starts rank 1 itself (on the CPU, over gloo); replies through the ensemble, one at a time and several at
once, equal the unsplit engine's greedy output on the same checkpoint."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from served import build_repo, http_generate, needs_triton, serve

from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.chat import load_tokenizer
from qwen_triton.serving import contract as c
from qwen_triton.serving.postprocess import Postprocessor

pytestmark = [needs_triton, pytest.mark.server]
PROMPTS = ["Split across two processes:", "The same answer, whatever the split:", "gloo all-reduce", "TP=2"]
MAX_TOKENS = 12
SETS = ("tensor_parallel_size=2", "max_num_seqs=8", "max_input_len=128", "max_output_len=32")


def _expected(checkpoint, prompts: list[str]) -> list[str]:
    tokenizer = load_tokenizer(str(checkpoint))
    engine = LLMEngine(str(checkpoint), EngineConfig(device="cpu", dtype="float32", max_num_seqs=4,
                                                               max_model_len=160))
    outs = engine.generate([tokenizer.encode(p) for p in prompts], SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.0, end_ids=tuple(tokenizer.eos_ids)))
    return [Postprocessor(tokenizer).decode(out) for out in outs]


def _reply(server, prompt: str) -> str:
    r = http_generate(server, {"text_input": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0})
    assert r.status_code == 200, r.text
    text = r.json()[c.TEXT_OUTPUT]
    assert text.startswith(prompt)
    return text[len(prompt):]


def test_two_ranks_serve_through_the_ensemble(random_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-served")
    repo = build_repo(root, sets=SETS, artifacts=random_checkpoint.parent)
    config = (repo / c.ENGINE / "config.pbtxt").read_text()
    assert '\\"tensor_parallel_size\\":2' in config, "the engine model's config carries the setting"
    expected = _expected(random_checkpoint, PROMPTS)
    with serve(repo, root / "triton.log") as server:
        assert _reply(server, PROMPTS[0]) == expected[0]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # one inflight batch over both ranks
            assert list(pool.map(lambda p: _reply(server, p), PROMPTS)) == expected
    log = (root / "triton.log").read_text(errors="replace")
    assert "tensor-parallel rank 1 of 2 ready" in log, json.dumps(log[-2000:])
