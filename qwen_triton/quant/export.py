"""Write a checkpoint folder in a published 4-bit format (GPTQ or AutoAWQ GEMM), as those tools save one.

The folder holds config.json (the source's, plus `quantization_config`), the source's tokenizer and
other metadata files, and model.safetensors with the published tensor names: for each quantized module
`m` (a checkpoint prefix such as model.layers.0.self_attn.q_proj) m.qweight, m.qzeros, m.scales (fp16)
and, for GPTQ, m.g_idx, plus m.bias when the source has one; every other tensor as the source stores it,
cast to `float_dtype`. Used by tools/quantize_int4.py and by the tests of the importer (imported.py).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.archs import CONFIG_FILE, read_json
from ..models.loader import open_safetensors, tensor_files
from .published import Int4Weight, pack_awq, pack_gptq

MODEL_FILE = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# not copied: config.json (rewritten), the shard index, our own build's files (the quant spec, the GGUF
# import's manifest of the files it wrote: they describe the source folder, not this one)
_NOT_COPIED = (CONFIG_FILE, "model.safetensors.index.json", "random_weights.json", "qwen_triton_quant.json",
               "gguf_manifest.json", ".qwen_triton_build.json")


def quantization_config(method: str, group_size: int, *, desc_act: bool = False, sym: bool = True,
                        checkpoint_format: str = "gptq", damp_percent: float = 0.01) -> dict:
    """config.json's `quantization_config` as GPTQModel ("gptq") or AutoAWQ ("awq", GEMM) write it."""
    if method == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": desc_act, "sym": sym,
                "damp_percent": damp_percent, "static_groups": False, "true_sequential": False,
                "checkpoint_format": checkpoint_format}
    if method == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    raise ValueError(f"method must be gptq or awq; got {method!r}")


def _packed(method: str, weight: Int4Weight, checkpoint_format: str) -> dict[str, torch.Tensor]:
    return pack_gptq(weight, checkpoint_format) if method == "gptq" else pack_awq(weight)


def write_published_checkpoint(dst: str | os.PathLike, src: str | os.PathLike, layers: dict[str, Int4Weight],
                               quant_config: dict, *, overrides: dict[str, torch.Tensor] | None = None,
                               float_dtype: torch.dtype = torch.float16) -> Path:
    """Write `dst` (replaced) from the float checkpoint folder `src`.

    layers: checkpoint module prefix -> its 4-bit weight (replaces <prefix>.weight).
    quant_config: quantization_config() for config.json; its quant_method picks the packing.
    overrides: checkpoint tensor name -> float tensor written instead of the source's (AWQ's scaled norms).
    float_dtype: the dtype of every float tensor written (fp16, as the published checkpoints ship)."""
    src, dst = Path(src), Path(dst)
    method = quant_config["quant_method"]
    fmt = quant_config.get("checkpoint_format", "gptq")
    overrides = overrides or {}
    out: dict[str, torch.Tensor] = {}
    files = tensor_files(str(src))
    replaced = {f"{m}.weight" for m in layers}
    missing = sorted((replaced | set(overrides)) - files.keys())
    if missing:
        raise ValueError(f"{src}: no tensors {missing}")
    with ExitStack() as stack:
        handles = {f: stack.enter_context(open_safetensors(f)) for f in sorted(set(files.values()))}
        for name, file in files.items():
            if name in replaced:
                continue
            tensor = overrides[name] if name in overrides else handles[file].get_tensor(name)
            out[name] = tensor.to(float_dtype) if tensor.dtype.is_floating_point else tensor
    for module, weight in layers.items():
        out.update({f"{module}.{k}": v for k, v in _packed(method, weight, fmt).items()})
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    _copy_metadata(src, dst)
    config = read_json(str(src / CONFIG_FILE))
    config["quantization_config"] = quant_config
    config["torch_dtype"] = str(float_dtype).removeprefix("torch.")
    config.pop("dtype", None)
    with open(dst / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in out.items()}, str(dst / MODEL_FILE), metadata={"format": "pt"})
    return dst


def _copy_metadata(src: Path, dst: Path) -> None:
    """Tokenizer, generation config, chat template ...: every file but weights and config.json."""
    for path in src.iterdir():
        if path.is_file() and path.suffix not in _WEIGHT_SUFFIXES and path.name not in _NOT_COPIED:
            shutil.copy2(path, dst / path.name)
