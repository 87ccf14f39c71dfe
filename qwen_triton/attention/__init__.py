"""Attention over the paged KV cache: the metadata every backend reads and the
interface every backend implements.

Tokens of all sequences in a step are packed along one axis of length T; B
sequences take part. A KV cache for one layer is a tensor
[2, num_blocks, block_size, num_kv_heads, head_dim] (index 0 keys, 1 values).
"""
from __future__ import annotations

from dataclasses import dataclass
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
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    block_size: int

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
    sequence's cached context (earlier steps and this one)."""

    name: str

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
    """Pick a backend by name; "auto" chooses the best one for the device."""
    from .torch_backend import TorchAttentionBackend

    if name in ("auto", "torch"):
        return TorchAttentionBackend()
    raise ValueError(f"unknown attention backend {name!r}; expected 'auto' or 'torch'")
