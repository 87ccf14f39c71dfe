"""Typed configuration: the model's architecture and the engine's limits."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings. `kind` is "default", "linear" or "llama3"."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    # llama3 only
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """One normalised description of every supported decoder architecture.

    `arch` is the checkpoint's model_type ("llama", "qwen2", "qwen3", "qwen").
    The original Qwen adds `logn_attn` and `dynamic_ntk`, both keyed on
    `seq_length` (its training context).
    """

    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_position: int
    rope: RopeConfig = RopeConfig()
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    # original Qwen only
    seq_length: int = 0
    logn_attn: bool = False
    dynamic_ntk: bool = False

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class EngineConfig:
    """Limits and resources of one engine instance.

    max_num_seqs: sequences running at once; max_num_batched_tokens: tokens
    computed in one step (prefill is chunked to fit it); block_size: tokens
    per KV block; num_kv_blocks: KV pool size (None: on a GPU,
    kv_cache_memory_fraction of the device memory left free after loading the
    weights and setting aside the peak of a warm-up step of
    max_num_batched_tokens tokens; on the CPU, enough for max_num_seqs
    full-length sequences, capped by kv_cache_max_bytes). max_model_len:
    prompt plus output tokens per sequence (None: the model's own context).

    GPU switches, each a separate step over the plain model:
    attention_backend "torch" (the reference) or "triton" (flash prefill,
    Triton paged decode); layer_kernels "torch" or "triton" (fused RMSNorm +
    residual, rotary, SiLU-and-multiply); enforce_eager turns off the CUDA
    graphs that otherwise replay decode steps of up to cuda_graph_max_batch
    sequences (bucketed batch sizes). "auto" picks Triton on a CUDA device.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_fraction: float = 0.9
    kv_cache_max_bytes: int = 4 << 30
    max_model_len: int | None = None
    dtype: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16", "float16"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    attention_backend: str = "auto"  # "auto", "torch", "triton"
    layer_kernels: str = "auto"  # "auto", "torch", "triton"
    enforce_eager: bool = False
    cuda_graph_max_batch: int = 256
    # bytes of context or generation logits one request may ask for (float32, vocab wide per token):
    # 256 MiB is 441 tokens of a Qwen vocabulary (151,936)
    max_logits_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "cuda_graph_max_batch",
                     "max_logits_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError("EngineConfig.num_kv_blocks must be >= 1")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError("EngineConfig.kv_cache_memory_fraction must be in (0, 1]")
