"""One decoder-only transformer for every supported architecture.

llama, qwen2 and qwen3 differ only in flags of ModelConfig (qkv bias, q/k norm,
rope scaling); the original Qwen ("qwen") adds two position tricks that only
switch on past its training context `seq_length`:
  - logn attention: queries at 1-based position i > seq_length are scaled by
    log(i) / log(seq_length);
  - dynamic NTK: each sequence's RoPE base is theta * alpha ** (d / (d - 2)),
    alpha chosen from its prompt length and kept for its whole generation.

Weights are fused the usual serving way: one qkv_proj (q, k, v stacked on the
output dim) and one gate_up_proj (gate then up) per layer.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..attention import AttentionBackend, AttentionMetadata, KVCache
from ..config import ModelConfig
from ..quant.linear import QuantLinear, make_linear
from ..quant.spec import QuantSpec, lm_head_spec
from .batch import ForwardBatch
from .layers import TORCH_OPS, LayerOps, RMSNorm, RotaryEmbedding
from .sharding import SINGLE, Communicator, Shard

# -- the original Qwen's position tricks ----------------------------------------


def qwen_ntk_alpha(prompt_lens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """alpha = max(2 ** ceil(log2(L / seq_length) + 1) - 1, 1) per token: float64 [T].

    prompt_lens: int [T], the prompt length L of each token's sequence.
    1 up to seq_length, 3 up to twice it, 7 up to four times, ...
    """
    ratio = prompt_lens.double().clamp_min(1) / seq_length
    alpha = torch.exp2(torch.ceil(torch.log2(ratio) + 1)) - 1
    return alpha.clamp_min(1)


def qwen_logn_scale(positions: torch.Tensor, seq_length: int) -> torch.Tensor:
    """log(i) / log(seq_length) for 1-based positions i > seq_length, else 1: float32 [T]."""
    i = positions.double() + 1
    scale = torch.where(i > seq_length, torch.log(i) / math.log(seq_length), torch.ones_like(i))
    return scale.float()


# -- layers --------------------------------------------------------------------


def project(ops: LayerOps, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for a projection: an nn.Linear through ops.linear (GEMV kernels for a few rows on the GPU),
    a quantized layer through its own forward. x [T, K] -> [T, N]."""
    # the module's own call where it has hooks (calibration observes its inputs through them)
    if isinstance(layer, QuantLinear) or layer._forward_hooks or layer._forward_pre_hooks:
        return layer(x)
    return ops.linear(x, layer.weight, layer.bias)


class Attention(nn.Module):
    """qkv projection, optional per-head q/k RMSNorm, rotary, paged attention, output projection."""

    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend, dtype=None,
                 ops: LayerOps = TORCH_OPS, quant: QuantSpec | None = None, comm: Communicator | None = None):
        super().__init__()
        self.ops = ops
        self.comm = comm  # tensor parallel: config holds this rank's heads; o_proj's outputs are summed
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.split_sizes = [config.q_size, config.kv_size, config.kv_size]
        self.scale = config.head_dim ** -0.5
        self.attn_backend = attn_backend
        hidden = config.hidden_size
        self.qkv_proj = make_linear(hidden, sum(self.split_sizes), config.qkv_bias, dtype, quant)
        self.o_proj = make_linear(config.q_size, hidden, config.o_bias, dtype, quant)
        if config.qk_norm:  # qwen3: RMSNorm over each head's vector, before rotary
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, ops)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, ops)
        else:
            self.q_norm = self.k_norm = None
        # Calibrated KV-cache scales (EngineConfig.kv_cache_scales "calibrated"): float32 [2], the K and V
        # dequantization multipliers of this layer's int8/fp8 cache (absmax / qmax). The loader fills it
        # from the checkpoint or leaves NaN (none there); not in the state dict, read only by the runner.
        self.register_buffer("kv_scale", torch.full((2,), float("nan"), dtype=torch.float32), persistent=False)

    def reset_kv_scale(self) -> None:
        """NaN (no calibrated scales): what the loader sets after `to_empty`, before any checkpoint scales."""
        self.kv_scale.fill_(float("nan"))

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        cos: torch.Tensor,  # float32 [T, head_dim]
        sin: torch.Tensor,  # float32 [T, head_dim]
        q_scale: torch.Tensor | None,  # float32 [T] (logn attention) or None
        kv_cache: KVCache,  # [2, num_blocks, block_size, Hkv, D] or a QuantKVCache
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        num_tokens = x.shape[0]
        q, k, v = project(self.ops, self.qkv_proj, x).split(self.split_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.ops.rotary(q, k, cos, sin)  # may rotate in place (views into the qkv output)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)[:, None, None]
        out = self.attn_backend.forward(q, k, v, kv_cache, meta, self.scale)  # [T, H, D]
        # [T, hidden]: this rank's heads' share when parallel
        out = project(self.ops, self.o_proj, out.reshape(num_tokens, -1))
        return out if self.comm is None else self.comm.all_reduce(out)


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one projection."""

    def __init__(self, config: ModelConfig, dtype=None, ops: LayerOps = TORCH_OPS, quant: QuantSpec | None = None,
                 comm: Communicator | None = None):
        super().__init__()
        self.ops = ops
        self.comm = comm  # tensor parallel: config holds this rank's columns; down_proj's outputs are summed
        hidden, width, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_up_proj = make_linear(hidden, 2 * width, bias, dtype, quant)
        self.down_proj = make_linear(width, hidden, bias, dtype, quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, hidden]
        out = project(self.ops, self.down_proj, self.ops.silu_and_mul(project(self.ops, self.gate_up_proj, x)))
        return out if self.comm is None else self.comm.all_reduce(out)


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h)).

    The residual stream travels beside the hidden state so that each residual
    add is fused into the following RMSNorm.
    """

    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend, dtype=None,
                 ops: LayerOps = TORCH_OPS, quant: QuantSpec | None = None, comm: Communicator | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, ops)
        self.self_attn = Attention(config, attn_backend, dtype, ops, quant, comm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, ops)
        self.mlp = MLP(config, dtype, ops, quant, comm)

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden], the previous layer's output (or embeddings)
        residual: torch.Tensor | None,  # [T, hidden], the stream x still has to be added to
        cos: torch.Tensor,
        sin: torch.Tensor,
        q_scale: torch.Tensor | None,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, q_scale, kv_cache, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# -- the model -----------------------------------------------------------------


class DecoderForCausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head of any supported arch.

    Parameter names (what the loader fills): embed_tokens.weight,
    layers.{i}.input_layernorm.weight, layers.{i}.self_attn.qkv_proj.{weight,bias},
    layers.{i}.self_attn.{q_norm,k_norm}.weight, layers.{i}.self_attn.o_proj.weight,
    layers.{i}.post_attention_layernorm.weight, layers.{i}.mlp.gate_up_proj.weight,
    layers.{i}.mlp.down_proj.weight, norm.weight, lm_head.weight (absent when
    tie_word_embeddings: the logits then reuse embed_tokens.weight).
    With `quant` (a quantized checkpoint's QuantSpec) the qkv, o, gate_up and down projections are
    qwen_triton.quant.linear layers holding their stored tensors (qweight, scales, ...) instead of .weight;
    embeddings and norms stay in `dtype`, and lm_head too unless quant.lm_head (int8, untied heads only).

    With a `shard` of size N > 1 (sharding.py) the layers hold this rank's part (heads, MLP columns,
    vocabulary rows) and call shard.comm's collectives: the sums of o_proj / down_proj and of the
    embedding lookup, and the gather of the logits. `config` stays the whole model's.
    """

    def __init__(self, config: ModelConfig, attn_backend: AttentionBackend, dtype: torch.dtype | None = None,
                 ops: LayerOps = TORCH_OPS, quant: QuantSpec | None = None, shard: Shard = SINGLE):
        super().__init__()
        self.config = config
        self.quant = quant
        self.shard = shard
        self.ops = ops
        self.comm = shard.comm if shard.parallel else None
        local = shard.local_config(config)
        self.vocab_start = shard.rank * local.vocab_size  # this rank's first vocabulary row
        self.embed_tokens = nn.Embedding(local.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(local, attn_backend, dtype, ops, quant, self.comm) for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, ops)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = make_linear(config.hidden_size, local.vocab_size, False, dtype, lm_head_spec(quant))

    def forward(self, batch: ForwardBatch, kv_caches: list[torch.Tensor]) -> torch.Tensor:
        """Run the T packed tokens of one step; returns final-normed hidden states [T, hidden].

        kv_caches: one [2, num_blocks, block_size, Hkv, D] tensor per layer,
        written at batch.attn.slot_mapping and read through the block tables.
        """
        cos, sin = self.rotary(batch.positions, self._rope_base_scale(batch))  # [T, D] each
        q_scale = qwen_logn_scale(batch.positions, self.config.seq_length) if self.config.logn_attn else None
        x, residual = self._embed(batch.input_ids), None  # [T, hidden]
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, cos, sin, q_scale, kv_cache, batch.attn)
        x, _ = self.norm(x, residual)
        return x

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """int64 [T] -> [T, hidden]. Vocab-parallel: each rank looks up the ids in its rows, zero for the
        others, and the sum over ranks (exact: one term is non-zero) gives every rank the embeddings."""
        if self.comm is None:
            return self.embed_tokens(ids)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.embed_tokens.num_embeddings)  # [T]
        x = self.embed_tokens(local.masked_fill(outside, 0)).masked_fill(outside[:, None], 0)
        return self.comm.all_reduce(x)

    def _rope_base_scale(self, batch: ForwardBatch) -> torch.Tensor | None:
        """Per-token RoPE base multiplier alpha ** (d / (d - 2)) under dynamic NTK, else None."""
        if not self.config.dynamic_ntk:
            return None
        d = self.config.head_dim
        return qwen_ntk_alpha(batch.prompt_lens, self.config.seq_length) ** (d / (d - 2))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> float32 logits [N, vocab]. Vocab-parallel: each rank's [N, V'/N] columns gathered
        (exact: no sum), the padding past the vocabulary cut off."""
        if isinstance(self.lm_head, QuantLinear):
            logits = self.lm_head(hidden).float()
        else:
            weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            logits = self.ops.linear(hidden, weight, None).float()
        if self.comm is None:
            return logits
        logits = self.comm.all_gather(logits)  # [N, V']
        vocab = self.config.vocab_size
        return logits if logits.shape[1] == vocab else logits[:, :vocab].contiguous()
