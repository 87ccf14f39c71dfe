"""What the kernel tests share: the device they run on (a GPU, else the CPU through Triton's interpreter), seeded
random tensors, and the relative error and tolerance every kernel is held to against its torch reference."""
from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def randn(*shape, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit normal values from a generator seeded by `seed` (the same on every device)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype=dtype, device=DEVICE)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64; a NaN in `got` fails."""
    got, ref = got.double(), ref.double()
    assert not torch.isnan(got).any()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-2
