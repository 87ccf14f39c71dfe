"""Host-to-device copies that never wait for the device.

A copy from pageable host memory (`torch.tensor(data, device="cuda")`, `.to("cuda")` of a
numpy-backed tensor) waits for the work already queued on the stream before it starts,
so one such copy while the next step is being launched (async scheduling) makes the
host wait for the step in flight and the two steps no longer overlap. `to_device`
stages through pinned memory (PyTorch's caching host allocator keeps the block until
the copy is done) and copies asynchronously.
"""
from __future__ import annotations

from typing import Any

import torch


def to_device(values: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`values` (a list, a numpy array or a CPU tensor) as a tensor on `device`, queued, not waited for."""
    cpu = torch.as_tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type != "cuda":
        return cpu.to(device)
    return cpu.pin_memory().to(device, non_blocking=True)
