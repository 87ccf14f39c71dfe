"""Fill a DecoderForCausalLM from a local Hugging Face checkpoint folder's safetensors weights.

Weights are read only from safetensors (memory-mapped, never unpickled), under the tensor names
the architecture's `ArchSpec` gives (archs.py). A folder holding only config.json and
RANDOM_WEIGHTS_FILE is a random-weight checkpoint (benchmarks at a real model's shapes).
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack

import torch
from safetensors import safe_open

from ..attention import AttentionBackend
from ..config import ModelConfig
from ..errors import CheckpointError
from .archs import CONFIG_FILE, WeightMap, arch_spec, read_json
from .decoder import DecoderForCausalLM
from .layers import TORCH_OPS, LayerOps

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# A folder with config.json and this file (and no safetensors) holds no weights:
# the model is initialised randomly on the device (benchmarks at a real model's
# shapes without writing gigabytes of checkpoint). See write_random_checkpoint.
RANDOM_WEIGHTS_FILE = "random_weights.json"

# Checkpoint tensors that are derived buffers, not weights: skipped when present.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# -- safetensors ---------------------------------------------------------------


def _tensor_files(path: str) -> dict[str, str]:
    """Checkpoint tensor name -> the safetensors file holding it."""
    index_path = os.path.join(path, SAFETENSORS_INDEX_FILE)
    single_path = os.path.join(path, SAFETENSORS_FILE)
    if os.path.exists(index_path):
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' object")
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    if os.path.exists(single_path):
        with _open_safetensors(single_path) as f:
            return dict.fromkeys(f.keys(), single_path)  # safe_open is not iterable
    if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in os.listdir(path)):
        raise CheckpointError(
            f"{path}: only pytorch_model*.bin found; safetensors weights are required "
            "(pickle checkpoints are never loaded; convert them to model.safetensors)"
        )
    raise CheckpointError(f"{path}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE}")


def _open_safetensors(file: str):
    if not os.path.exists(file):
        raise CheckpointError(f"{file}: safetensors file not found")
    try:
        return safe_open(file, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from e


def _listed(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_names(weight_map: WeightMap, files: dict[str, str], path: str) -> None:
    """Every expected tensor present; nothing unexpected beyond derived buffers."""
    wanted = {name for names in weight_map.values() for name in names}
    missing = sorted(wanted - files.keys())
    if missing:
        raise CheckpointError(f"{path}: missing tensors: {_listed(missing)}")
    # A tied checkpoint may still carry lm_head.weight; it is unused.
    unexpected = sorted(
        n for n in files.keys() - wanted if not n.endswith(_IGNORED_SUFFIXES) and n != "lm_head.weight"
    )
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors (wrong model_type or num_hidden_layers?): {_listed(unexpected)}"
        )


def _fill(param: torch.Tensor, name: str, parts: list[tuple[str, torch.Tensor]], path: str) -> None:
    """Copy the stacked checkpoint tensors into one of our parameters (casting dtype)."""
    shapes = [tuple(t.shape) for _, t in parts]
    same_trailing = all(len(s) == param.dim() and s[1:] == tuple(param.shape[1:]) for s in shapes)
    if not same_trailing or sum(s[0] for s in shapes) != param.shape[0]:
        got = ", ".join(f"{n} {list(s)}" for (n, _), s in zip(parts, shapes, strict=True))
        raise CheckpointError(f"{path}: wrong shape for {name}: expected {list(param.shape)}; got {got}")
    offset = 0
    for _, tensor in parts:
        param[offset:offset + tensor.shape[0]].copy_(tensor)
        offset += tensor.shape[0]


@torch.no_grad()
def load_model(
    path: str | os.PathLike,
    config: ModelConfig,
    dtype: torch.dtype,
    device: str | torch.device,
    attn_backend: AttentionBackend,
    ops: LayerOps = TORCH_OPS,
) -> DecoderForCausalLM:
    """Build the model for `config` on `device` in `dtype` and fill it from the
    folder's safetensors (model.safetensors, or shards listed in the index), or
    randomly when the folder is a random-weight checkpoint (RANDOM_WEIGHTS_FILE)."""
    path = os.fspath(path)
    with torch.device("meta"):  # no memory and no random init for weights about to be overwritten
        model = DecoderForCausalLM(config, attn_backend, dtype, ops)
    model.to_empty(device=device)
    model.rotary.reset_parameters()
    random_spec = os.path.join(path, RANDOM_WEIGHTS_FILE)
    if os.path.exists(random_spec) and not _has_safetensors(path):
        spec = read_json(random_spec)
        _init_random(model, int(spec.get("seed", 0)), float(spec.get("std", 0.02)))
        return model.eval()
    weight_map = arch_spec(config.arch, path).weight_names(config)
    files = _tensor_files(path)
    _check_names(weight_map, files, path)
    params = dict(model.named_parameters())
    if params.keys() != weight_map.keys():  # a bug in a weight map, not in the checkpoint
        raise AssertionError(f"weight map mismatch: {sorted(params.keys() ^ weight_map.keys())}")

    with ExitStack() as stack:
        handles = {}
        for file in sorted({files[n] for names in weight_map.values() for n in names}):
            handles[file] = stack.enter_context(_open_safetensors(file))
        for ours, names in weight_map.items():
            try:
                parts = [(n, handles[files[n]].get_tensor(n)) for n in names]
            except Exception as e:
                raise CheckpointError(f"{path}: cannot read {names} ({e})") from e
            _fill(params[ours], ours, parts, path)
    return model.eval()


# -- random weights (benchmarks) -------------------------------------------------


def _has_safetensors(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE))


@torch.no_grad()
def _init_random(model: DecoderForCausalLM, seed: int, std: float) -> None:
    """Fill every parameter on its device: norms 1, biases and weights N(0, std)."""
    gen = None
    for name, param in model.named_parameters():
        if gen is None or gen.device != param.device:
            gen = torch.Generator(device=param.device).manual_seed(seed)
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)


def write_random_checkpoint(path: str | os.PathLike, config_json: dict, seed: int = 0,
                            std: float = 0.02) -> str:
    """Write a weightless checkpoint folder: `config_json` as config.json plus
    RANDOM_WEIGHTS_FILE; load_model then initialises the weights randomly."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config_json, f, indent=2)
    with open(os.path.join(path, RANDOM_WEIGHTS_FILE), "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "std": std}, f)
    return path
