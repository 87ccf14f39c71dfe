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
from ..quant.linear import QuantLinear, prepare_model
from ..quant.spec import read_quant_spec
from .archs import CONFIG_FILE, WeightMap, arch_spec, read_json
from .decoder import DecoderForCausalLM
from .layers import TORCH_OPS, LayerOps
from .sharding import SINGLE, Shard

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# A folder with config.json and this file (and no safetensors) holds no weights:
# the model is initialised randomly on the device (benchmarks at a real model's
# shapes without writing gigabytes of checkpoint). See write_random_checkpoint.
RANDOM_WEIGHTS_FILE = "random_weights.json"

# Calibrated KV-cache scales of a quantized checkpoint: optional, beside the state dict.
KV_SCALE_SUFFIX = ".self_attn.kv_scale"
# Checkpoint tensors that are derived buffers, not weights: skipped when present.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# -- safetensors ---------------------------------------------------------------


def tensor_files(path: str) -> dict[str, str]:
    """Checkpoint tensor name -> the safetensors file holding it (model.safetensors, or the shards of its
    index); CheckpointError naming the folder when there are none (or only pickle files)."""
    index_path = os.path.join(path, SAFETENSORS_INDEX_FILE)
    single_path = os.path.join(path, SAFETENSORS_FILE)
    if os.path.exists(index_path):
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' object")
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    if os.path.exists(single_path):
        with open_safetensors(single_path) as f:
            return dict.fromkeys(f.keys(), single_path)  # safe_open is not iterable
    if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in os.listdir(path)):
        raise CheckpointError(
            f"{path}: only pytorch_model*.bin found; safetensors weights are required "
            "(pickle checkpoints are never loaded; convert them to model.safetensors)"
        )
    raise CheckpointError(f"{path}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE}")


def open_safetensors(file: str):
    """safe_open on the CPU, its errors as CheckpointError naming the file."""
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


def _fill(model: DecoderForCausalLM, name: str, parts: list[tuple[str, torch.Tensor]], path: str) -> None:
    """Copy the stacked checkpoint tensors into our parameter `name` (casting dtype); under tensor
    parallelism, this rank's part of them."""
    param = model.get_parameter(name)
    shapes = [tuple(t.shape) for _, t in parts]
    whole = (sum(s[0] for s in shapes), *shapes[0][1:])  # the stacked tensor's shape
    expected = tuple(model.shard.split(name, torch.empty(whole, device="meta"), model.config).shape)
    same_trailing = all(len(s) == len(whole) and s[1:] == whole[1:] for s in shapes)
    if not same_trailing or expected != tuple(param.shape):
        got = ", ".join(f"{n} {list(s)}" for (n, _), s in zip(parts, shapes, strict=True))
        part = " (this rank's part)" if model.shard.parallel else ""
        raise CheckpointError(f"{path}: wrong shape for {name}: expected {list(param.shape)}{part}; got {got}")
    if model.shard.parallel:
        param.copy_(model.shard.split(name, torch.cat([t for _, t in parts]), model.config))
        return
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
    quant_kernels: str = "auto",
    shard: Shard = SINGLE,
) -> DecoderForCausalLM:
    """Build the model for `config` on `device` in `dtype` and fill it from the
    folder's safetensors (model.safetensors, or shards listed in the index), or
    randomly when the folder is a random-weight checkpoint (RANDOM_WEIGHTS_FILE).

    A folder with a QUANT_FILE (written by the build) holds a quantized model under our own tensor
    names; its quantized layers then compute with `quant_kernels`: "torch" (the reference), "kernels"
    (GPU kernels) or "auto" (kernels on CUDA).

    `shard` (tensor parallel, sharding.py): the model holds, and this loads, only this rank's part of
    each tensor: the whole tensor is read (or drawn, for random weights, exactly as the unsplit model
    draws it) and split."""
    path = os.fspath(path)
    quant = read_quant_spec(path)
    with torch.device("meta"):  # no memory and no random init for weights about to be overwritten
        model = DecoderForCausalLM(config, attn_backend, dtype, ops, quant, shard)
    model.to_empty(device=device)
    model.rotary.reset_parameters()
    for layer in model.layers:
        layer.self_attn.reset_kv_scale()
    random_spec = os.path.join(path, RANDOM_WEIGHTS_FILE)
    if os.path.exists(random_spec) and not _has_safetensors(path):
        spec = read_json(random_spec)
        _init_random(model, int(spec.get("seed", 0)), float(spec.get("std", 0.02)))
    elif quant is not None:
        _fill_quantized(model, path)
    else:
        _fill_from_checkpoint(model, config, path)
    if quant is not None:
        if quant_kernels == "auto":
            quant_kernels = "kernels" if torch.device(device).type == "cuda" else "torch"
        prepare_model(model, quant_kernels)
    return model.eval()


def _fill_from_checkpoint(model: DecoderForCausalLM, config: ModelConfig, path: str) -> None:
    """Our parameters from a Hugging Face checkpoint's tensors, through the arch's weight map."""
    weight_map = arch_spec(config.arch, path).weight_names(config)
    files = tensor_files(path)
    _check_names(weight_map, files, path)
    params = dict(model.named_parameters())
    if params.keys() != weight_map.keys():  # a bug in a weight map, not in the checkpoint
        raise AssertionError(f"weight map mismatch: {sorted(params.keys() ^ weight_map.keys())}")

    with ExitStack() as stack:
        handles = {}
        for file in sorted({files[n] for names in weight_map.values() for n in names}):
            handles[file] = stack.enter_context(open_safetensors(file))
        for ours, names in weight_map.items():
            try:
                parts = [(n, handles[files[n]].get_tensor(n)) for n in names]
            except Exception as e:
                raise CheckpointError(f"{path}: cannot read {names} ({e})") from e
            _fill(model, ours, parts, path)


def _fill_quantized(model: DecoderForCausalLM, path: str) -> None:
    """Every tensor of our state dict from the build's quantized checkpoint, stored under our names, and
    the calibrated KV-cache scales (layers.{i}.self_attn.kv_scale) when the build wrote them."""
    state = model.state_dict()
    state.update({f"layers.{i}.self_attn.kv_scale": layer.self_attn.kv_scale for i, layer in enumerate(model.layers)})
    files = tensor_files(path)
    kv_names = {n for n in state if n.endswith(KV_SCALE_SUFFIX)}
    state = {n: t for n, t in state.items() if n not in kv_names or n in files}
    missing = sorted(state.keys() - files.keys())
    unexpected = sorted(files.keys() - state.keys())
    if missing or unexpected:
        raise CheckpointError(f"{path}: quantized checkpoint does not match the model "
                              f"(missing: {_listed(missing) or '-'}; unexpected: {_listed(unexpected) or '-'}); "
                              "rebuild it with `python -m build`")
    with ExitStack() as stack:
        handles = {f: stack.enter_context(open_safetensors(f)) for f in sorted(set(files.values()))}
        for name, target in state.items():
            tensor = model.shard.split(name, handles[files[name]].get_tensor(name), model.config)
            if tuple(tensor.shape) != tuple(target.shape):
                raise CheckpointError(f"{path}: wrong shape for {name}: expected {list(target.shape)}, "
                                      f"got {list(tensor.shape)}")
            if tensor.dtype != target.dtype and not target.dtype.is_floating_point:
                raise CheckpointError(f"{path}: {name} is {tensor.dtype}, expected {target.dtype}")
            target.copy_(tensor)


# -- random weights (benchmarks) -------------------------------------------------


def _has_safetensors(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE))


@torch.no_grad()
def _init_random(model: DecoderForCausalLM, seed: int, std: float) -> None:
    """Fill every parameter on its device: norms 1, biases and weights N(0, std); a quantized layer
    quantizes a N(0, std) weight drawn for it (one layer at a time: a 7B model never exists in float).
    A tensor-parallel rank draws each whole tensor as the unsplit model does and keeps its part, so
    every tensor_parallel_size computes the same model."""
    whole = _unsplit(model)
    gen = None
    for name, param in model.named_parameters():
        if gen is None or gen.device != param.device:
            gen = torch.Generator(device=param.device).manual_seed(seed)
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif model.shard.parallel:
            full = torch.empty(whole.get_parameter(name).shape, dtype=param.dtype, device=param.device)
            param.copy_(model.shard.split(name, full.normal_(0.0, std, generator=gen), model.config))
        else:
            param.normal_(0.0, std, generator=gen)
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantLinear):
            continue
        device = layer.scales.device
        src = whole.get_submodule(name)  # the unsplit layer (this one at tensor_parallel_size 1)
        weight = torch.empty(src.out_features, src.in_features, device=device)
        weight.normal_(0.0, std, generator=torch.Generator(device=device).manual_seed(seed))
        layer.quantize_from(model.shard.split(f"{name}.weight", weight, model.config))
        if getattr(layer, "act_scale", None) is not None:
            layer.act_scale.fill_(std * 4 / 127)  # about the absmax of unit-scale activations


def _unsplit(model: DecoderForCausalLM) -> DecoderForCausalLM:
    """The whole model on the meta device (no memory): the shapes a tensor-parallel rank's parts come from."""
    if not model.shard.parallel:
        return model
    with torch.device("meta"):
        return DecoderForCausalLM(model.config, model.layers[0].self_attn.attn_backend, quant=model.quant)


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
