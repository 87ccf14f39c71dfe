"""A GGUF file's metadata, read once, and the Hugging Face config files it implies.

Key names are llama.cpp's (`{arch}.block_count`, `tokenizer.ggml.eos_token_id`, ...). Only the
architectures our engine implements are accepted (qwen2, qwen3, llama); anything the engine could
not reproduce exactly (unknown rope scaling, a missing required key) is a GGUFError naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}


class GGUFError(ValueError):
    """A GGUF file the build cannot turn into a checkpoint (the message says why)."""


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


@dataclass(frozen=True)
class GGUFMeta:
    """What the build needs from a GGUF's header."""

    arch: str
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    context_length: int
    vocab_size: int          # rows of token_embd.weight
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool

    @classmethod
    def read(cls, reader) -> GGUFMeta:
        arch = _field(reader, "general.architecture")
        if arch not in ARCHITECTURES:
            raise GGUFError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")

        def need(suffix: str) -> Any:
            value = _field(reader, f"{arch}.{suffix}")
            if value is None:
                raise GGUFError(f"GGUF metadata lacks {arch}.{suffix}")
            return value

        tensors = {t.name: t for t in reader.tensors}
        if "token_embd.weight" not in tensors:
            raise GGUFError("GGUF has no token_embd.weight tensor")
        heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
        tokenizer_model = _field(reader, "tokenizer.ggml.model")
        return cls(
            arch=arch, name=str(_field(reader, "general.name", "")),
            num_layers=int(need("block_count")), hidden_size=hidden,
            intermediate_size=int(need("feed_forward_length")), num_heads=heads,
            num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
            head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            rope_scaling=_rope_scaling(reader, arch, "rope_freqs.weight" in tensors),
            context_length=int(need("context_length")),
            vocab_size=int(tensors["token_embd.weight"].shape[-1]),
            tie_word_embeddings="output.weight" not in tensors,
            bos_token_id=_optional_int(_field(reader, "tokenizer.ggml.bos_token_id")),
            eos_token_id=_optional_int(_field(reader, "tokenizer.ggml.eos_token_id")),
            pad_token_id=_optional_int(_field(reader, "tokenizer.ggml.padding_token_id")),
            # llama.cpp (and transformers) add a BOS to SentencePiece vocabularies that do not say otherwise
            add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", tokenizer_model == "llama")),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _rope_scaling(reader, arch: str, has_rope_freqs: bool) -> dict[str, Any] | None:
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if has_rope_freqs:
        raise GGUFError("GGUF rope_freqs (LLaMA 3.1-style rope scaling) cannot be imported yet; "
                        "build from the original Hugging Face checkpoint instead")
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(_field(reader, f"{arch}.rope.scaling.factor", 1.0))}
    raise GGUFError(f"GGUF rope scaling {kind!r} is not supported (supported: none, linear)")


def hf_config(meta: GGUFMeta, dtype_name: str) -> dict[str, Any]:
    """config.json as transformers writes it for this architecture."""
    rope = {"rope_type": "default", "rope_theta": meta.rope_theta, **(meta.rope_scaling or {})}
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[meta.arch]], "model_type": meta.arch,
        "vocab_size": meta.vocab_size, "hidden_size": meta.hidden_size,
        "intermediate_size": meta.intermediate_size, "num_hidden_layers": meta.num_layers,
        "num_attention_heads": meta.num_heads, "num_key_value_heads": meta.num_kv_heads,
        "head_dim": meta.head_dim, "hidden_act": "silu", "rms_norm_eps": meta.rms_norm_eps,
        "max_position_embeddings": meta.context_length, "rope_parameters": rope,
        "rope_theta": meta.rope_theta, "tie_word_embeddings": meta.tie_word_embeddings,
        "bos_token_id": meta.bos_token_id, "eos_token_id": meta.eos_token_id,
        "pad_token_id": meta.pad_token_id, "dtype": dtype_name,
    }
    if meta.arch == "qwen2":
        config["use_sliding_window"] = False
    else:
        config.update(attention_bias=False, mlp_bias=False)
    return config


def hf_generation_config(meta: GGUFMeta) -> dict[str, Any]:
    """A GGUF carries no sampling defaults: greedy, with the file's own special token ids."""
    config = {"bos_token_id": meta.bos_token_id, "eos_token_id": meta.eos_token_id,
              "pad_token_id": meta.pad_token_id, "do_sample": False}
    return {k: v for k, v in config.items() if v is not None}
