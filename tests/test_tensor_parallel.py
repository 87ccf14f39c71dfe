"""Tensor parallelism on the CPU with gloo: an engine split over 2 (and, where the shapes allow, 4)
processes gives the greedy tokens of the unsplit engine in float32, for every architecture, batched and
with preemption; context logits and scores match; quantized checkpoints split their scales with their
weights; a worker's death ends the engine with an error naming it, never a hang; models and settings that
cannot split are refused, at the engine's start and at build time."""
from __future__ import annotations

import os
import random
import signal
import threading

import numpy as np
import pytest
from checkpoints import VOCAB, convert_qwen2_to_qwen, write_llama, write_qwen2, write_qwen2_mha, write_qwen3

from build.settings import Settings, SettingsError
from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.config import ModelConfig
from qwen_triton.distributed import ShardingError, check_tensor_parallel
from qwen_triton.distributed.workers import TensorParallelError
from qwen_triton.quant.convert import quantize_checkpoint
from qwen_triton.quant.spec import QuantSpec

NEW_TOKENS = 24
EOS = 2
HANG_S = 120  # a test thread still running after this long is a hang, not a slow machine


def greedy(max_tokens: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, end_ids=(EOS,))


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 40))] for _ in range(n)]


# 6 prompts of 3-40 tokens plus 24 each, over 4 sequences at once in 40 blocks of 4: some are preempted
SMALL_POOL = dict(device="cpu", dtype="float32", block_size=4, max_num_batched_tokens=32, max_num_seqs=4,
                  num_kv_blocks=40)


def engine(path: str, tp: int = 1, **kw) -> LLMEngine:
    return LLMEngine(str(path), EngineConfig(tensor_parallel_size=tp, **{**SMALL_POOL, **kw}))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-ckpts")
    mha = write_qwen2_mha(str(root / "qwen2-mha"), seed=4)
    return {
        "llama": write_llama(str(root / "llama"), seed=1),  # tied embeddings: the lm_head is the vocab shard
        "qwen2": write_qwen2(str(root / "qwen2"), seed=2),  # qkv bias
        "qwen3": write_qwen3(str(root / "qwen3"), seed=3),  # q/k norms, head_dim 32
        # seq_length 32: logn attention and dynamic NTK switch on within the test lengths
        "qwen": convert_qwen2_to_qwen(mha, str(root / "qwen"), seq_length=32),
    }


def run_both(path, tp: int, ps: list[list[int]], **kw) -> tuple[list, list, LLMEngine, LLMEngine]:
    """The same prompts through an unsplit engine and a `tp`-way one of the same settings."""
    single, split = engine(path, **kw), engine(path, tp, **kw)
    try:
        return single.generate(ps, greedy()), split.generate(ps, greedy()), single, split
    finally:
        split.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "qwen"])
def test_two_ranks_give_the_unsplit_greedy_tokens_batched_and_preempted(ckpts, arch):
    ps = prompts(6, seed=len(arch))
    ours, split, single, parallel = run_both(ckpts[arch], 2, ps)
    assert all(len(t) == NEW_TOKENS for t in ours)
    assert split == ours
    assert single.stats().num_preemptions > 0 and parallel.stats().num_preemptions > 0


def test_four_ranks_replicate_the_kv_heads(ckpts):
    """4 ranks over 2 KV heads: each KV head held by two ranks (and its qkv bias with it)."""
    ps = prompts(4, seed=7)
    ours, split, _, _ = run_both(ckpts["qwen2"], 4, ps)
    assert split == ours


def test_context_logits_and_scores_match_the_unsplit_engine(ckpts):
    path, ps = ckpts["qwen3"], prompts(2, seed=3)
    params = SamplingParams(max_tokens=4, temperature=0.0, return_context_logits=True,
                            return_generation_logits=True)
    results = []
    for tp in (1, 2):
        e = engine(path, tp, num_kv_blocks=None)
        try:
            ids = [f"r{i}" for i in range(len(ps))]
            for rid, p in zip(ids, ps):
                e.add_request(rid, p, params)
            outs = {}
            while e.has_unfinished_requests():
                for out in e.step():
                    outs.setdefault(out.request_id, []).append(out)
            results.append((outs, e.score(ps[0] + ps[1])))
        finally:
            e.close()
    (single, single_score), (split, split_score) = results
    for rid in single:
        a, b = _joined(single[rid]), _joined(split[rid])
        assert a[0] == b[0] and len(a[0]) == 4
        for got, want in zip(b[1:], a[1:]):  # context logits [prompt, vocab], generation logits [4, vocab]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(split_score, single_score, rtol=1e-4, atol=1e-4)


def _joined(outputs) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A request's tokens, context logits and generation logits over all its outputs."""
    tokens = [t for o in outputs for t in o.new_token_ids]
    context = next(o.context_logits for o in outputs if o.context_logits is not None)
    generation = np.concatenate([o.generation_logits for o in outputs if o.generation_logits is not None])
    return tokens, context, generation


@pytest.mark.parametrize("spec", [QuantSpec(weights="int8_wo", lm_head=True),
                                  QuantSpec(weights="int4_wo", group_size=32)], ids=["int8_wo-lm_head", "int4_wo-g32"])
def test_quantized_layers_split_their_scales_with_their_weights(ckpts, tmp_path, spec):
    """int8: per-output-channel scales follow qkv/gate_up's rows and the int8 lm_head's vocabulary rows, and
    stay whole for o/down; int4: the group-wise scales and zero points of o_proj and down_proj split with
    their input columns."""
    path = quantize_checkpoint(ckpts["qwen2"], tmp_path / spec.weights, spec, say=lambda *a: None)
    ours, split, _, _ = run_both(path, 2, prompts(3, seed=11))
    assert split == ours


def test_a_worker_that_dies_ends_the_engine_with_an_error_naming_it(ckpts):
    e = engine(ckpts["qwen2"], 2, num_kv_blocks=None, max_model_len=512)
    try:
        assert len(e.generate(prompts(1), greedy(4))[0]) == 4
        worker = e.runner._workers._procs[1]
        stepped, outcome = threading.Event(), []

        def generate() -> None:  # 400 tokens: the worker dies under way, in a step or between two
            try:
                for i, p in enumerate(prompts(4, seed=5)):
                    e.add_request(f"long-{i}", p, greedy(400))
                while e.has_unfinished_requests():
                    e.step()
                    stepped.set()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                outcome.append(exc)

        runner = threading.Thread(target=generate, daemon=True)
        runner.start()
        assert stepped.wait(HANG_S)
        os.kill(worker.pid, signal.SIGKILL)
        runner.join(HANG_S)
        assert not runner.is_alive(), "the engine hung after its worker died"
        assert isinstance(outcome[0], TensorParallelError), outcome
        assert f"rank 1 (pid {worker.pid}) was killed by signal 9" in str(outcome[0])
        with pytest.raises(TensorParallelError, match="rank 1"):  # and it stays down
            e.generate(prompts(1), greedy(2))
    finally:
        e.close()
    assert worker.poll() is not None


# -- what cannot split ----------------------------------------------------------------------------


def _config(heads: int = 4, kv: int = 2, width: int = 128, head_dim: int = 16) -> ModelConfig:
    return ModelConfig("qwen2", VOCAB, heads * head_dim, 2, heads, kv, head_dim, width, 1e-6, 512)


@pytest.mark.parametrize("config, size, quant, message", [
    (_config(heads=4), 3, None, "does not divide the model's 4 attention heads"),
    (_config(heads=12, kv=6), 4, None, "6 KV heads: one must divide the other"),
    (_config(heads=12, kv=3), 2, None, "3 KV heads"),
    (_config(heads=8, kv=8, width=100), 8, None, "MLP width 100"),
    (_config(), 2, QuantSpec(weights="gptq", act_order=True), "act-order"),
    (_config(), 2, QuantSpec(weights="int4_wo", group_size=64), "o_proj's 64 input columns"),
])
def test_models_that_cannot_split_are_refused(config, size, quant, message):
    with pytest.raises(ShardingError, match=message):
        check_tensor_parallel(config, size, quant, "cpu")
    check_tensor_parallel(config, 1, quant, "cpu")  # one rank: anything goes


def test_more_ranks_than_visible_gpus_are_refused():
    import torch

    visible = torch.cuda.device_count()
    with pytest.raises(ShardingError, match=f"needs 2 GPUs from cuda:{visible}, but {visible} are visible"):
        check_tensor_parallel(_config(), 2, None, f"cuda:{visible}")


def test_the_engine_refuses_before_it_starts_a_process(ckpts):
    with pytest.raises(ShardingError, match="tensor_parallel_size=3 does not divide"):
        engine(ckpts["qwen2"], 3)


def test_one_setting_drives_both_engines():
    ours = Settings.from_dict({"tensor_parallel_size": 2})
    theirs = Settings.from_dict({"engine": "tensorrtllm", "tp_size": 2})  # TensorRT-LLM's name
    assert ours.limits.tensor_parallel_size == theirs.limits.tensor_parallel_size == 2
    assert ours.engine_config().tensor_parallel_size == 2
    with pytest.raises(SettingsError, match="engine_instance_count must be 1 with tensor_parallel_size=2"):
        Settings.from_dict({"tensor_parallel_size": 2, "engine_instance_count": 2})


def test_the_build_refuses_a_split_the_model_cannot_take(random_checkpoint, tmp_path, capsys):
    from build.__main__ import main

    code = main(["-q", "--model", str(random_checkpoint), "--model-repo", str(tmp_path / "repo"),
                 "--artifacts", str(tmp_path / "artifacts"), "--set", "tensor_parallel_size=3"])
    assert code == 2
    assert "tensor_parallel_size=3 does not divide the model's 4 attention heads" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
