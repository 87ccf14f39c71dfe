"""The process group of a tensor-parallel engine: the rendezvous store, one group over the ranks (gloo
on the CPU, NCCL on GPUs) and the collectives the sharded model calls (models/sharding.Communicator).

The group is a torch.distributed backend object built from the store, not torch.distributed's default
group: several engines may live in one process (tests), and nothing global is set up or torn down.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# A collective waits at most this long for the other ranks (a hung rank then fails the step instead of
# hanging it). Ranks compute the same work in lockstep, so waits are short; idle engines wait for the
# next step outside any collective.
COLLECTIVE_TIMEOUT = timedelta(seconds=300)
STORE_HOST = "127.0.0.1"
# NVLink multicast (NVLS) off: on the shared GPU hosts a program that uses it can put the host's GPUs out
# of service (docs: the device machines' notes). NCCL reads these when a communicator is created.
GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def rank_device(device: str, rank: int) -> str:
    """The device rank `rank` runs on: "cpu", or cuda:(k + rank) for EngineConfig.device cuda:k (cuda and
    auto with a GPU: k = 0)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    return f"cuda:{int(device.partition(':')[2] or 0) + rank}"


def cpu_threads(size: int) -> int:
    """torch threads of each of `size` ranks sharing the CPU's cores."""
    return max(1, (os.cpu_count() or 1) // size)


def master_store(size: int, timeout: timedelta) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free local port (`.port`); the other ranks connect to it."""
    return dist.TCPStore(STORE_HOST, 0, size, True, timeout=timeout, wait_for_workers=False)


def client_store(port: int, size: int, timeout: timedelta) -> dist.TCPStore:
    return dist.TCPStore(STORE_HOST, port, size, False, timeout=timeout)


class TPGroup:
    """Rank `rank` of `size` over `device`'s backend: the Communicator of models/sharding.py.

    On GPUs the collectives are NCCL's, issued on the current stream, so a CUDA graph captured over a
    decode step (cuda_graphs.DecodeGraphs) records them and every replay runs them again: all ranks
    capture the same graphs in the same order at start-up and replay them together. The communicator is
    created eagerly (the barrier below), never inside a capture."""

    def __init__(self, store: dist.Store, rank: int, size: int, device: torch.device,
                 timeout: timedelta = COLLECTIVE_TIMEOUT):
        self.rank, self.size, self.device = rank, size, device
        prefix = dist.PrefixStore("qwen-triton-tp", store)
        if device.type == "cuda":
            os.environ.update(GPU_ENV)  # before NCCL creates its communicator
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.backend = dist.ProcessGroupNCCL(prefix, rank, size, options)
        else:
            self.backend = dist.ProcessGroupGloo(prefix, rank, size, timeout)
        self.barrier()

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place (x contiguous); returns x."""
        self.backend.allreduce([x]).wait()
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] on each rank -> [M, size * K], rank r's columns at [r K, (r+1) K)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.backend.allgather([parts], [x.contiguous()]).wait()
        return torch.cat(parts, dim=1)

    def min_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MIN
        self.backend.allreduce([t], options).wait()
        return int(t.item())

    def barrier(self) -> None:
        """Every rank here (an all-reduce: it also creates NCCL's communicator outside any graph capture)."""
        self.all_reduce(torch.zeros(1, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def abort(self) -> None:
        """Unblock this rank's collectives after another rank died (NCCL would wait for its timeout; gloo
        fails at once on the closed connection). Best effort: the group is unusable afterwards."""
        abort = getattr(self.backend, "abort", None)
        if abort is not None and self.device.type == "cuda":
            try:
                abort()
            except Exception:  # noqa: BLE001 - already broken: nothing more to do
                pass
