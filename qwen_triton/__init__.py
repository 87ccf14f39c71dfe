"""qwen-triton: serve Qwen and LLaMA chat models on NVIDIA Triton with inflight batching."""
from .config import EngineConfig, ModelConfig
from .errors import (
    CheckpointError,
    DuplicateRequestError,
    EngineDeadError,
    InvalidRequestError,
    QwenTritonError,
    UnsupportedModelError,
)
from .outputs import EngineStats, RequestOutput
from .sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "BackgroundEngine", "CheckpointError", "DuplicateRequestError", "EngineConfig", "EngineDeadError",
    "EngineStats", "InvalidRequestError", "LLMEngine", "ModelConfig", "QwenTritonError", "RequestOutput",
    "SamplingParams", "UnsupportedModelError",
]


def __getattr__(name: str):
    # The engine pulls in torch; keep `import qwen_triton` light for the
    # Triton pre/postprocessing models, which need only the chat layer.
    if name == "LLMEngine":
        from .engine import LLMEngine
        return LLMEngine
    if name == "BackgroundEngine":
        from .background import BackgroundEngine
        return BackgroundEngine
    raise AttributeError(name)
