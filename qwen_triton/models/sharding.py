"""Tensor parallelism inside the model: which part of each weight one rank holds, and the checks that
say whether a model can be split N ways at all.

A model split over N ranks (Megatron-LM's layout, as vLLM and TensorRT-LLM split it):
  qkv_proj      column-parallel: rank r holds query heads [r H/N, (r+1) H/N) and their KV heads
                (KV heads Hkv/N each when N <= Hkv; when N > Hkv, N/Hkv ranks share and replicate each
                KV head: rank r holds KV head r // (N / Hkv))
  o_proj        row-parallel: the input columns of the rank's query heads; outputs summed (all-reduce)
  gate_up_proj  column-parallel: columns [r I/N, (r+1) I/N) of gate and of up
  down_proj     row-parallel over the same I/N columns; outputs summed
  embed_tokens  vocab-parallel: rows [r V'/N, (r+1) V'/N) of the vocabulary padded to V' (a multiple of
  lm_head       N, padding rows zero); a token outside the rank's rows embeds to zero before the sum;
                each rank's logits columns are gathered (all-gather) and the padding cut off
  norms, rotary, q/k norms: every rank holds them whole
A row-parallel layer's bias is held by rank 0 only (zero elsewhere), so the sum adds it once.

Quantized layers split their stored tensors the same way (quant/formats.py names them): a column-parallel
layer's qweight, scales and zeros by output row; a row-parallel one's qweight and group-wise scales and
zeros by input column (a per-output-channel scale is then whole on every rank); a per-tensor scale [1] is
whole everywhere. GPTQ's act-order cannot be split: its stored input order spans all ranks. w8a8 and fp8
with per-token (dynamic) activation scales quantize a row-parallel layer's input slice by its own absmax on
each rank (as vLLM does), so their numbers differ slightly from one rank's; per-tensor scales give the same.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch

from ..config import ModelConfig
from ..quant.spec import INT4_MODES, QuantSpec


class ShardingError(ValueError):
    """A model that cannot be split tensor_parallel_size ways, with the reason."""


class Communicator(Protocol):
    """The collectives a sharded model and its runner call (qwen_triton.distributed.group.TPGroup implements
    them over torch.distributed: gloo on the CPU, NCCL on GPUs)."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the ranks, in place; returns x."""
        ...

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[M, K] on each rank -> [M, N * K]: the ranks' x side by side, rank order."""
        ...

    def min_int(self, value: int) -> int:
        """The smallest of the ranks' `value`s (the runner's KV pool size)."""
        ...


@dataclass(frozen=True)
class Shard:
    """This process's part of a tensor-parallel model: rank `rank` of `size`; `comm` None when size is 1."""

    rank: int = 0
    size: int = 1
    comm: Communicator | None = None

    @property
    def parallel(self) -> bool:
        return self.size > 1

    # -- local sizes -------------------------------------------------------------------------------------

    def num_kv_heads(self, config: ModelConfig) -> int:
        """KV heads this rank holds (and caches): Hkv / N, or 1 when N > Hkv (replicated)."""
        return max(config.num_kv_heads // self.size, 1)

    def kv_head_start(self, config: ModelConfig) -> int:
        """The first of this rank's KV heads in the checkpoint's order."""
        if config.num_kv_heads >= self.size:
            return self.rank * config.num_kv_heads // self.size
        return self.rank // (self.size // config.num_kv_heads)

    def padded_vocab(self, config: ModelConfig) -> int:
        return -(-config.vocab_size // self.size) * self.size

    def vocab_rows(self, config: ModelConfig) -> int:
        """Rows of embed_tokens / lm_head on each rank."""
        return self.padded_vocab(config) // self.size

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The ModelConfig whose layer sizes are this rank's: heads, KV heads, MLP width and vocabulary
        rows divided; everything else (hidden size, head_dim, RoPE, flags) whole."""
        if not self.parallel:
            return config
        return dataclasses.replace(config, num_heads=config.num_heads // self.size,
                                   num_kv_heads=self.num_kv_heads(config),
                                   intermediate_size=config.intermediate_size // self.size,
                                   vocab_size=self.vocab_rows(config))

    # -- splitting tensors -------------------------------------------------------------------------------

    def split(self, name: str, full: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """This rank's part of the whole tensor `full` of our parameter or buffer `name` (its name in the
        model's state dict: layers.3.self_attn.qkv_proj.scales, embed_tokens.weight, ...)."""
        if not self.parallel:
            return full
        layer, _, kind = name.rpartition(".")
        if layer.endswith(("o_proj", "down_proj")):
            return self._split_row(kind, full)
        if layer.endswith("qkv_proj"):
            q, kv, d = config.q_size, config.kv_size, config.head_dim
            heads_q, heads_kv = config.num_heads // self.size, self.num_kv_heads(config)
            kv0 = self.kv_head_start(config)
            return self._split_rows(full, [(self.rank * heads_q * d, heads_q * d),
                                           (q + kv0 * d, heads_kv * d), (q + kv + kv0 * d, heads_kv * d)],
                                    q + 2 * kv)
        if layer.endswith("gate_up_proj"):
            width = config.intermediate_size
            part = width // self.size
            return self._split_rows(full, [(self.rank * part, part), (width + self.rank * part, part)], 2 * width)
        if layer in ("embed_tokens", "lm_head"):
            return self._split_vocab(full, config)
        return full

    def _split_rows(self, full: torch.Tensor, pieces: list[tuple[int, int]], rows: int) -> torch.Tensor:
        """Rows (start, length) of a column-parallel layer's tensor with `rows` output rows; a tensor of
        another first size (a per-tensor scale [1]) is whole on every rank."""
        if full.dim() == 0 or full.shape[0] != rows:
            return full
        return torch.cat([full[start:start + length] for start, length in pieces]).contiguous()

    def _split_row(self, kind: str, full: torch.Tensor) -> torch.Tensor:
        """A row-parallel layer: its 2-d tensors (weight, qweight [N, K or K/2], group-wise scales and zeros
        [N, K/G]) by column; bias on rank 0 only; per-channel and per-tensor scales whole."""
        if kind == "perm":
            raise ShardingError("GPTQ act-order (desc_act) layers cannot be split across ranks")
        if kind == "bias":
            return full if self.rank == 0 else torch.zeros_like(full)
        if full.dim() != 2:
            return full
        cols = full.shape[1] // self.size
        return full[:, self.rank * cols:(self.rank + 1) * cols].contiguous()

    def _split_vocab(self, full: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """Rows [r V'/N, (r+1) V'/N) of a vocabulary-wide tensor, the rows past the vocabulary zero."""
        if full.dim() == 0 or full.shape[0] != config.vocab_size:
            return full
        rows = self.vocab_rows(config)
        start = self.rank * rows
        out = full.new_zeros((rows, *full.shape[1:]))
        take = full[start:min(start + rows, config.vocab_size)]
        out[:take.shape[0]] = take
        return out


SINGLE = Shard()


def check_shardable(config: ModelConfig, size: int, quant: QuantSpec | None = None) -> None:
    """Raise ShardingError, naming tensor_parallel_size and the model's numbers, unless `config` (with the
    quantization `quant`) can be split `size` ways."""
    if size == 1:
        return
    what = f"tensor_parallel_size={size}"
    heads, kv = config.num_heads, config.num_kv_heads
    if heads % size:
        raise ShardingError(f"{what} does not divide the model's {heads} attention heads")
    if (kv % size) if kv >= size else (size % kv):
        raise ShardingError(f"{what} and the model's {kv} KV heads: one must divide the other "
                            f"(KV heads are split, or replicated when there are fewer than ranks)")
    if config.intermediate_size % size:
        raise ShardingError(f"{what} does not divide the model's MLP width {config.intermediate_size}")
    if quant is None or quant.weights == "none":
        return
    if quant.act_order:
        raise ShardingError(f"{what}: GPTQ act-order (desc_act) checkpoints cannot be split: the stored input "
                            "order of o_proj and down_proj spans all ranks; use one without desc_act, or "
                            "tensor_parallel_size=1")
    if quant.weights in INT4_MODES:
        for layer, width in (("o_proj", config.q_size), ("down_proj", config.intermediate_size)):
            if (width // size) % quant.group_size:
                raise ShardingError(f"{what}: {quant.weights} with group size {quant.group_size} cannot split "
                                    f"{layer}'s {width} input columns into whole groups ({width // size} a rank)")
