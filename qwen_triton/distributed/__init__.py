"""Tensor parallelism: one engine split over N processes, one per GPU (or, on the CPU, per rank).

EngineConfig.tensor_parallel_size N > 1 makes the engine's runner `leader.TPModelRunner`, rank 0: it runs
in the engine's own process (the Triton engine model instance), computes its shard like the others, and
starts, feeds and supervises ranks 1 .. N-1 (`workers.py`, each `python -m qwen_triton.distributed.worker`).
The scheduler runs once; each step's packed batch goes to every rank over a pipe (`pipe.py`); the
collectives go through one process group (`group.py`: gloo on the CPU, NCCL on GPUs, NVLink multicast
off). How weights are split: models/sharding.py. A rank that dies ends the engine with a
TensorParallelError naming it, never a hang.
"""
from __future__ import annotations

from ..config import EngineConfig, ModelConfig
from ..model_runner import ModelRunner
from ..models.sharding import ShardingError, check_shardable
from ..quant.spec import QuantSpec

__all__ = ["ShardingError", "check_tensor_parallel", "make_runner"]


def check_tensor_parallel(config: ModelConfig, size: int, quant: QuantSpec | None, device: str) -> None:
    """Raise ShardingError unless the model (with its quantization) splits `size` ways and, on GPUs, the
    GPUs it needs (cuda:k .. cuda:k+size-1 for device cuda:k) are visible. `device` "auto" without a GPU
    means the CPU (gloo), where any size runs."""
    check_shardable(config, size, quant)
    if size == 1 or device == "cpu":
        return
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return
    first = int(device.partition(":")[2] or 0)
    visible = torch.cuda.device_count()
    if first + size > visible:
        raise ShardingError(f"tensor_parallel_size={size} needs {size} GPUs from cuda:{first}, "
                            f"but {visible} are visible")


def make_runner(model_path: str, model_config: ModelConfig, config: EngineConfig, max_model_len: int) -> ModelRunner:
    """The engine's runner: the plain ModelRunner, or rank 0 of tensor_parallel_size ranks."""
    if config.tensor_parallel_size == 1:
        return ModelRunner(model_path, model_config, config, max_model_len)
    from .leader import TPModelRunner

    return TPModelRunner(model_path, model_config, config, max_model_len)
