"""Decoder models: one generic decoder and the loader that fills it from a
Hugging Face checkpoint folder.

Supported architectures (config.json `model_type`): llama, qwen2, qwen3 and the
original qwen. `ARCHS` maps each to how its config and tensor names are read.
"""
from .archs import ARCHS, SUPPORTED_ARCHS, ArchSpec, load_model_config
from .batch import ForwardBatch
from .decoder import DecoderForCausalLM
from .loader import load_model

__all__ = [
    "ARCHS",
    "SUPPORTED_ARCHS",
    "ArchSpec",
    "DecoderForCausalLM",
    "ForwardBatch",
    "load_model",
    "load_model_config",
]
