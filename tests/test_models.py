"""The decoder, its loader and the torch attention backend, against transformers
(llama, qwen2, qwen3), against an independent reference of the original Qwen,
and against dense attention. Tiny fp32 checkpoints; a tiny block_size so that
every sequence spans several KV blocks.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field

import checkpoints as ck
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_qwen import QwenReference
from safetensors.torch import load_file, save_file

from qwen_triton.attention import AttentionMetadata
from qwen_triton.attention.torch_backend import TorchAttentionBackend, causal_attention, sdpa_causal_attention
from qwen_triton.config import RopeConfig
from qwen_triton.errors import CheckpointError, UnsupportedModelError
from qwen_triton.models import (
    SUPPORTED_ARCHS,
    DecoderForCausalLM,
    ForwardBatch,
    load_model,
    load_model_config,
)
from qwen_triton.models.decoder import qwen_logn_scale, qwen_ntk_alpha
from qwen_triton.models.layers import compute_inv_freq

BLOCK_SIZE = 4
DECODE_STEPS = 64


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ckpt")
    paths = {
        "llama": ck.write_llama(str(root / "llama")),
        "qwen2": ck.write_qwen2(str(root / "qwen2")),
        "qwen3": ck.write_qwen3(str(root / "qwen3")),
        "qwen2_mha": ck.write_qwen2_mha(str(root / "qwen2_mha"), seed=1),
    }
    # the same weights as the MHA Qwen2; seq_length 128 keeps the HF comparison inside it
    paths["qwen"] = ck.convert_qwen2_to_qwen(paths["qwen2_mha"], str(root / "qwen"), seq_length=128)
    paths["qwen_s32"] = ck.convert_qwen2_to_qwen(paths["qwen2_mha"], str(root / "qwen_s32"), seq_length=32)
    return paths


# The transformers model each of ours is compared with.
HF_SOURCE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen": "qwen2_mha"}


def ours(path: str) -> DecoderForCausalLM:
    return load_model(path, load_model_config(path), torch.float32, "cpu", TorchAttentionBackend())


def hf(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].float()  # [L, vocab]


def random_prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, ck.VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# -- a minimal paged engine ----------------------------------------------------


@dataclass
class Seq:
    tokens: list[int]  # prompt, then generated tokens
    prompt_len: int
    cached: int = 0  # tokens whose K/V are in the cache
    blocks: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # one [vocab] per sampled token

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]


class PagedRunner:
    """Packs chosen tokens of several sequences into one ForwardBatch per step,
    over a paged KV cache whose blocks are handed out in shuffled order."""

    def __init__(self, model: DecoderForCausalLM, block_size: int = BLOCK_SIZE, num_blocks: int = 160):
        cfg = model.config
        self.model, self.block_size = model, block_size
        shape = (2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [torch.zeros(shape) for _ in range(cfg.num_layers)]
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
        self.seqs: dict[str, Seq] = {}

    def add(self, name: str, prompt: list[int]) -> None:
        self.seqs[name] = Seq(list(prompt), len(prompt))

    def batch(self, work: dict[str, int]) -> ForwardBatch:
        """work: sequence -> how many of its not-yet-cached tokens to compute."""
        bs = self.block_size
        ids, positions, prompt_lens, slots, query_lens, seq_lens = [], [], [], [], [], []
        for name, n in work.items():
            s = self.seqs[name]
            while len(s.blocks) * bs < s.cached + n:
                s.blocks.append(self.free.pop())
            for p in range(s.cached, s.cached + n):
                ids.append(s.tokens[p])
                positions.append(p)
                prompt_lens.append(s.prompt_len)
                slots.append(s.blocks[p // bs] * bs + p % bs)
            query_lens.append(n)
            seq_lens.append(s.cached + n)
        width = max(len(self.seqs[name].blocks) for name in work)
        tables = [self.seqs[name].blocks + [0] * (width - len(self.seqs[name].blocks)) for name in work]
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(cu, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            block_size=bs,
        )
        return ForwardBatch(torch.tensor(ids), torch.tensor(positions), torch.tensor(prompt_lens), meta)

    @torch.no_grad()
    def step(self, work: dict[str, int]) -> None:
        """Compute the chosen tokens; a sequence whose tokens are then all cached
        samples one greedy token from its last position."""
        batch = self.batch(work)
        hidden = self.model(batch, self.kv_caches)  # [T, hidden]
        ends = batch.attn.query_start_loc[1:].long() - 1
        logits = self.model.compute_logits(hidden[ends])  # [B, vocab]
        for (name, n), row in zip(work.items(), logits, strict=True):
            s = self.seqs[name]
            s.cached += n
            if s.cached == len(s.tokens):
                s.logits.append(row)
                s.tokens.append(int(row.argmax()))

    def decode(self, steps: int) -> None:
        for _ in range(steps):
            self.step({name: 1 for name in self.seqs})


def check_against(seq: Seq, ref_logits: torch.Tensor) -> None:
    """Our logits close to the reference's at every sampled position, and the
    reference's greedy pick equal to ours at each (so greedy runs agree)."""
    got = torch.stack(seq.logits)
    torch.testing.assert_close(got, ref_logits, atol=1e-4, rtol=0)
    assert ref_logits.argmax(-1).tolist() == seq.generated


def check_against_hf(hf_model, seq: Seq) -> None:
    full = seq.tokens[:-1]  # the last sampled token was never fed back
    check_against(seq, hf_logits(hf_model, full)[seq.prompt_len - 1:])


# -- (1) against transformers ---------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "qwen"])
def test_prefill_and_decode_match_transformers(ckpts, arch):
    model, ref = ours(ckpts[arch]), hf(ckpts[HF_SOURCE[arch]])
    assert model.config.arch == arch
    runner = PagedRunner(model)
    runner.add("a", random_prompt(11, seed=1))
    runner.add("b", random_prompt(6, seed=2))
    runner.step({"a": 11, "b": 6})  # both prompts in one prefill step
    runner.decode(DECODE_STEPS - 1)
    for seq in runner.seqs.values():
        assert len(seq.generated) == DECODE_STEPS
        check_against_hf(ref, seq)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "qwen"])
def test_chunked_prefill_matches_transformers(ckpts, arch):
    """A 23-token prompt in chunks of 7, 9, 7 (not block-aligned) while another
    sequence decodes in the same steps; then both decode together."""
    model, ref = ours(ckpts[arch]), hf(ckpts[HF_SOURCE[arch]])
    runner = PagedRunner(model)
    runner.add("busy", random_prompt(5, seed=3))
    runner.step({"busy": 5})
    runner.add("chunked", random_prompt(23, seed=4))
    for chunk in (7, 9, 7):
        runner.step({"busy": 1, "chunked": chunk})
    runner.decode(8)
    assert len(runner.seqs["chunked"].generated) == 9
    for seq in runner.seqs.values():
        check_against_hf(ref, seq)


# -- (2) the original Qwen past seq_length --------------------------------------


def test_qwen_position_tricks():
    lens = torch.tensor([1, 31, 32, 33, 64, 65, 128, 129, 1000])
    assert qwen_ntk_alpha(lens, 32).tolist() == [1, 1, 1, 3, 3, 7, 7, 15, 63]
    positions = torch.tensor([0, 30, 31, 32, 99])  # 1-based 1, 31, 32, 33, 100
    expect = [1, 1, 1, math.log(33) / math.log(32), math.log(100) / math.log(32)]
    torch.testing.assert_close(qwen_logn_scale(positions, 32), torch.tensor(expect))


def test_qwen_beyond_seq_length_matches_reference(ckpts):
    """seq_length 32: prompts below it (alpha 1, logn switches on while
    decoding), at twice it (alpha 3) and past it (alpha 7), all in one batch."""
    path = ckpts["qwen_s32"]
    reference, runner = QwenReference(path), PagedRunner(ours(path))
    prompts = {"short": random_prompt(20, 5), "double": random_prompt(40, 6), "long": random_prompt(70, 7)}
    for name, prompt in prompts.items():
        runner.add(name, prompt)
    runner.step({name: len(p) for name, p in prompts.items()})
    runner.decode(39)
    for name, prompt in prompts.items():
        seq = runner.seqs[name]
        tokens, logits = reference.greedy(prompt, 40)
        assert seq.generated == tokens, name
        check_against(seq, logits)


def test_qwen_chunked_long_prompt_keeps_prompt_alpha(ckpts):
    """Chunks of a 70-token prompt (the first inside seq_length) all use the
    alpha of the whole prompt; decoding keeps it."""
    path = ckpts["qwen_s32"]
    prompt = random_prompt(70, 7)
    runner = PagedRunner(ours(path))
    runner.add("long", prompt)
    for chunk in (30, 25, 15):
        runner.step({"long": chunk})
    runner.decode(19)
    tokens, logits = QwenReference(path).greedy(prompt, 20)
    assert runner.seqs["long"].generated == tokens
    check_against(runner.seqs["long"], logits)


def test_qwen_tricks_change_the_output_past_seq_length(ckpts):
    """Not vacuous: past seq_length the original Qwen differs from the plain
    Qwen2 it was converted from."""
    prompt = random_prompt(70, 7)
    runner = PagedRunner(ours(ckpts["qwen_s32"]))
    runner.add("long", prompt)
    runner.step({"long": 70})
    plain = hf_logits(hf(ckpts["qwen2_mha"]), prompt)[-1]
    assert (runner.seqs["long"].logits[0] - plain).abs().max() > 1e-2


# -- (3) the loader ------------------------------------------------------------


def write_config(folder, config: dict, generation: dict | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    if generation is not None:
        with open(os.path.join(folder, "generation_config.json"), "w") as f:
            json.dump(generation, f)
    return str(folder)


def config_of(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def test_supported_archs():
    assert set(SUPPORTED_ARCHS) == {"llama", "qwen2", "qwen3", "qwen"}


def test_config_from_transformers5_checkpoints(ckpts):
    llama = load_model_config(ckpts["llama"])
    assert llama.rope == RopeConfig(theta=500000.0, kind="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position=64)
    assert llama.tie_word_embeddings
    qwen3 = load_model_config(ckpts["qwen3"])
    assert (qwen3.head_dim, qwen3.q_size, qwen3.qk_norm, qwen3.qkv_bias) == (32, 128, True, False)
    assert qwen3.rope == RopeConfig(theta=1000000.0, kind="linear", factor=2.0)
    qwen2 = load_model_config(ckpts["qwen2"])
    assert (qwen2.num_kv_heads, qwen2.qkv_bias, qwen2.o_bias, qwen2.head_dim) == (2, True, False, 16)
    qwen = load_model_config(ckpts["qwen_s32"])
    assert (qwen.arch, qwen.intermediate_size, qwen.num_kv_heads, qwen.head_dim) == ("qwen", 128, 4, 16)
    assert (qwen.seq_length, qwen.logn_attn, qwen.dynamic_ntk, qwen.qkv_bias) == (32, True, True, True)


def test_config_older_layouts(tmp_path):
    """Real older checkpoints: rope_theta top-level, scaling under rope_scaling."""
    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 128, "vocab_size": 512, "eos_token_id": 151645}
    llama31 = dict(base, model_type="llama", rope_theta=500000.0, max_position_embeddings=131072,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg = load_model_config(write_config(tmp_path / "l", llama31))
    assert cfg.rope == RopeConfig(theta=500000.0, kind="llama3", factor=8.0, original_max_position=8192)
    qwen25 = dict(base, model_type="qwen2", rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True)
    cfg = load_model_config(write_config(tmp_path / "q", qwen25, {"eos_token_id": [151645, 151643]}))
    assert cfg.rope == RopeConfig(theta=1000000.0) and cfg.tie_word_embeddings
    legacy = dict(base, model_type="llama", rope_scaling={"type": "linear", "factor": 4.0})
    cfg = load_model_config(write_config(tmp_path / "x", legacy))
    assert cfg.rope == RopeConfig(kind="linear", factor=4.0)


def test_inv_freq_matches_transformers(ckpts):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for arch in ("llama", "qwen3"):
        hf_config = AutoConfig.from_pretrained(ckpts[arch])
        expect, _ = ROPE_INIT_FUNCTIONS[hf_config.rope_parameters["rope_type"]](hf_config, "cpu")
        cfg = load_model_config(ckpts[arch])
        assert torch.equal(compute_inv_freq(cfg.rope, cfg.head_dim), expect), arch


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"model_type": "gpt2"}, UnsupportedModelError, ["gpt2"]),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, UnsupportedModelError,
         ["yarn"]),
        ({"hidden_act": "gelu"}, UnsupportedModelError, ["gelu"]),
        ({"hidden_size": None}, CheckpointError, ["hidden_size", "config.json"]),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, CheckpointError, ["factor"]),
        ({"model_type": None}, CheckpointError, ["model_type", "config.json"]),
    ],
)
def test_config_errors(ckpts, tmp_path, change, error, words):
    config = {k: v for k, v in {**config_of(ckpts["qwen2"]), **change}.items() if v is not None}
    with pytest.raises(error) as info:
        load_model_config(write_config(tmp_path, config))
    assert all(w in str(info.value) for w in words), str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_model_config(tmp_path)


def copy_with_tensors(src: str, dst, edit) -> str:
    """A copy of the checkpoint `src` whose tensors went through edit(dict)."""
    os.makedirs(dst)
    shutil.copy(os.path.join(src, "config.json"), dst)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


def load_error(path: str) -> str:
    with pytest.raises(CheckpointError) as info:
        ours(path)
    return str(info.value)


def test_pytorch_bin_only_is_refused(ckpts, tmp_path):
    shutil.copy(os.path.join(ckpts["qwen2"], "config.json"), tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    assert "safetensors" in load_error(str(tmp_path))


def test_missing_tensor(ckpts, tmp_path):
    name = "model.layers.1.self_attn.k_proj.bias"
    path = copy_with_tensors(ckpts["qwen2"], tmp_path / "c", lambda t: t.pop(name))
    assert name in load_error(path)


def test_wrong_shape(ckpts, tmp_path):
    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-1].clone()

    message = load_error(copy_with_tensors(ckpts["qwen2"], tmp_path / "c", shrink))
    assert "model.layers.0.mlp.up_proj.weight" in message and "[127, 64]" in message


def test_unexpected_tensor_but_inv_freq_ignored(ckpts, tmp_path):
    def extras(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    ours(copy_with_tensors(ckpts["qwen2"], tmp_path / "ok", extras))  # loads
    name = "model.layers.2.mlp.down_proj.weight"  # a third layer in a 2-layer config
    bad = copy_with_tensors(ckpts["qwen2"], tmp_path / "bad", lambda t: t.update({name: torch.ones(1)}))
    message = load_error(bad)
    assert name in message


def test_corrupt_or_missing_files(ckpts, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(os.path.join(ckpts["qwen2"], "config.json"), corrupt)
    with open(os.path.join(ckpts["qwen2"], "model.safetensors"), "rb") as f:
        (corrupt / "model.safetensors").write_bytes(f.read(100))  # a truncated file
    assert "model.safetensors" in load_error(str(corrupt))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(ckpts["qwen2"], "config.json"), empty)
    assert "model.safetensors" in load_error(str(empty))


def test_sharded_checkpoint_loads(ckpts, tmp_path):
    path = ck.write_qwen2(str(tmp_path / "sharded"), max_shard_size="100KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    shards = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert len(shards) > 2
    whole, sharded = ours(ckpts["qwen2"]).state_dict(), ours(path).state_dict()
    assert whole.keys() == sharded.keys()
    assert all(torch.equal(whole[k], sharded[k]) for k in whole)
    os.remove(os.path.join(path, max(shards)))
    assert max(shards) in load_error(path)


def test_bfloat16_model_runs_close_to_float32(ckpts):
    path, prompt = ckpts["qwen2"], random_prompt(9, seed=1)
    model = load_model(path, load_model_config(path), torch.bfloat16, "cpu", TorchAttentionBackend())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rotary.inv_freq.dtype == torch.float32
    first_logits = []
    for m in (model, ours(path)):
        runner = PagedRunner(m)
        runner.kv_caches = [c.to(m.embed_tokens.weight.dtype) for c in runner.kv_caches]
        runner.add("a", prompt)
        runner.step({"a": len(prompt)})
        first_logits.append(runner.seqs["a"].logits[0])
    assert first_logits[0].dtype == torch.float32
    torch.testing.assert_close(first_logits[0], first_logits[1], atol=0.1, rtol=0)


# -- (4) the torch attention backend -------------------------------------------


def dense_causal_attention(q, k, v, scale):
    """[S, H, D] queries over [S, Hkv, D] keys/values, every position, fp64."""
    seq_len, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    # expand kv heads the way transformers' repeat_kv does
    k = k[:, :, None].expand(seq_len, num_kv_heads, group, head_dim).reshape(seq_len, num_heads, head_dim)
    v = v[:, :, None].expand(seq_len, num_kv_heads, group, head_dim).reshape(seq_len, num_heads, head_dim)
    scores = (q.double().transpose(0, 1) @ k.double().permute(1, 2, 0)) * scale  # [H, S, S]
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    return (probs @ v.double().transpose(0, 1)).transpose(0, 1)  # [S, H, D]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    num_kv_heads=st.sampled_from([1, 2, 3]),
    group=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([4, 8, 32]),
    block_size=st.sampled_from([1, 3, 4, 16]),
    lens=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_torch_backend_matches_dense_attention(num_kv_heads, group, head_dim, block_size, lens, seed):
    """Each sequence: `cached` tokens already in the cache from earlier steps,
    `new` tokens (1 = decode, more = prefill chunk) computed in this step."""
    gen = torch.Generator().manual_seed(seed)
    num_heads = num_kv_heads * group
    num_blocks = sum(-(-(n + c) // block_size) for n, c in lens) + 2
    cache = torch.zeros(2, num_blocks, block_size, num_kv_heads, head_dim)
    flat = cache.view(2, -1, num_kv_heads, head_dim)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    qs, ks, vs, slots, tables, expect = [], [], [], [], [], []
    for new, cached in lens:
        total = new + cached
        q = torch.randn(total, num_heads, head_dim, generator=gen)
        k = torch.randn(total, num_kv_heads, head_dim, generator=gen)
        v = torch.randn(total, num_kv_heads, head_dim, generator=gen)
        blocks = [free.pop() for _ in range(-(-total // block_size))]
        positions = range(total)
        seq_slots = torch.tensor([blocks[p // block_size] * block_size + p % block_size for p in positions])
        flat[0, seq_slots[:cached]], flat[1, seq_slots[:cached]] = k[:cached], v[:cached]  # earlier steps
        qs.append(q[cached:]), ks.append(k[cached:]), vs.append(v[cached:]), slots.append(seq_slots[cached:])
        tables.append(blocks)
        expect.append(dense_causal_attention(q, k, v, head_dim ** -0.5)[cached:])
    width = max(map(len, tables))
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0] + [sum(n for n, _ in lens[:i + 1]) for i in range(len(lens))],
                                     dtype=torch.int32),
        seq_lens=torch.tensor([n + c for n, c in lens], dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.cat(slots),
        query_lens_cpu=[n for n, _ in lens],
        seq_lens_cpu=[n + c for n, c in lens],
        block_size=block_size,
    )
    out = TorchAttentionBackend().forward(torch.cat(qs), torch.cat(ks), torch.cat(vs), cache, meta,
                                          head_dim ** -0.5)
    torch.testing.assert_close(out.double(), torch.cat(expect), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat[0, meta.slot_mapping], torch.cat(ks))  # this step's K/V stored
    torch.testing.assert_close(flat[1, meta.slot_mapping], torch.cat(vs))


@pytest.mark.parametrize("num_q, seq_len", [(1, 1), (1, 37), (9, 9), (5, 23)])
def test_sdpa_attention_equals_the_dense_reference(num_q, seq_len):
    """The backend's fused path against `causal_attention`: decode, a whole prompt, a chunk."""
    gen = torch.Generator().manual_seed(num_q * 100 + seq_len)
    q = torch.randn(num_q, 6, 16, generator=gen)
    k, v = torch.randn(2, seq_len, 2, 16, generator=gen)
    torch.testing.assert_close(sdpa_causal_attention(q, k, v, 0.25), causal_attention(q, k, v, 0.25),
                               atol=1e-5, rtol=1e-5)
