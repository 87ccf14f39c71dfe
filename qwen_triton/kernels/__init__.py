"""Triton kernels for the GPU path, each beside a plain-torch reference.

Every kernel here has one reference with the same signature (the function the
CPU path already runs, in models/layers.py or attention/torch_backend.py), and
tests/test_kernels.py compares the two on random inputs of several shapes: on
the CPU through Triton's interpreter (TRITON_INTERPRET=1), on a GPU at full
size through tools/check_kernels_gpu.py.

Modules are imported only when a Triton path is chosen, so the CPU engine never
needs Triton installed.

  norm.py             rms_norm / add_rms_norm (residual add fused into the norm)
  rotary.py           rotary embedding applied to q and k in place
  activation.py       silu_and_mul
  kv_cache.py         write_kv_cache (slots < 0 are skipped: padded graph rows)
  paged_attention.py  decode attention over the paged cache, split along the sequence
"""
from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """Whether the triton package can be imported (it need not have a GPU)."""
    return importlib.util.find_spec("triton") is not None


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
