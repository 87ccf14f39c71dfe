"""The 4-bit weight quantizers behind tools/quantize_int4.py: round to nearest, GPTQ and AWQ's searches.

Each takes a float32 weight W [N, K] (N outputs, K inputs) and returns a published.Int4Weight (codes,
scales, zeros and g_idx in the model's input-channel order). Scales are rounded to fp16 before the codes
are chosen, so that the fp16 scales of the published checkpoint reproduce exactly the weights chosen here.

  GPTQ (Frantar et al. 2022): columns quantized one at a time in a fixed order (input channels by
       decreasing Hessian diagonal with act-order), each column's rounding error spread over the columns
       not yet quantized through the inverse Hessian H = X^T X of the layer's calibration inputs X [T, K]
       (damped by `damp` times its mean diagonal), lazily in blocks; group scales and zero points are
       chosen when a group's first column is reached, from the columns as updated so far.
  AWQ (Lin et al. 2023): per-input-channel scales s = mean|x|^a / mean|w|^(1 - a) (a on a grid in [0, 1))
       chosen to minimise || Q(W diag(s)) (x / s) - W x ||^2 (or the error of the block around W), s = 1
       included, folded by the caller into whatever produces x;
       then per (row, group) clipping ranges searched the same way.
"""
from __future__ import annotations

import torch

from .formats import INT4_MAX
from .published import Int4Weight, default_g_idx

_FP16_TINY = 2.0 ** -14  # smallest normal fp16: a scale below it would not survive the fp16 checkpoint


def _fp16_exact(scale: torch.Tensor) -> torch.Tensor:
    return scale.clamp_min(_FP16_TINY).half().float()


def group_params(w: torch.Tensor, sym: bool, style: str = "gptq") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32 [N], zero float32 [N], 0..15) of a group of columns w [N, G].

    style "gptq" (AutoGPTQ's quantizer): the range widened to include 0; sym centres it (zero 8).
    style "awq" (AutoAWQ's zero-point quantizer): the group's own [min, max]."""
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    if style == "gptq":
        lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)
        if sym:
            hi = torch.maximum(hi, -lo)
            lo = -hi
        flat = (lo == 0) & (hi == 0)
        lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
        scale = _fp16_exact((hi - lo) / INT4_MAX)
        zero = torch.full_like(scale, 8.0) if sym else torch.round(-lo / scale).clamp(0, INT4_MAX)
        return scale, zero
    scale = _fp16_exact((hi - lo).clamp_min(1e-5) / INT4_MAX)
    return scale, torch.round(-lo / scale).clamp(0, INT4_MAX)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (float) of w [N, C] with one scale and zero per row ([N] or [N, C])."""
    if scale.dim() == 1:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(w / scale) + zero, 0, INT4_MAX)


def rtn_quantize(weight: torch.Tensor, group_size: int, sym: bool = False, style: str = "gptq") -> Int4Weight:
    """Round to nearest over groups of `group_size` consecutive input channels."""
    n, k = weight.shape
    w = weight.float().reshape(n * (k // group_size), group_size)
    scale, zero = group_params(w, sym, style)
    codes = quantize_codes(w, scale, zero).reshape(n, k)
    return Int4Weight(codes.to(torch.uint8), scale.reshape(n, -1), zero.reshape(n, -1).to(torch.uint8),
                      default_g_idx(k, group_size))


def fake_quantize(weight: torch.Tensor, group_size: int, sym: bool = False, style: str = "awq") -> torch.Tensor:
    """W rounded through rtn_quantize and back, float32 [N, K]."""
    return rtn_quantize(weight, group_size, sym, style).dequantize()


# -- GPTQ ------------------------------------------------------------------------------------------------


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (damped; the damping grows tenfold until H is positive definite)."""
    mean_diag = h.diagonal().mean()
    for attempt in range(4):
        damped = h.clone()
        damped.diagonal().add_(damp * (10 ** attempt) * mean_diag)
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    raise ValueError("GPTQ: the Hessian is not positive definite even after damping")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, *, act_order: bool = False,
                  sym: bool = True, damp: float = 0.01, block_size: int = 128) -> Int4Weight:
    """GPTQ of W [N, K] with the Hessian H [K, K] = sum of x x^T over the layer's calibration inputs.

    Rows are independent, so layers that read the same input (q, k, v) may be quantized stacked."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    n, k = w.shape
    dead = h.diagonal() == 0  # inputs that were always 0: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = _inverse_hessian_factor(h, damp)
    block = group_size * max(1, block_size // group_size)  # groups never straddle blocks
    codes = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(n, k // group_size)
    zeros = torch.empty(n, k // group_size)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        err = _gptq_block(w[:, b0:b1], hinv[b0:b1, b0:b1], group_size, sym, codes[:, b0:b1],
                          scales[:, b0 // group_size:], zeros[:, b0 // group_size:])
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    model_codes = torch.empty_like(codes)
    model_codes[:, perm] = codes  # stored (quantization) order -> input-channel order
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = default_g_idx(k, group_size)
    return Int4Weight(model_codes, scales, zeros.to(torch.uint8), g_idx)


def _gptq_block(w: torch.Tensor, hinv: torch.Tensor, group_size: int, sym: bool, codes: torch.Tensor,
                scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Quantize one block of columns w [N, B] in place of codes (views); returns the scaled errors [N, B]."""
    w = w.clone()
    err = torch.zeros_like(w)
    for i in range(w.shape[1]):
        if i % group_size == 0:
            scale, zero = group_params(w[:, i:i + group_size], sym, "gptq")
            scales[:, i // group_size], zeros[:, i // group_size] = scale, zero
        q = quantize_codes(w[:, i:i + 1], scale, zero)[:, 0]
        codes[:, i] = q.to(torch.uint8)
        e = (w[:, i] - (q - zero) * scale) / hinv[i, i]
        w[:, i:] -= e[:, None] * hinv[i, i:][None, :]
        err[:, i] = e
    return err


# -- AWQ -------------------------------------------------------------------------------------------------


def linear_output_loss(x: torch.Tensor, weights: list[torch.Tensor]):
    """loss(candidates) for awq_search_scales: mean squared error of x [T, K] @ W^T, all weights stacked."""
    reference = x @ torch.cat([w.float() for w in weights]).t()

    def loss(candidates: list[torch.Tensor]) -> float:
        return float((x @ torch.cat(candidates).t() - reference).pow(2).mean())

    return loss


def awq_search_scales(weights: list[torch.Tensor], group_size: int, x_mean: torch.Tensor, loss,
                      n_grid: int = 20) -> tuple[torch.Tensor, float]:
    """AWQ's per-input-channel scales s [K] (and the ratio a chosen, -1 for none: s = 1) for layers that
    read the same input.

    x_mean [K]: mean |x| over the calibration tokens. loss(candidates): the output error with each weight
    replaced by its candidate Q(W diag(s)) / s (linear_output_loss, or the error of the block around
    them, as AutoAWQ measures the attention or MLP output)."""
    w = torch.cat([t.float() for t in weights])
    n, k = w.shape
    grouped = w.abs().reshape(-1, group_size)
    w_mean = (grouped / (grouped.amax(dim=1, keepdim=True) + 1e-6)).reshape(n, k).mean(dim=0)
    # s = 1 (plain rounding, reported as ratio -1) is a candidate too: AutoAWQ's grid lacks it, and on an
    # already low-bit model (a GGUF import) every grid point can be worse than no scaling at all
    best = (loss([fake_quantize(t.float(), group_size) for t in weights]), torch.ones(k), -1.0)
    for step in range(n_grid):
        ratio = step / n_grid
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        error = loss([fake_quantize(t.float() * s, group_size) / s for t in weights])
        if error < best[0]:
            best = (error, s, ratio)
    return best[1], best[2]


def awq_search_clip(x: torch.Tensor, weight: torch.Tensor, group_size: int, n_grid: int = 20,
                    max_shrink: float = 0.5) -> torch.Tensor:
    """Per (row, group) clipping bound [N, K / G] minimising the group's share of the output error on x [T, K];
    clamp W to [-bound, bound] to apply it."""
    w = weight.float()
    n, k = w.shape
    groups = k // group_size
    xg = x.reshape(-1, groups, group_size).transpose(0, 1)  # [g, T, G]
    wg = w.reshape(n, groups, group_size).transpose(0, 1)  # [g, N, G]
    reference = torch.bmm(xg, wg.transpose(1, 2))  # [g, T, N]
    full = wg.abs().amax(dim=2)  # [g, N]
    best_bound, best_err = full.clone(), torch.full_like(full, float("inf"))
    for step in range(int(max_shrink * n_grid)):
        bound = full * (1 - step / n_grid)
        clipped = torch.maximum(torch.minimum(wg, bound[..., None]), -bound[..., None])
        wq = fake_quantize(clipped.transpose(0, 1).reshape(n, k), group_size)
        out = torch.bmm(xg, wq.reshape(n, groups, group_size).transpose(0, 1).transpose(1, 2))
        err = (out - reference).pow(2).mean(dim=1)  # [g, N]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_bound = torch.where(better, bound, best_bound)
    return best_bound.t().contiguous()  # [N, g]


def clip_weight(weight: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """W [N, K] clamped to [-bound, bound] per (row, group); bound [N, K / G]."""
    n, k = weight.shape
    b = bound.repeat_interleave(k // bound.shape[1], dim=1)
    return torch.maximum(torch.minimum(weight.float(), b), -b)
