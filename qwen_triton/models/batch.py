"""The input of one model forward pass."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionMetadata


@dataclass
class ForwardBatch:
    """Packed tokens of one engine step (T tokens over B sequences).

    input_ids:   int64 [T]
    positions:   int64 [T], 0-based position of each token in its sequence.
    prompt_lens: int64 [T], prompt length of the sequence each token belongs
                 to (the original Qwen's dynamic NTK picks its RoPE base from it).
    attn:        where each token's K/V lives in the paged cache.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    prompt_lens: torch.Tensor
    attn: AttentionMetadata
