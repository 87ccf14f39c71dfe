"""What each supported architecture's checkpoint looks like: its config.json normalised into a
ModelConfig, and the names of the checkpoint tensors that fill each of our parameters.

Each architecture supplies two functions, registered as an `ArchSpec` in `ARCHS`: one normalises
its config.json into a ModelConfig, one names the checkpoint tensors that fill each of our
parameters (several tensors stacked on dim 0 fill a fused parameter such as qkv_proj). Reading the
tensors is loader.py's. No torch here.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..config import ModelConfig, RopeConfig
from ..errors import CheckpointError, UnsupportedModelError

CONFIG_FILE = "config.json"

# Our parameter name -> checkpoint tensor names stacked on dim 0 to fill it.
WeightMap = dict[str, list[str]]


# -- config.json ---------------------------------------------------------------


class ConfigReader:
    """A config.json dict that names the file in its errors."""

    def __init__(self, raw: dict, path: str):
        self.raw = raw
        self.path = path

    def required(self, key: str):
        value = self.raw.get(key)
        if value is None:
            raise CheckpointError(f"{self.path}: required key {key!r} is missing")
        return value

    def get(self, key: str, default=None):
        value = self.raw.get(key)
        return default if value is None else value


def read_json(path: str) -> dict:
    """A JSON object from a checkpoint file; CheckpointError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _parse_rope(cfg: ConfigReader) -> RopeConfig:
    """RoPE settings. transformers 5 writes everything under `rope_parameters`;
    older checkpoints keep `rope_theta` top-level and any scaling under
    `rope_scaling` (with "type" or "rope_type"). rope_parameters wins over
    rope_scaling, which wins over the top level; theta defaults to 10000."""
    params = dict(cfg.get("rope_scaling", {}))
    params.update(cfg.get("rope_parameters", {}))
    if any(isinstance(v, dict) for v in params.values()):
        raise UnsupportedModelError(f"{cfg.path}: per-layer-type RoPE parameters are not supported")
    theta = float(params.get("rope_theta") or cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise UnsupportedModelError(f"{cfg.path}: partial rotary (factor {partial}) is not supported")

    def need(key: str) -> float:
        if params.get(key) is None:
            raise CheckpointError(f"{cfg.path}: rope type {kind!r} needs the rope parameter {key!r}")
        return float(params[key])

    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, kind="linear", factor=need("factor"))
    if kind == "llama3":
        return RopeConfig(
            theta=theta,
            kind="llama3",
            factor=need("factor"),
            low_freq_factor=need("low_freq_factor"),
            high_freq_factor=need("high_freq_factor"),
            original_max_position=int(
                params.get("original_max_position_embeddings") or cfg.required("max_position_embeddings")
            ),
        )
    raise UnsupportedModelError(
        f"{cfg.path}: rope type {kind!r} is not supported (default, linear and llama3 are)"
    )


def _check_silu(cfg: ConfigReader, key: str = "hidden_act") -> None:
    act = cfg.get(key, "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{cfg.path}: activation {act!r} is not supported (only silu)")


def _parse_llama_family(cfg: ConfigReader, arch: str) -> ModelConfig:
    """llama, qwen2 and qwen3, which share transformers' key names."""
    _check_silu(cfg)
    if cfg.get("use_sliding_window", False):
        raise UnsupportedModelError(f"{cfg.path}: sliding-window attention is not supported")
    hidden = int(cfg.required("hidden_size"))
    heads = int(cfg.required("num_attention_heads"))
    # transformers' defaults where a key is absent or null
    default_head_dim = 128 if arch == "qwen3" else hidden // heads
    attention_bias = bool(cfg.get("attention_bias", False))
    return ModelConfig(
        arch=arch,
        vocab_size=int(cfg.required("vocab_size")),
        hidden_size=hidden,
        num_layers=int(cfg.required("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
        head_dim=int(cfg.get("head_dim", default_head_dim)),
        intermediate_size=int(cfg.required("intermediate_size")),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position=int(cfg.get("max_position_embeddings", 2048 if arch == "llama" else 32768)),
        rope=_parse_rope(cfg),
        qkv_bias=True if arch == "qwen2" else attention_bias,
        o_bias=False if arch == "qwen2" else attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)) if arch == "llama" else False,
        qk_norm=arch == "qwen3",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _parse_qwen(cfg: ConfigReader, arch: str) -> ModelConfig:
    """The original Qwen (QWenLMHeadModel); see /work/shared/reference/qwen-v1.md."""
    rotary_pct = cfg.get("rotary_pct", 1.0)
    if rotary_pct != 1.0:
        raise UnsupportedModelError(f"{cfg.path}: partial rotary (rotary_pct {rotary_pct}) is not supported")
    hidden = int(cfg.required("hidden_size"))
    heads = int(cfg.required("num_attention_heads"))
    seq_length = int(cfg.required("seq_length"))
    has_bias = not cfg.get("no_bias", True)
    return ModelConfig(
        arch=arch,
        vocab_size=int(cfg.required("vocab_size")),
        hidden_size=hidden,
        num_layers=int(cfg.required("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=heads,  # multi-head attention, no grouping
        head_dim=int(cfg.get("kv_channels", hidden // heads)),
        intermediate_size=int(cfg.required("intermediate_size")) // 2,  # config holds twice the MLP width
        rms_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-6)),
        max_position=int(cfg.get("max_position_embeddings", seq_length)),
        rope=RopeConfig(theta=float(cfg.get("rotary_emb_base", 10000.0))),
        qkv_bias=True,  # c_attn always has a bias
        o_bias=has_bias,
        mlp_bias=has_bias,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        seq_length=seq_length,
        logn_attn=bool(cfg.get("use_logn_attn", True)),
        dynamic_ntk=bool(cfg.get("use_dynamic_ntk", True)),
    )


# -- checkpoint tensor names ---------------------------------------------------


def _llama_family_weights(config: ModelConfig) -> WeightMap:
    """transformers' LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM names."""
    names: WeightMap = {
        "embed_tokens.weight": ["model.embed_tokens.weight"],
        "norm.weight": ["model.norm.weight"],
    }
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        qkv = [hf + f"self_attn.{p}_proj" for p in "qkv"]
        names[ours + "input_layernorm.weight"] = [hf + "input_layernorm.weight"]
        names[ours + "post_attention_layernorm.weight"] = [hf + "post_attention_layernorm.weight"]
        names[ours + "self_attn.qkv_proj.weight"] = [p + ".weight" for p in qkv]
        if config.qkv_bias:
            names[ours + "self_attn.qkv_proj.bias"] = [p + ".bias" for p in qkv]
        names[ours + "self_attn.o_proj.weight"] = [hf + "self_attn.o_proj.weight"]
        if config.o_bias:
            names[ours + "self_attn.o_proj.bias"] = [hf + "self_attn.o_proj.bias"]
        if config.qk_norm:
            names[ours + "self_attn.q_norm.weight"] = [hf + "self_attn.q_norm.weight"]
            names[ours + "self_attn.k_norm.weight"] = [hf + "self_attn.k_norm.weight"]
        gate_up = [hf + "mlp.gate_proj", hf + "mlp.up_proj"]
        names[ours + "mlp.gate_up_proj.weight"] = [p + ".weight" for p in gate_up]
        names[ours + "mlp.down_proj.weight"] = [hf + "mlp.down_proj.weight"]
        if config.mlp_bias:
            names[ours + "mlp.gate_up_proj.bias"] = [p + ".bias" for p in gate_up]
            names[ours + "mlp.down_proj.bias"] = [hf + "mlp.down_proj.bias"]
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = ["lm_head.weight"]
    return names


def _qwen_weights(config: ModelConfig) -> WeightMap:
    """The original Qwen's names. Its MLP is c_proj(w1(x) * silu(w2(x))): gate = w2, up = w1."""
    names: WeightMap = {
        "embed_tokens.weight": ["transformer.wte.weight"],
        "norm.weight": ["transformer.ln_f.weight"],
    }
    for i in range(config.num_layers):
        hf, ours = f"transformer.h.{i}.", f"layers.{i}."
        names[ours + "input_layernorm.weight"] = [hf + "ln_1.weight"]
        names[ours + "post_attention_layernorm.weight"] = [hf + "ln_2.weight"]
        names[ours + "self_attn.qkv_proj.weight"] = [hf + "attn.c_attn.weight"]  # q, k, v already stacked
        names[ours + "self_attn.qkv_proj.bias"] = [hf + "attn.c_attn.bias"]
        names[ours + "self_attn.o_proj.weight"] = [hf + "attn.c_proj.weight"]
        names[ours + "mlp.gate_up_proj.weight"] = [hf + "mlp.w2.weight", hf + "mlp.w1.weight"]
        names[ours + "mlp.down_proj.weight"] = [hf + "mlp.c_proj.weight"]
        if config.o_bias:
            names[ours + "self_attn.o_proj.bias"] = [hf + "attn.c_proj.bias"]
        if config.mlp_bias:
            names[ours + "mlp.gate_up_proj.bias"] = [hf + "mlp.w2.bias", hf + "mlp.w1.bias"]
            names[ours + "mlp.down_proj.bias"] = [hf + "mlp.c_proj.bias"]
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = ["lm_head.weight"]
    return names


@dataclass(frozen=True)
class ArchSpec:
    """How to read one architecture: its config.json and its tensor names."""

    parse_config: Callable[[ConfigReader, str], ModelConfig]
    weight_names: Callable[[ModelConfig], WeightMap]


ARCHS: Mapping[str, ArchSpec] = MappingProxyType({
    "llama": ArchSpec(_parse_llama_family, _llama_family_weights),
    "qwen2": ArchSpec(_parse_llama_family, _llama_family_weights),
    "qwen3": ArchSpec(_parse_llama_family, _llama_family_weights),
    "qwen": ArchSpec(_parse_qwen, _qwen_weights),
})
SUPPORTED_ARCHS: tuple[str, ...] = tuple(ARCHS)


def arch_spec(arch: str, where: str) -> ArchSpec:
    if arch not in ARCHS:
        raise UnsupportedModelError(
            f"{where}: model_type {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})"
        )
    return ARCHS[arch]


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    """Read `path`/config.json. (End ids and other token defaults: qwen_triton/chat/defaults.py.)"""
    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    cfg = ConfigReader(read_json(config_path), config_path)
    arch = cfg.required("model_type")
    config = arch_spec(arch, config_path).parse_config(cfg, arch)
    if config.num_heads % config.num_kv_heads:
        raise CheckpointError(
            f"{config_path}: num_attention_heads {config.num_heads} is not a multiple of "
            f"num_key_value_heads {config.num_kv_heads}"
        )
    return config
