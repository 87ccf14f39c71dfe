"""Rank 0 of a tensor-parallel engine: the engine's ModelRunner when EngineConfig.tensor_parallel_size > 1.

It starts the other ranks (workers.py), joins the group with them, builds its own shard of the model, and
then sends each collective-running call of a step to the others just before making it itself (the seams
of model_runner: run_eager, run_graph, logits), so every rank runs the same collectives in the same order.
What only needs the gathered logits stays on rank 0: sampling, context and generation logits. The
scheduler runs once, in the engine; the workers never see requests, only each step's HostBatch and the
packed rows whose logits rank 0 asks for.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..config import EngineConfig, ModelConfig
from ..errors import QwenTritonError
from ..host_batch import HostBatch
from ..model_runner import ModelRunner
from ..models.sharding import Shard
from ..quant.spec import read_quant_spec
from . import check_tensor_parallel
from .group import TPGroup, cpu_threads, rank_device
from .workers import TensorParallelError, Workers


class TPModelRunner(ModelRunner):
    """ModelRunner of rank 0 over N ranks; close() stops the others."""

    def __init__(self, model_path: str, model_config: ModelConfig, config: EngineConfig, max_model_len: int):
        size = config.tensor_parallel_size
        check_tensor_parallel(model_config, size, read_quant_spec(model_path), config.device)
        self._workers: Workers | None = None  # None while building: start-up runs alike on every rank by itself
        self._threads: int | None = None  # the process's torch threads before a CPU engine took its share
        workers = Workers(model_path, config, max_model_len)
        try:
            workers.wait_joined()
            device = torch.device(rank_device(config.device, 0))
            if device.type == "cuda":
                torch.cuda.set_device(device)
            else:  # the ranks share the cores (as each worker does); spinning idle threads slow all ranks 10x
                self._threads = torch.get_num_threads()
                torch.set_num_threads(cpu_threads(size))
            group = TPGroup(workers.store, 0, size, device)
            workers.on_death = group.abort
            super().__init__(model_path, model_config, dataclasses.replace(config, device=str(device)),
                             max_model_len, Shard(0, size, group))
        except BaseException as exc:
            # rank 0's own error (a bad checkpoint: the workers fail on it too; a worker that never started)
            # is the one to tell; any other (a collective that broke) comes from a worker that died: name it
            own = isinstance(exc, (QwenTritonError, ValueError))
            death = None if own else workers.death(grace_s=1.0)
            self.close(workers)
            if death is not None:
                raise TensorParallelError(death) from exc
            raise
        self._workers = workers

    def run_eager(self, host: HostBatch) -> torch.Tensor:
        return self._together(("eager", host), super().run_eager, host)

    def run_graph(self, host: HostBatch, size: int) -> torch.Tensor:
        return self._together(("graph", host, size), super().run_graph, host, size)

    def logits(self, hidden: torch.Tensor, rows: np.ndarray | slice) -> torch.Tensor:
        return self._together(("logits", rows), super().logits, hidden, rows)

    def _together(self, command: tuple, run, *args) -> torch.Tensor:
        """Send `command` to the workers, then make the same call here. A failure here leaves the ranks out
        of step (some may wait in a collective): it ends the engine with a TensorParallelError."""
        workers = self._workers
        if workers is None:
            return run(*args)
        try:
            workers.send(command)
            return run(*args)
        except Exception as exc:
            raise workers.fail(exc) from exc

    def close(self, workers: Workers | None = None) -> None:
        """Stop the workers; give the process its torch threads back."""
        workers = workers or self._workers
        if workers is not None:
            workers.stop()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
