"""Quantized KV cache in plain torch: the formats, the reference quantizer and the allocation.

A cached key or value row x (one token, one KV head: D numbers) is stored as codes c and a scale s,
x ~= c * s:
  int8  c = clamp(round(x / s), -127, 127), round half away from zero
  fp8   c = float8_e4m3fn(clamp(x / s, -448, 448)), round to nearest even (the cast)
Scales ("calibrated" or "dynamic", EngineConfig.kv_cache_scales):
  calibrated  one s for all K and one for all V of a layer (absmax / qmax over calibration data),
              float32 [2]; values past the calibrated range clamp
  dynamic     s = absmax(x over D) / qmax for each token and KV head, computed as it is written,
              float32 [2, num_blocks, block_size, Hkv] beside the codes (4 bytes a row of D codes)
An all-zero row has s = 0 and codes 0. The Triton write kernel (kernels/kv_cache.py) computes the
same fp32 operations in the same order (x / s correctly rounded), so its codes equal these.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import KVCache, QuantKVCache

KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


@dataclass(frozen=True)
class KVCacheSpec:
    """What one layer's cache holds. dtype: the model's dtype, int8 or float8_e4m3fn;
    scales: None (a float cache), "calibrated" or "dynamic"."""

    dtype: torch.dtype
    scales: str | None = None

    @property
    def quantized(self) -> bool:
        return self.scales is not None

    @property
    def name(self) -> str:
        """For logs and metrics: "bfloat16", "int8 (dynamic scales)", ..."""
        base = str(self.dtype).removeprefix("torch.")
        return f"{base} ({self.scales} scales)" if self.quantized else base

    def token_bytes(self, num_kv_heads: int, head_dim: int) -> int:
        """Bytes one token's K and V take in one layer, scales included."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        scale_bytes = 4 if self.scales == "dynamic" else 0  # float32 per token and KV head
        return 2 * num_kv_heads * (head_dim * elem + scale_bytes)


def resolve_kv_spec(kv_cache_dtype: str, kv_cache_scales: str, model_dtype: torch.dtype) -> KVCacheSpec:
    """EngineConfig's kv_cache_dtype ("auto", "int8", "fp8") and kv_cache_scales as a KVCacheSpec."""
    if kv_cache_dtype == "auto":
        return KVCacheSpec(model_dtype)
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be auto, int8 or fp8; got {kv_cache_dtype!r}")
    if kv_cache_scales not in ("calibrated", "dynamic"):
        raise ValueError(f"kv_cache_scales must be calibrated or dynamic; got {kv_cache_scales!r}")
    return KVCacheSpec(KV_CACHE_DTYPES[kv_cache_dtype], kv_cache_scales)


def new_kv_cache(spec: KVCacheSpec, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 device: torch.device, calibrated_scales: torch.Tensor | None = None) -> KVCache:
    """A zeroed cache of one layer. calibrated_scales: float32 [2] (K, V), required when
    spec.scales is "calibrated" (the cache keeps a reference to it, not a copy)."""
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    data = torch.zeros(shape, dtype=spec.dtype, device=device)
    if not spec.quantized:
        return data
    if spec.scales == "dynamic":
        return QuantKVCache(data, torch.zeros(shape[:-1], dtype=torch.float32, device=device))
    if calibrated_scales is None or calibrated_scales.shape != (2,) or calibrated_scales.dtype != torch.float32:
        raise ValueError("a calibrated KV cache needs its layer's K and V scales, float32 [2]")
    return QuantKVCache(data, calibrated_scales)


def check_calibrated_scales(scales: list[torch.Tensor]) -> None:
    """Each layer's calibrated scales (float32 [2], K and V: the model's layers.N.self_attn.kv_scale)
    are finite and positive; raises ValueError naming the layers that are not (NaN: the checkpoint
    has none)."""
    bad = [i for i, s in enumerate(scales) if not bool((torch.isfinite(s) & (s > 0)).all())]
    if bad:
        raise ValueError(
            f"kv_cache_scales=calibrated, but the checkpoint has no valid KV-cache scales for layers "
            f"{bad[:8]}{' ...' if len(bad) > 8 else ''} (layers.N.self_attn.kv_scale): build it with KV-cache "
            "calibration, or use kv_cache_scales=dynamic, which needs none")


# -- quantize / dequantize --------------------------------------------------------------------


def row_scales(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Dynamic scales of rows x [..., D]: absmax / qmax, float32 [...]."""
    amax = x.float().abs().amax(dim=-1)
    # tensor / tensor: correctly rounded on CUDA too (a tensor / Python scalar there is a multiplication by
    # the reciprocal, which differs in the last bit from the Triton kernel's div_rn)
    return amax / torch.full_like(amax, QMAX[dtype])


def quantize(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Codes of x [..., D] under `scale` (float32, broadcast against x[..., 0]: [...] or a scalar) in
    `dtype` (int8 or float8_e4m3fn)."""
    scale = scale.float()
    y = x.float() / torch.where(scale > 0, scale, 1.0)[..., None]  # a zero scale means x == 0 there
    qmax = QMAX[dtype]
    if dtype == torch.int8:
        r = (y.abs() + 0.5).floor().clamp_max(qmax)  # round half away from zero, as the Triton kernel
        return torch.where(y < 0, -r, r).to(torch.int8)
    return y.clamp(-qmax, qmax).to(dtype)


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes [..., D] * scale ([...] or a scalar): float32 [..., D]."""
    return codes.float() * scale.float()[..., None]


def _flat(cache: QuantKVCache) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Byte views of the codes [2, slots, Hkv, D] (CPU torch cannot index_copy_ float8) and the dynamic
    scales [2, slots, Hkv] (None when calibrated)."""
    data = cache.data
    flat = data.view(torch.uint8) if data.dtype == torch.float8_e4m3fn else data
    flat = flat.view(2, -1, *data.shape[-2:])
    return flat, cache.scales.view(2, -1, data.shape[-2]) if cache.per_token else None


def write_quant_kv_cache(
    cache: QuantKVCache,
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T], every slot >= 0
) -> None:
    """Quantize this step's keys and values and store codes (and dynamic scales) at their slots."""
    flat, flat_scales = _flat(cache)
    for i, x in enumerate((k, v)):
        if flat_scales is not None:
            scale = row_scales(x, cache.data.dtype)  # [T, Hkv]
            flat_scales[i].index_copy_(0, slot_mapping, scale)
        else:
            scale = cache.scales[i]
        codes = quantize(x, scale, cache.data.dtype)
        flat[i].index_copy_(0, slot_mapping, codes.view(flat.dtype))


def gather_kv(cache: KVCache, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [S, Hkv, D] at `slots` (int64 [S]): the cache's own dtype for a plain cache,
    dequantized float32 for a QuantKVCache."""
    if isinstance(cache, torch.Tensor):
        k_cache, v_cache = cache.view(2, -1, *cache.shape[-2:])  # [slots, Hkv, D] each
        return k_cache[slots], v_cache[slots]
    flat, flat_scales = _flat(cache)
    out = []
    for i in range(2):
        codes = flat[i][slots].view(cache.data.dtype)
        scale = flat_scales[i][slots] if flat_scales is not None else cache.scales[i]
        out.append(dequantize(codes, scale))
    return out[0], out[1]
