"""The published 4-bit formats (AutoGPTQ / GPTQModel "gptq" and "gptq_v2", AutoAWQ "gemm") and ours.

One linear layer of weight W [N, K] (N outputs, K inputs), G input channels a group, is described here by
an `Int4Weight` in the model's input-channel order:
  codes uint8 [N, K] (0..15), scales float32 [N, K / G], zeros uint8 [N, K / G] (0..15), g_idx int32 [K]
  (the group of each input channel), so that W[n, k] = (codes[n, k] - zeros[n, g]) * scales[n, g], g = g_idx[k].

Published GPTQ tensors of that layer (32-bit words, 4-bit fields from the least significant bits up):
  qweight int32 [K / 8, N]   word [i, n] holds codes[n, 8i .. 8i + 7]                      (packed along K)
  qzeros  int32 [K / G, N / 8] word [g, j] holds zeros[8j .. 8j + 7, g]                    (packed along N)
                              "gptq" (v1) stores every word minus 0x11111111 (zero - 1 in each field, the
                              borrow of a zero point 0 running into the next field); "gptq_v2" stores zeros
  scales  fp16 [K / G, N],  g_idx int32 [K] (desc_act / act-order: not k // G)
Published AutoAWQ GEMM tensors (groups always k // G):
  qweight int32 [K, N / 8]   word [k, j] holds codes[8j + AWQ_ORDER[f], k] in field f     (packed along N)
  qzeros  int32 [K / G, N / 8] the same interleaved packing of zeros[:, g]
  scales  fp16 [K / G, N]
Ours (formats.py): qweight uint8 [N, K / 2], scales float32 [N, K / G], zeros uint8 [N, K / G] and, for
act-order, perm int32 [K]: stored column j is input channel perm[j], the groups contiguous in stored order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import formats

BITS = 4
PACK = 32 // BITS  # 4-bit fields in one 32-bit word
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # field f of an AWQ word holds column 8j + AWQ_ORDER[f]
_V1_OFFSET = 0x11111111  # one in every field: GPTQ v1 stores zero - 1
_WORD = 1 << 32


class PublishedFormatError(ValueError):
    """Published tensors that are inconsistent (shapes, g_idx); the importer adds the tensor's name."""


@dataclass(frozen=True)
class Int4Weight:
    """One linear layer's 4-bit weight in the model's input-channel order (see the module docstring)."""

    codes: torch.Tensor  # uint8 [N, K], 0..15
    scales: torch.Tensor  # float32 [N, K / G]
    zeros: torch.Tensor  # uint8 [N, K / G], 0..15
    g_idx: torch.Tensor  # int32 [K], group of each input channel

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantize(self) -> torch.Tensor:
        """float32 W [N, K]."""
        g = self.g_idx.long()
        return (self.codes.float() - self.zeros[:, g].float()) * self.scales[:, g].float()


def default_g_idx(in_features: int, group_size: int) -> torch.Tensor:
    """int32 [K]: k // G, the groups of a layer quantized in input-channel order."""
    return (torch.arange(in_features, dtype=torch.int32) // group_size).to(torch.int32)


def concat_outputs(parts: list[Int4Weight]) -> Int4Weight:
    """Layers that read the same input stacked on the output dim (q, k, v -> qkv): they must share g_idx."""
    first = parts[0]
    for part in parts[1:]:
        if part.g_idx.shape != first.g_idx.shape or not torch.equal(part.g_idx, first.g_idx):
            raise PublishedFormatError("fused parts have different g_idx (act-order): they cannot share one "
                                       "input-channel order")
        if part.scales.shape[1] != first.scales.shape[1]:
            raise PublishedFormatError("fused parts have different group counts")
    return Int4Weight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]),
                      torch.cat([p.zeros for p in parts]), first.g_idx)


# -- ours ------------------------------------------------------------------------------------------------


def act_order_perm(g_idx: torch.Tensor, num_groups: int) -> torch.Tensor | None:
    """int32 [K] perm that makes the groups contiguous (stable: channels keep their order within a group),
    or None when g_idx is already k // G. Each group must hold exactly K / num_groups channels."""
    k = g_idx.numel()
    if num_groups <= 0 or k % num_groups:
        raise PublishedFormatError(f"{k} input channels do not split into {num_groups} groups")
    expected = default_g_idx(k, k // num_groups)
    g = g_idx.to(torch.int64)
    if torch.equal(g, expected.long()):
        return None
    perm = torch.sort(g, stable=True).indices
    if not torch.equal(g[perm], expected.long()):
        counts = torch.bincount(g.clamp(0, num_groups), minlength=num_groups + 1)[:num_groups]
        raise PublishedFormatError(
            f"g_idx is not a permutation of {num_groups} equal groups of {k // num_groups} channels "
            f"(values {int(g.min())}..{int(g.max())}, group sizes {sorted(set(counts.tolist()))})")
    return perm.to(torch.int32)


def to_ours(weight: Int4Weight, with_perm: bool = False) -> dict[str, torch.Tensor]:
    """Our stored tensors (qweight, scales, zeros and, for act-order, perm) of one layer.

    with_perm: store perm even when the order is the identity (a model whose layers all carry perm)."""
    perm = act_order_perm(weight.g_idx, weight.scales.shape[1])
    codes = weight.codes if perm is None else weight.codes[:, perm.long()]
    out = {"qweight": formats.pack_int4(codes), "scales": weight.scales.float().contiguous(),
           "zeros": weight.zeros.to(torch.uint8).contiguous()}
    if perm is not None or with_perm:
        out["perm"] = perm if perm is not None else torch.arange(codes.shape[1], dtype=torch.int32)
    return out


# -- 32-bit words ----------------------------------------------------------------------------------------


def _shifts() -> torch.Tensor:
    return torch.arange(0, 32, BITS, dtype=torch.int64)  # [8]: field f sits at bits 4f .. 4f + 3


def _pack_fields(fields: torch.Tensor) -> torch.Tensor:
    """[..., 8] values 0..15 -> int32 [...]: field f at bits 4f (the word's bit pattern, two's complement)."""
    words = (fields.to(torch.int64) << _shifts()).sum(dim=-1)
    return _to_int32(words)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words taken modulo 2**32 -> the int32 of the same bit pattern."""
    words = words % _WORD
    return torch.where(words >= _WORD // 2, words - _WORD, words).to(torch.int32)


def _unpack_fields(words: torch.Tensor) -> torch.Tensor:
    """int32 [...] -> uint8 [..., 8]: field f of each word."""
    return ((words.to(torch.int64)[..., None] >> _shifts()) & 0xF).to(torch.uint8)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise PublishedFormatError(what)


# -- GPTQ ------------------------------------------------------------------------------------------------


def pack_gptq(weight: Int4Weight, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """The published GPTQ tensors of one layer: qweight, qzeros, scales (fp16) and g_idx.

    checkpoint_format "gptq" (v1: the words of qzeros minus 0x11111111, as GPTQModel writes v1) or
    "gptq_v2" (zeros as they are). Scales are written in fp16: give scales that fp16 holds exactly."""
    n, k = weight.codes.shape
    groups = weight.scales.shape[1]
    _check(k % PACK == 0 and n % PACK == 0, f"GPTQ packing needs K ({k}) and N ({n}) multiples of {PACK}")
    qweight = _pack_fields(weight.codes.t().reshape(k // PACK, PACK, n).transpose(1, 2))  # [K / 8, N]
    qzeros = _pack_fields(weight.zeros.t().reshape(groups, n // PACK, PACK))  # [K / G, N / 8]
    if checkpoint_format == "gptq":
        qzeros = _to_int32(qzeros.to(torch.int64) - _V1_OFFSET)
    elif checkpoint_format != "gptq_v2":
        raise ValueError(f"checkpoint_format must be gptq or gptq_v2; got {checkpoint_format!r}")
    return {"qweight": qweight, "qzeros": qzeros, "scales": weight.scales.t().to(torch.float16).contiguous(),
            "g_idx": weight.g_idx.to(torch.int32).clone()}  # parts of a fused layer share one


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                group_size: int, checkpoint_format: str = "gptq") -> Int4Weight:
    """One layer's published GPTQ tensors -> Int4Weight. g_idx None: k // group_size (desc_act off)."""
    _check(qweight.dtype == torch.int32 and qzeros.dtype == torch.int32,
           f"qweight and qzeros must be int32 (got {qweight.dtype}, {qzeros.dtype})")
    _check(qweight.dim() == 2 and qzeros.dim() == 2 and scales.dim() == 2, "qweight, qzeros, scales must be 2-D")
    k, n = qweight.shape[0] * PACK, qweight.shape[1]
    groups = scales.shape[0]
    _check(tuple(scales.shape) == (groups, n), f"scales {list(scales.shape)} must be [groups, N={n}]")
    _check(tuple(qzeros.shape) == (groups, n // PACK), f"qzeros {list(qzeros.shape)} must be [{groups}, {n // PACK}]")
    if g_idx is None:
        _check(groups * group_size == k, f"{groups} groups of {group_size} do not cover K={k}")
        g_idx = default_g_idx(k, group_size)
    _check(tuple(g_idx.shape) == (k,), f"g_idx {list(g_idx.shape)} must be [K={k}]")
    _check(bool((g_idx >= 0).all() and (g_idx < groups).all()), f"g_idx values must lie in 0..{groups - 1}")
    codes = _unpack_fields(qweight).permute(0, 2, 1).reshape(k, n).t()  # [N, K]
    if checkpoint_format == "gptq":
        qzeros = _to_int32(qzeros.to(torch.int64) + _V1_OFFSET)
    elif checkpoint_format != "gptq_v2":
        raise ValueError(f"checkpoint_format must be gptq or gptq_v2; got {checkpoint_format!r}")
    zeros = _unpack_fields(qzeros).reshape(groups, n).t()  # [N, K / G]
    return Int4Weight(codes.contiguous(), scales.float().t().contiguous(), zeros.contiguous(),
                      g_idx.to(torch.int32).contiguous())


# -- AWQ -------------------------------------------------------------------------------------------------


def _awq_pack_columns(values: torch.Tensor) -> torch.Tensor:
    """[R, N] 0..15 -> int32 [R, N / 8] in AWQ's interleaved field order."""
    r, n = values.shape
    blocks = values.reshape(r, n // PACK, PACK)[..., list(AWQ_ORDER)]  # field f <- column AWQ_ORDER[f]
    return _pack_fields(blocks)


def _awq_unpack_columns(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, N / 8] -> uint8 [R, N] (AWQ's interleaved field order undone)."""
    fields = _unpack_fields(words)  # [R, N / 8, 8], field f = column AWQ_ORDER[f]
    columns = torch.empty_like(fields)
    columns[..., list(AWQ_ORDER)] = fields
    return columns.reshape(words.shape[0], -1)


def pack_awq(weight: Int4Weight) -> dict[str, torch.Tensor]:
    """The published AutoAWQ GEMM tensors of one layer: qweight, qzeros, scales (fp16).

    AWQ has no act-order: g_idx must be k // G. Scales are written in fp16: give scales fp16 holds."""
    n, k = weight.codes.shape
    _check(n % PACK == 0, f"AWQ packing needs N ({n}) a multiple of {PACK}")
    _check(torch.equal(weight.g_idx.long(), default_g_idx(k, weight.group_size).long()),
           "AWQ stores no g_idx: the groups must be k // group_size")
    return {"qweight": _awq_pack_columns(weight.codes.t().contiguous()),
            "qzeros": _awq_pack_columns(weight.zeros.t().contiguous()),
            "scales": weight.scales.t().to(torch.float16).contiguous()}


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Int4Weight:
    """One layer's published AutoAWQ GEMM tensors -> Int4Weight."""
    _check(qweight.dtype == torch.int32 and qzeros.dtype == torch.int32,
           f"qweight and qzeros must be int32 (got {qweight.dtype}, {qzeros.dtype})")
    _check(qweight.dim() == 2 and qzeros.dim() == 2 and scales.dim() == 2, "qweight, qzeros, scales must be 2-D")
    k, n = qweight.shape[0], qweight.shape[1] * PACK
    _check(k % group_size == 0, f"K={k} is not a multiple of group_size {group_size}")
    groups = k // group_size
    _check(tuple(scales.shape) == (groups, n), f"scales {list(scales.shape)} must be [{groups}, {n}]")
    _check(tuple(qzeros.shape) == (groups, n // PACK), f"qzeros {list(qzeros.shape)} must be [{groups}, {n // PACK}]")
    codes = _awq_unpack_columns(qweight).t().contiguous()  # [N, K]
    zeros = _awq_unpack_columns(qzeros).t().contiguous()  # [N, K / G]
    return Int4Weight(codes, scales.float().t().contiguous(), zeros, default_g_idx(k, group_size))
