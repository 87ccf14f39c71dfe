"""Read a local Hugging Face checkpoint folder: config.json into a ModelConfig,
safetensors weights into a DecoderForCausalLM.

Weights are read only from safetensors (memory-mapped, never unpickled). Each
architecture supplies two functions: one normalises its config.json into a
ModelConfig, one names the checkpoint tensors that fill each of our parameters
(several tensors stacked on dim 0 fill a fused parameter such as qkv_proj).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from types import MappingProxyType

import torch
from safetensors import safe_open

from ..attention import AttentionBackend
from ..config import ModelConfig, RopeConfig
from ..errors import CheckpointError, UnsupportedModelError
from .decoder import DecoderForCausalLM
from .layers import TORCH_OPS, LayerOps

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# A folder with config.json and this file (and no safetensors) holds no weights:
# the model is initialised randomly on the device (benchmarks at a real model's
# shapes without writing gigabytes of checkpoint). See write_random_checkpoint.
RANDOM_WEIGHTS_FILE = "random_weights.json"

# Checkpoint tensors that are derived buffers, not weights: skipped when present.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# Our parameter name -> checkpoint tensor names stacked on dim 0 to fill it.
WeightMap = dict[str, list[str]]


# -- config.json ---------------------------------------------------------------


class _ConfigReader:
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


def _read_json(path: str) -> dict:
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


def _parse_rope(cfg: _ConfigReader) -> RopeConfig:
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


def _check_silu(cfg: _ConfigReader, key: str = "hidden_act") -> None:
    act = cfg.get(key, "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{cfg.path}: activation {act!r} is not supported (only silu)")


def _parse_llama_family(cfg: _ConfigReader, arch: str) -> ModelConfig:
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


def _parse_qwen(cfg: _ConfigReader, arch: str) -> ModelConfig:
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

    parse_config: Callable[[_ConfigReader, str], ModelConfig]
    weight_names: Callable[[ModelConfig], WeightMap]


ARCHS: Mapping[str, ArchSpec] = MappingProxyType({
    "llama": ArchSpec(_parse_llama_family, _llama_family_weights),
    "qwen2": ArchSpec(_parse_llama_family, _llama_family_weights),
    "qwen3": ArchSpec(_parse_llama_family, _llama_family_weights),
    "qwen": ArchSpec(_parse_qwen, _qwen_weights),
})
SUPPORTED_ARCHS: tuple[str, ...] = tuple(ARCHS)


def _arch_spec(arch: str, where: str) -> ArchSpec:
    if arch not in ARCHS:
        raise UnsupportedModelError(
            f"{where}: model_type {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})"
        )
    return ARCHS[arch]


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    """Read `path`/config.json. (End ids and other token defaults: qwen_triton/chat/defaults.py.)"""
    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    cfg = _ConfigReader(_read_json(config_path), config_path)
    arch = cfg.required("model_type")
    config = _arch_spec(arch, config_path).parse_config(cfg, arch)
    if config.num_heads % config.num_kv_heads:
        raise CheckpointError(
            f"{config_path}: num_attention_heads {config.num_heads} is not a multiple of "
            f"num_key_value_heads {config.num_kv_heads}"
        )
    return config


# -- safetensors ---------------------------------------------------------------


def _tensor_files(path: str) -> dict[str, str]:
    """Checkpoint tensor name -> the safetensors file holding it."""
    index_path = os.path.join(path, SAFETENSORS_INDEX_FILE)
    single_path = os.path.join(path, SAFETENSORS_FILE)
    if os.path.exists(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' object")
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    if os.path.exists(single_path):
        with _open_safetensors(single_path) as f:
            return dict.fromkeys(f.keys(), single_path)  # safe_open is not iterable
    if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in os.listdir(path)):
        raise CheckpointError(
            f"{path}: only pytorch_model*.bin found; safetensors weights are required "
            "(pickle checkpoints are never loaded; convert them to model.safetensors)"
        )
    raise CheckpointError(f"{path}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE}")


def _open_safetensors(file: str):
    if not os.path.exists(file):
        raise CheckpointError(f"{file}: safetensors file not found")
    try:
        return safe_open(file, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from e


def _listed(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_names(weight_map: WeightMap, files: dict[str, str], path: str) -> None:
    """Every expected tensor present; nothing unexpected beyond derived buffers."""
    wanted = {name for names in weight_map.values() for name in names}
    missing = sorted(wanted - files.keys())
    if missing:
        raise CheckpointError(f"{path}: missing tensors: {_listed(missing)}")
    # A tied checkpoint may still carry lm_head.weight; it is unused.
    unexpected = sorted(
        n for n in files.keys() - wanted if not n.endswith(_IGNORED_SUFFIXES) and n != "lm_head.weight"
    )
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors (wrong model_type or num_hidden_layers?): {_listed(unexpected)}"
        )


def _fill(param: torch.Tensor, name: str, parts: list[tuple[str, torch.Tensor]], path: str) -> None:
    """Copy the stacked checkpoint tensors into one of our parameters (casting dtype)."""
    shapes = [tuple(t.shape) for _, t in parts]
    same_trailing = all(len(s) == param.dim() and s[1:] == tuple(param.shape[1:]) for s in shapes)
    if not same_trailing or sum(s[0] for s in shapes) != param.shape[0]:
        got = ", ".join(f"{n} {list(s)}" for (n, _), s in zip(parts, shapes, strict=True))
        raise CheckpointError(f"{path}: wrong shape for {name}: expected {list(param.shape)}; got {got}")
    offset = 0
    for _, tensor in parts:
        param[offset:offset + tensor.shape[0]].copy_(tensor)
        offset += tensor.shape[0]


@torch.no_grad()
def load_model(
    path: str | os.PathLike,
    config: ModelConfig,
    dtype: torch.dtype,
    device: str | torch.device,
    attn_backend: AttentionBackend,
    ops: LayerOps = TORCH_OPS,
) -> DecoderForCausalLM:
    """Build the model for `config` on `device` in `dtype` and fill it from the
    folder's safetensors (model.safetensors, or shards listed in the index), or
    randomly when the folder is a random-weight checkpoint (RANDOM_WEIGHTS_FILE)."""
    path = os.fspath(path)
    with torch.device("meta"):  # no memory and no random init for weights about to be overwritten
        model = DecoderForCausalLM(config, attn_backend, dtype, ops)
    model.to_empty(device=device)
    model.rotary.reset_parameters()
    random_spec = os.path.join(path, RANDOM_WEIGHTS_FILE)
    if os.path.exists(random_spec) and not _has_safetensors(path):
        spec = _read_json(random_spec)
        _init_random(model, int(spec.get("seed", 0)), float(spec.get("std", 0.02)))
        return model.eval()
    weight_map = _arch_spec(config.arch, path).weight_names(config)
    files = _tensor_files(path)
    _check_names(weight_map, files, path)
    params = dict(model.named_parameters())
    if params.keys() != weight_map.keys():  # a bug in a weight map, not in the checkpoint
        raise AssertionError(f"weight map mismatch: {sorted(params.keys() ^ weight_map.keys())}")

    with ExitStack() as stack:
        handles = {}
        for file in sorted({files[n] for names in weight_map.values() for n in names}):
            handles[file] = stack.enter_context(_open_safetensors(file))
        for ours, names in weight_map.items():
            try:
                parts = [(n, handles[files[n]].get_tensor(n)) for n in names]
            except Exception as e:
                raise CheckpointError(f"{path}: cannot read {names} ({e})") from e
            _fill(params[ours], ours, parts, path)
    return model.eval()


# -- random weights (benchmarks) -------------------------------------------------


def _has_safetensors(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE))


@torch.no_grad()
def _init_random(model: DecoderForCausalLM, seed: int, std: float) -> None:
    """Fill every parameter on its device: norms 1, biases and weights N(0, std)."""
    gen = None
    for name, param in model.named_parameters():
        if gen is None or gen.device != param.device:
            gen = torch.Generator(device=param.device).manual_seed(seed)
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)


def write_random_checkpoint(path: str | os.PathLike, config_json: dict, seed: int = 0,
                            std: float = 0.02) -> str:
    """Write a weightless checkpoint folder: `config_json` as config.json plus
    RANDOM_WEIGHTS_FILE; load_model then initialises the weights randomly."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2)
    with open(os.path.join(path, RANDOM_WEIGHTS_FILE), "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "std": std}, f)
    return path
