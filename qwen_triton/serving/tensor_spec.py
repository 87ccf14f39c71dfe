"""What one input or output of a Triton model is: the type the contract's tables (contract.py) are made
of, and the short constructor they are written with. Plain Python: no Triton, no torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. dtype is Triton's name without TYPE_ (INT32, FP32, BOOL, UINT64, BYTES
    for strings); reshape=() marks a scalar that the model sees without its trailing [1].
    `unsupported` (ours): why this engine refuses the input when a request gives it a value that is
    not empty, zero or false (upstream features a text-only decoder does not have)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None
    ragged: bool = False
    unsupported: str | None = None


def tensor(name: str, dtype: str, *dims: int, opt: bool = True, scalar: bool = False, ragged: bool = False,
           no: str | None = None) -> TensorSpec:
    """A TensorSpec: dims default to [1]; optional unless opt=False; scalar: reshape []; no: why refused."""
    return TensorSpec(name, dtype, dims or (1,), opt, () if scalar else None, ragged, no)
