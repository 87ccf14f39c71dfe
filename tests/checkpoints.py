"""Tiny random-weight checkpoints for tests, written the way real ones are.

llama, qwen2 and qwen3 come from transformers' own `save_pretrained`; the
original Qwen (model_type "qwen", which transformers does not ship) is made by
renaming a tiny MHA Qwen2's tensors into its layout (c_attn, w1/w2, ...). All
use hidden 64, 2 layers, vocab 512 and initializer_range 0.1 (well separated
logits, so greedy tokens are stable under float rounding).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

VOCAB = 512
HIDDEN = 64

_COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.1,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _save(model, path: str, seed: int, max_shard_size: str | int) -> str:
    """Perturb the weights transformers initialises to constants (norms to 1,
    biases to 0) so that a swapped or dropped tensor shows in the logits."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return path


def write_llama(path: str, *, seed: int = 0, max_shard_size: str | int = "50GB", **overrides) -> str:
    """A tied-embedding GQA llama with llama3 rope scaling (theta 500000, factor 8)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
    }
    kwargs = {**_COMMON, "tie_word_embeddings": True, "rope_parameters": rope, "max_position_embeddings": 512}
    config = LlamaConfig(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(config), path, seed, max_shard_size)


def write_qwen2(path: str, *, seed: int = 0, max_shard_size: str | int = "50GB", **overrides) -> str:
    """A GQA Qwen2 (qkv bias, untied lm_head, default rope)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = {**_COMMON, "max_position_embeddings": 512,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    config = Qwen2Config(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return _save(Qwen2ForCausalLM(config), path, seed, max_shard_size)


def write_qwen3(path: str, *, seed: int = 0, max_shard_size: str | int = "50GB", **overrides) -> str:
    """A GQA Qwen3 with head_dim 32 != hidden / heads (as in Qwen3-0.6B) and linear rope scaling."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kwargs = {**_COMMON, "head_dim": 32, "max_position_embeddings": 512,
              "rope_parameters": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0}}
    config = Qwen3Config(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return _save(Qwen3ForCausalLM(config), path, seed, max_shard_size)


def write_qwen2_mha(path: str, *, seed: int = 0) -> str:
    """A multi-head (no GQA) Qwen2: the source of the original-Qwen checkpoints."""
    return write_qwen2(path, seed=seed, num_key_value_heads=_COMMON["num_attention_heads"])


def convert_qwen2_to_qwen(
    src: str, dst: str, *, seq_length: int = 32, use_logn_attn: bool = True, use_dynamic_ntk: bool = True
) -> str:
    """Rewrite a multi-head Qwen2 checkpoint in the original Qwen's format.

    Within seq_length the result computes exactly what the Qwen2 does
    (qwen-v1.md); beyond it, logn attention and dynamic NTK switch on.
    """
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    heads = hf["num_attention_heads"]
    if hf["num_key_value_heads"] != heads:
        raise ValueError("the original Qwen is multi-head: convert a Qwen2 with num_key_value_heads == heads")
    theta = hf.get("rope_parameters", {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    config = {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "hidden_size": hf["hidden_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "kv_channels": hf["hidden_size"] // heads,
        "intermediate_size": 2 * hf["intermediate_size"],  # Qwen stores twice the MLP width
        "seq_length": seq_length,
        "max_position_embeddings": 8 * seq_length,
        "rotary_emb_base": theta,
        "rotary_pct": 1.0,
        "layer_norm_epsilon": hf["rms_norm_eps"],
        "use_dynamic_ntk": use_dynamic_ntk,
        "use_logn_attn": use_logn_attn,
        "no_bias": True,
        "vocab_size": hf["vocab_size"],
        "tie_word_embeddings": False,
        "scale_attn_weights": True,
        "use_flash_attn": False,
    }
    w = load_file(os.path.join(src, "model.safetensors"))
    out = {"transformer.wte.weight": w["model.embed_tokens.weight"],
           "transformer.ln_f.weight": w["model.norm.weight"],
           "lm_head.weight": w["lm_head.weight"]}
    for i in range(hf["num_hidden_layers"]):
        a, b = f"model.layers.{i}.", f"transformer.h.{i}."
        out[b + "ln_1.weight"] = w[a + "input_layernorm.weight"]
        out[b + "ln_2.weight"] = w[a + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            out[b + f"attn.c_attn.{kind}"] = torch.cat([w[a + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
        out[b + "attn.c_proj.weight"] = w[a + "self_attn.o_proj.weight"]
        out[b + "mlp.w1.weight"] = w[a + "mlp.up_proj.weight"]  # c_proj(w1(x) * silu(w2(x)))
        out[b + "mlp.w2.weight"] = w[a + "mlp.gate_proj.weight"]
        out[b + "mlp.c_proj.weight"] = w[a + "mlp.down_proj.weight"]
    os.makedirs(dst, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return dst
