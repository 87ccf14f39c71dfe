"""Attention over the paged KV cache: the metadata every backend reads and the
interface every backend implements.

Tokens of all sequences in a step are packed along one axis of length T; B
sequences take part. A KV cache for one layer is a tensor
[2, num_blocks, block_size, num_kv_heads, head_dim] (index 0 keys, 1 values).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


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
    that support graphs write nothing for them.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    block_size: int
    derived: dict = field(default_factory=dict)

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
    """

    name: str
    supports_cuda_graphs: bool

    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
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
