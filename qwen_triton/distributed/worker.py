"""A tensor-parallel worker: ranks 1 .. N-1 of an engine, started by rank 0 (leader.py) as
`python -m qwen_triton.distributed.worker` with a WorkerSpec on stdin, then its commands.

It builds the same ModelRunner as rank 0 over its own shard (the same start-up, so the collectives of
warm-up and graph capture meet rank 0's), then follows rank 0's commands, one per collective-running call
of rank 0's runner (model_runner's seams): ("eager", HostBatch), ("logits", rows), ("graph", HostBatch,
size), ("stop",). It samples nothing and returns nothing: its outputs are its share of the sums and
gathers. It exits when rank 0 says stop, closes the pipe, or dies (a watcher thread checks the parent, for
a worker blocked in a collective).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from datetime import timedelta

import torch

from .pipe import WorkerSpec, joined_key, read_message

log = logging.getLogger(__name__)
PARENT_CHECK_S = 0.5


def build_runner(spec: WorkerSpec):
    """Connect to rank 0's store, join the group, build this rank's ModelRunner."""
    from ..model_runner import ModelRunner
    from ..models import load_model_config
    from ..models.sharding import Shard
    from .group import TPGroup, client_store, cpu_threads, rank_device

    timeout = timedelta(seconds=spec.timeout_s)
    store = client_store(spec.store_port, spec.size, timeout)
    store.set(joined_key(spec.rank), str(os.getpid()))
    device = torch.device(rank_device(spec.config.device, spec.rank))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the Triton kernels use the current device
    else:  # the ranks share the CPU's cores
        torch.set_num_threads(cpu_threads(spec.size))
    group = TPGroup(store, spec.rank, spec.size, device)
    config = dataclasses.replace(spec.config, device=str(device))
    return ModelRunner(spec.model_path, load_model_config(spec.model_path), config, spec.max_model_len,
                       Shard(spec.rank, spec.size, group))


@torch.inference_mode()
def follow(runner, stream) -> None:
    """Run rank 0's commands until "stop" (or EOFError: rank 0 closed the pipe)."""
    cuda = runner.settings.device.type == "cuda"
    hidden = None  # [T, hidden] of the last eager step: what "logits" commands index
    while True:
        command = read_message(stream)
        kind = command[0]
        if kind == "eager":
            hidden = runner.run_eager(command[1])
        elif kind == "logits":
            runner.logits(hidden, command[1])
        elif kind == "graph":
            runner.run_graph(command[1], command[2])
        elif kind == "stop":
            return
        else:
            raise ValueError(f"unknown tensor-parallel command {kind!r}")
        if cuda:
            # Nothing here reads results back, so without this the CPU could run a step ahead and rewrite
            # the graph's pinned input buffers while the previous copy from them is queued. Rank 0 waits
            # for this rank's share anyway (its sampling reads the gathered logits), so this costs nothing.
            torch.cuda.current_stream().synchronize()


def _watch_parent() -> None:
    """Exit when rank 0's process is gone: a worker blocked in an NCCL collective would otherwise wait."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(3)

    threading.Thread(target=watch, name="qwen-triton-tp-parent", daemon=True).start()


def main() -> int:
    stream = sys.stdin.buffer
    spec: WorkerSpec = read_message(stream)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s tp-rank-{spec.rank} %(levelname)s %(name)s: %(message)s")
    _watch_parent()
    runner = build_runner(spec)
    log.info("tensor-parallel rank %d of %d ready (pid %d)", spec.rank, spec.size, os.getpid())
    try:
        follow(runner, stream)
    except EOFError:
        log.info("rank 0 closed the pipe; exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
