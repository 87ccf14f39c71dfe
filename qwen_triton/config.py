"""Typed configuration: the model's architecture and the engine's limits."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


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


# How the build (build/settings_schema.py) treats an EngineConfig field, in its metadata's "build" key:
SETTING = "setting"  # a build setting of the same name, type and default
UNLESS_SET = "unless_set"  # a build setting defaulting to None, which leaves EngineConfig's own default
DERIVED = "derived"  # not a setting: the build computes it from other settings

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
KERNEL_CHOICES = ("auto", "torch", "triton")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
KV_CACHE_SCALES = ("dynamic", "calibrated")


def setting(default: Any, help: str, *, trtllm: str | None = None, trtllm_param: str | None = None,
            alias: str | None = None, build: str = SETTING, **rules: Any) -> Any:
    """An EngineConfig field and its one description, read by EngineConfig's own checks and by the build.

    help: one line for `python -m build --list-settings`. trtllm: where the TensorRT-LLM build takes the
    same setting (None: ours only, ignored with engine=tensorrtllm); trtllm_param: its name when it is a
    parameter of upstream's tensorrt_llm model, accepted as a build settings key too; alias: another name
    the build accepts for it (TensorRT-LLM's, when it is no model parameter). rules: min, max, gt
    (bounds), choices, pattern (a compiled regex, with pattern_help), checked by `check_rules`."""
    return field(default=default, metadata={"help": help, "trtllm": trtllm, "trtllm_param": trtllm_param,
                                            "alias": alias, "build": build, **rules})


def check_rules(name: str, value: Any, rules: Mapping[str, Any]) -> str | None:
    """What is wrong with `value` under a field's `rules` (its metadata), naming it `name`; None if nothing.
    None values pass: whether a field may be None is its type's business."""
    if value is None:
        return None
    if "choices" in rules and value not in rules["choices"]:
        return f"{name} must be one of {', '.join(map(str, rules['choices']))}; got {value!r}"
    if "pattern" in rules and not (isinstance(value, str) and rules["pattern"].fullmatch(value)):
        return f"{name}: {value!r} is not valid ({rules['pattern_help']})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if "min" in rules and value < rules["min"]:
        return f"{name} must be >= {rules['min']}, got {value!r}"
    if "max" in rules and value > rules["max"]:
        return f"{name} must be <= {rules['max']}, got {value!r}"
    if "gt" in rules and not value > rules["gt"]:
        return f"{name} must be > {rules['gt']}, got {value!r}"
    return None


@dataclass(frozen=True)
class EngineConfig:
    """Limits and resources of one engine instance.

    Each field's metadata (`setting`) holds its help text, its bounds and its TensorRT-LLM
    counterpart: the checks below and the build's settings (build/settings_schema.py) both read it.

    num_kv_blocks None sizes the KV pool: on a GPU, kv_cache_memory_fraction of the device memory
    left free after loading the weights and setting aside the peak of a warm-up step of
    max_num_batched_tokens tokens; on the CPU, enough for max_num_seqs full-length sequences, capped
    by kv_cache_max_bytes. max_model_len None: the model's own context.

    GPU switches, each a separate step over the plain model: attention_backend "torch" (the
    reference) or "triton" (flash prefill, Triton paged decode); layer_kernels "torch" or "triton"
    (fused RMSNorm + residual, rotary, SiLU-and-multiply); enforce_eager turns off the CUDA graphs
    that otherwise replay decode steps of up to cuda_graph_max_batch sequences (bucketed batch
    sizes). "auto" picks Triton on a CUDA device.

    kv_cache_dtype int8 / fp8 stores the KV cache as 1-byte codes with float32 scales
    (attention/kv_quant.py): kv_cache_scales "dynamic" computes one per token and KV
    head as it is written, "calibrated" takes one K and one V scale per layer from a
    checkpoint that carries them (the engine refuses to start without them).

    tensor_parallel_size N > 1 splits the model over N processes, one per GPU (qwen_triton/distributed):
    the engine's process is rank 0 and starts the others; the KV pool is per rank (its KV heads).
    """

    max_num_seqs: int = setting(64, "sequences running at once", trtllm="trtllm-build --max_batch_size", min=1)
    max_num_batched_tokens: int = setting(
        2048, "tokens computed in one step; prefill is chunked to fit", trtllm="trtllm-build --max_num_tokens", min=1)
    block_size: int = setting(16, "tokens per KV-cache block", trtllm="trtllm-build --tokens_per_block", min=1)
    num_kv_blocks: int | None = setting(
        None, "KV pool size in blocks; None sizes it from kv_cache_memory_fraction",
        trtllm="max_tokens_in_paged_kv_cache = num_kv_blocks * block_size", min=1)
    kv_cache_memory_fraction: float = setting(
        0.9, "share of free GPU memory for the KV cache when num_kv_blocks is None",
        trtllm="kv_cache_free_gpu_mem_fraction", trtllm_param="kv_cache_free_gpu_mem_fraction", gt=0.0, max=1.0)
    kv_cache_max_bytes: int = setting(
        4 << 30, "cap on the CPU's KV pool in bytes when num_kv_blocks is None",
        build=UNLESS_SET, min=1)
    kv_cache_dtype: str = setting(
        "auto", "KV cache element type: auto (the model's dtype), int8 or fp8 (float8 e4m3); int8/fp8 hold "
                "about twice the tokens in the same memory",
        trtllm="quantize.py --kv_cache_dtype int8|fp8 (convert_checkpoint.py --int8_kv_cache)",
        choices=KV_CACHE_DTYPES)
    kv_cache_scales: str = setting(
        "dynamic", "scales of an int8/fp8 KV cache: dynamic (one per token and KV head, computed as it is "
                   "written; any checkpoint) or calibrated (one K and one V scale per layer from the build)",
        trtllm="calibrated only: quantize.py's kv_cache_scaling_factor per layer", choices=KV_CACHE_SCALES)
    enable_prefix_caching: bool = setting(
        True, "reuse the KV blocks of prompt prefixes computed before (chat history, shared system prompts)",
        trtllm="enable_kv_cache_reuse (with trtllm-build --use_paged_context_fmha enable)",
        trtllm_param="enable_kv_cache_reuse")
    max_model_len: int | None = setting(
        None, "prompt plus output tokens per sequence; None: the model's own context",
        trtllm="trtllm-build --max_seq_len", build=DERIVED, min=1)
    dtype: str = setting("auto", "weights/activations dtype; auto: bf16 on GPU, fp32 on CPU",
                         trtllm="convert_checkpoint.py --dtype", choices=("auto", "float32", "bfloat16", "float16"))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", pattern=DEVICE_PATTERN,
                          pattern_help="auto, cpu, cuda or cuda:N")
    tensor_parallel_size: int = setting(
        1, "GPUs one engine is split across (heads, MLP and vocabulary sharded; one process per GPU, started "
           "by the engine; on the CPU one process per rank over gloo); device cuda:k uses cuda:k .. k+N-1",
        trtllm="convert_checkpoint.py --tp_size (serve with one MPI rank per GPU)", alias="tp_size", min=1)
    attention_backend: str = setting("auto", "attention kernels; auto picks triton on a CUDA device",
                                     choices=KERNEL_CHOICES)
    layer_kernels: str = setting("auto", "fused RMSNorm/rotary/SiLU kernels; auto picks triton on CUDA",
                                 choices=KERNEL_CHOICES)
    enforce_eager: bool = setting(False, "no CUDA graphs for decode steps")
    async_scheduling: str = setting(
        "auto", "schedule and launch the next step while the device runs the current one (one step of "
                "lookahead): auto on a GPU (on the CPU nothing overlaps: each token would wait for the next "
                "step), on, off; steps run one at a time while a request with penalties, bad words, a grammar "
                "or returned logits is live, and under tensor parallelism", choices=("auto", "on", "off"))
    cuda_graph_max_batch: int = setting(256, "largest decode batch replayed as a CUDA graph", min=1)
    cuda_graph_max_prefill_tokens: int = setting(
        512, "largest step with prompt tokens (of up to 8 sequences) replayed as a CUDA graph; 0: such steps run "
             "eagerly", min=0)
    # 256 MiB is 441 tokens of a Qwen vocabulary (151,936)
    max_logits_bytes: int = setting(
        256 << 20, "bytes of context or generation logits (float32, vocab wide per token) one request may ask for",
        min=1)

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = check_rules(f"EngineConfig.{f.name}", getattr(self, f.name), f.metadata)
            if problem:
                raise ValueError(problem)
