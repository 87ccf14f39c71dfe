"""Attention over the paged KV cache: the metadata every backend reads and the
interface every backend implements.

Tokens of all sequences in a step are packed along one axis of length T; B
sequences take part. A KV cache for one layer is a tensor
[2, num_blocks, block_size, num_kv_heads, head_dim] (index 0 keys, 1 values)
in the model's dtype, or a QuantKVCache (int8 / fp8 codes and their scales).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch


class QuantKVCache(NamedTuple):
    """One layer's quantized KV cache: x = code * scale (attention/kv_quant.py has the reference).

    data:   int8 or float8_e4m3fn [2, num_blocks, block_size, Hkv, D], contiguous (0 keys, 1 values).
    scales: float32, contiguous, either
            [2] (calibrated: one K and one V scale for the layer, the model's `kv_scale` buffer), or
            [2, num_blocks, block_size, Hkv] (dynamic: one scale per cached token and KV head,
            absmax over D / qmax, written beside the codes).
    A tuple of tensors, so a CUDA graph captures their addresses like a plain cache's.
    """

    data: torch.Tensor
    scales: torch.Tensor

    @property
    def per_token(self) -> bool:
        """Dynamic scales (one per slot and KV head) rather than one per layer."""
        return self.scales.dim() > 1


# A layer's cache: a plain tensor [2, num_blocks, block_size, Hkv, D] in the model's dtype, or quantized.
KVCache = torch.Tensor | QuantKVCache


@dataclass
class AttentionMetadata:
    """Where each packed token lives, in the sequence and in the KV pool.

    query_start_loc: int32 [B + 1], cumulative count of this step's tokens per sequence.
    seq_lens:        int32 [B], tokens in each sequence's cache after this step (cached + new).
    block_tables:    int32 [B, max_blocks], block ids per sequence, padded with 0.
    slot_mapping:    int64 [T], flat slot (block * block_size + offset) each token's K/V goes to.
    query_lens_cpu / seq_lens_cpu: the same lengths as Python ints, so backends
    need no device-to-host copy to plan their work.
    derived: per-step values a backend computes once and reuses in every layer
    (its own keys; empty when the step starts).

    Slots < 0 in slot_mapping mark padding rows (CUDA graph batches): backends
    that support graphs write nothing for them. graph_query_len set: a captured
    mixed step (see the field).
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    block_size: int
    derived: dict = field(default_factory=dict)
    # a step captured in a CUDA graph (cuda_graphs.PrefillGraphs): every query length is at most this bound and
    # the backend must read only the device tensors (the *_cpu lists describe the capture, not the replay)
    graph_query_len: int | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_cpu, default=0)

    @property
    def is_decode_only(self) -> bool:
        return all(n == 1 for n in self.query_lens_cpu)


class AttentionBackend(Protocol):
    """Writes this step's K/V into the cache, then attends causally over each
    sequence's cached context (earlier steps and this one).

    supports_cuda_graphs: a decode-only step reads only device tensors of the
    metadata (never the *_cpu lists' values) and skips slots < 0, so it can be
    captured once per batch size and replayed.

    A QuantKVCache is written quantized and read dequantized; a prefill of a
    whole sequence (no cached context) may attend over the step's own k/v
    before quantization, as TensorRT-LLM and vLLM do.
    """

    name: str
    supports_cuda_graphs: bool

    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: KVCache,  # [2, num_blocks, block_size, num_kv_heads, head_dim] or QuantKVCache
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        ...


def get_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """Pick a backend by name; "auto" is "triton" on a CUDA device with Triton
    installed, else "torch"."""
    from ..kernels import triton_available
    from .torch_backend import TorchAttentionBackend

    if name == "auto":
        name = "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        from .triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(device)
    raise ValueError(f"unknown attention backend {name!r}; expected 'auto', 'torch' or 'triton'")
