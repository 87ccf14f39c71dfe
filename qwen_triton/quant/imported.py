"""Import a published GPTQ (AutoGPTQ / GPTQModel) or AutoAWQ GEMM checkpoint into our stored format.

A Hugging Face checkpoint folder (safetensors only) whose config.json carries `quantization_config`
(or, for older AutoGPTQ exports, a quantize_config.json beside it) is read through the architecture's
weight map (models/archs.py): each linear layer `p` of ours (q/k/v fused into qkv_proj, gate/up into
gate_up_proj, by stacking output rows exactly as the float loader does) comes back as p.qweight, p.scales,
p.zeros and, when any layer of the model uses act-order, p.perm for every layer (formats.py); every other
tensor (embeddings, norms, lm_head, biases) comes back as a float tensor under our name. The bit layouts
of the published formats are published.py's.

    detect_quantization(path)                  "gptq", "awq" or None (a float checkpoint)
    imported_settings(path)                    {"group_size": G, "act_order": bool}: QuantSpec fields
    import_checkpoint(path, config, method)    {our tensor name: tensor} for the whole model
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..models.archs import CONFIG_FILE, arch_spec, load_model_config, read_json
from ..models.loader import open_safetensors, tensor_files
from .published import (
    Int4Weight,
    PublishedFormatError,
    act_order_perm,
    concat_outputs,
    to_ours,
    unpack_awq,
    unpack_gptq,
)
from .spec import GROUP_SIZES

QUANTIZE_CONFIG_FILE = "quantize_config.json"  # AutoGPTQ's side file, before config.json carried the settings
METHODS = ("gptq", "awq")
GPTQ_FORMATS = ("gptq", "gptq_v2")
# Our linear layers (suffixes of our parameter names); lm_head stays float and is dequantized if stored 4-bit.
LINEAR_SUFFIXES = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class PublishedQuant:
    """A published checkpoint's quantization settings, validated."""

    method: str  # "gptq" | "awq"
    group_size: int
    desc_act: bool  # gptq act-order (awq: always False)
    sym: bool  # gptq sym; awq: not zero_point
    checkpoint_format: str  # gptq: "gptq" (v1) | "gptq_v2"; awq: "gemm"
    source: str  # the file the settings were read from


# -- settings --------------------------------------------------------------------------------------------


def _raw_settings(path: str) -> tuple[dict | None, str]:
    """The quantization settings dict and the file it came from; (None, config.json) when there are none."""
    config_path = os.path.join(path, CONFIG_FILE)
    raw = read_json(config_path).get("quantization_config")
    if raw is not None:
        if not isinstance(raw, dict):
            raise CheckpointError(f"{config_path}: quantization_config must be a JSON object")
        return raw, f"{config_path}: quantization_config"
    side = os.path.join(path, QUANTIZE_CONFIG_FILE)
    if os.path.exists(side):
        raw = read_json(side)
        return {"quant_method": "gptq", **raw}, side  # AutoGPTQ's side file predates quant_method
    return None, config_path


def detect_quantization(path: str | os.PathLike) -> str | None:
    """"gptq" or "awq" when the folder is a published checkpoint of that kind, None when it is not quantized.

    Another quant_method (bitsandbytes, fp8, ...) raises CheckpointError naming it."""
    raw, where = _raw_settings(os.fspath(path))
    if raw is None:
        return None
    method = str(raw.get("quant_method", "")).lower()
    if method not in METHODS:
        raise CheckpointError(f"{where}: quant_method {raw.get('quant_method')!r} is not supported "
                              f"(published {' and '.join(METHODS)} checkpoints are)")
    return method


def _field(raw: dict, where: str, *keys: str, default=None):
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    if default is None:
        raise CheckpointError(f"{where}: required field {keys[0]!r} is missing")
    return default


def _group_size(raw: dict, where: str) -> int:
    group_size = int(_field(raw, where, "group_size", "q_group_size"))
    if group_size not in GROUP_SIZES:
        what = "-1 (one group per row)" if group_size == -1 else str(group_size)
        raise CheckpointError(f"{where}: group_size {what} is not supported ({', '.join(map(str, GROUP_SIZES))} are)")
    return group_size


def read_published_quant(path: str | os.PathLike) -> PublishedQuant:
    """The validated settings of a published GPTQ / AWQ checkpoint; CheckpointError naming the field."""
    path = os.fspath(path)
    method = detect_quantization(path)
    raw, where = _raw_settings(path)
    if method is None:
        raise CheckpointError(f"{where}: no quantization_config: {path} is not a GPTQ or AWQ checkpoint")
    bits = int(_field(raw, where, "bits", "w_bit"))
    if bits != 4:
        raise CheckpointError(f"{where}: bits {bits} is not supported (only 4-bit {method} is)")
    group_size = _group_size(raw, where)
    if method == "gptq":
        fmt = str(raw.get("checkpoint_format") or raw.get("format") or "gptq").lower()
        if fmt not in GPTQ_FORMATS or raw.get("is_marlin_format"):
            fmt = "marlin" if raw.get("is_marlin_format") else fmt
            raise CheckpointError(f"{where}: checkpoint_format {fmt!r} is not supported "
                                  f"({', '.join(GPTQ_FORMATS)} are)")
        if raw.get("dynamic"):
            raise CheckpointError(f"{where}: per-module overrides ('dynamic') are not supported")
        return PublishedQuant("gptq", group_size, bool(raw.get("desc_act", False)), bool(raw.get("sym", True)),
                              fmt, where)
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise CheckpointError(f"{where}: AWQ version {raw.get('version')!r} is not supported (only gemm: "
                              "gemv, gemv_fast, marlin, exllama and ipex layouts are not)")
    if str(raw.get("backend", "autoawq")).lower() not in ("autoawq", ""):
        raise CheckpointError(f"{where}: AWQ backend {raw.get('backend')!r} is not supported (only autoawq)")
    if not raw.get("zero_point", True):
        raise CheckpointError(f"{where}: AWQ zero_point false is not supported (GEMM checkpoints have qzeros)")
    return PublishedQuant("awq", group_size, False, False, "gemm", where)


# -- tensors ---------------------------------------------------------------------------------------------


class _Tensors:
    """The checkpoint's tensors by name, each read on demand; remembers which were read."""

    def __init__(self, path: str, stack: ExitStack):
        self.path = path
        self.files = tensor_files(path)
        self.handles = {f: stack.enter_context(open_safetensors(f)) for f in sorted(set(self.files.values()))}
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise CheckpointError(f"{self.path}: missing tensor {name}")
        self.used.add(name)
        try:
            return self.handles[self.files[name]].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{self.files[name]}: cannot read {name} ({e})") from e

    def unused(self) -> list[str]:
        return sorted(set(self.files) - self.used)


def _layer_weight(tensors: _Tensors, module: str, quant: PublishedQuant) -> Int4Weight:
    """One published linear module (checkpoint prefix, e.g. model.layers.0.self_attn.q_proj) unpacked."""
    if not tensors.has(f"{module}.qweight"):
        if tensors.has(f"{module}.weight"):
            raise CheckpointError(f"{tensors.files[module + '.weight']}: {module} is stored unquantized "
                                  f"({module}.weight); every linear layer of a {quant.method} checkpoint must be "
                                  "4-bit (modules_to_not_convert is not supported)")
        raise CheckpointError(f"{tensors.path}: missing tensor {module}.qweight")
    qweight, qzeros, scales = (tensors.get(f"{module}.{t}") for t in ("qweight", "qzeros", "scales"))
    try:
        if quant.method == "awq":
            return unpack_awq(qweight, qzeros, scales, quant.group_size)
        g_idx = tensors.get(f"{module}.g_idx") if tensors.has(f"{module}.g_idx") else None
        if g_idx is None and quant.desc_act:
            raise CheckpointError(f"{tensors.path}: desc_act is true but {module}.g_idx is missing")
        return unpack_gptq(qweight, qzeros, scales, g_idx, quant.group_size, quant.checkpoint_format)
    except PublishedFormatError as e:
        raise CheckpointError(f"{tensors.files[module + '.qweight']}: {module}: {e}") from None


def _expected_shape(config: ModelConfig, ours: str) -> tuple[int, int]:
    """[N, K] of one of our linear layers."""
    hidden, width = config.hidden_size, config.intermediate_size
    shapes = {"self_attn.qkv_proj": (config.q_size + 2 * config.kv_size, hidden),
              "self_attn.o_proj": (hidden, config.q_size),
              "mlp.gate_up_proj": (2 * width, hidden), "mlp.down_proj": (hidden, width)}
    return shapes[ours.split(".", 2)[2]]


def _fused_weight(tensors: _Tensors, quant: PublishedQuant, config: ModelConfig, ours: str,
                  modules: list[str]) -> Int4Weight:
    """Our layer `ours` (e.g. layers.0.self_attn.qkv_proj) from its published parts, stacked on dim 0."""
    parts = [_layer_weight(tensors, m, quant) for m in modules]
    try:
        weight = concat_outputs(parts)
    except PublishedFormatError as e:
        raise CheckpointError(f"{tensors.path}: {ours} from {', '.join(modules)}: {e}") from None
    expected = _expected_shape(config, ours)
    if tuple(weight.codes.shape) != expected:
        got = ", ".join(f"{m} {list(p.codes.shape)}" for m, p in zip(modules, parts))
        raise CheckpointError(f"{tensors.path}: wrong shape for {ours}: expected [N, K] {list(expected)}; got {got}")
    if weight.group_size != quant.group_size:
        raise CheckpointError(f"{tensors.path}: {ours} has groups of {weight.group_size} channels, but "
                              f"{quant.source} says group_size {quant.group_size}")
    return weight


def linear_modules(weight_map: dict[str, list[str]]) -> dict[str, list[str]]:
    """Our linear layer -> its checkpoint modules, from the weight map's `<layer>.weight` entries."""
    out = {}
    for ours, names in weight_map.items():
        layer = ours.removesuffix(".weight")
        if ours.endswith(".weight") and layer.endswith(LINEAR_SUFFIXES):
            out[layer] = [n.removesuffix(".weight") for n in names]
    return out


def _uses_act_order(tensors: _Tensors, quant: PublishedQuant, layers: dict[str, list[str]]) -> bool:
    """Whether any layer's g_idx is not k // G (then every layer stores perm)."""
    if quant.method != "gptq":
        return False
    for ours, modules in layers.items():
        for module in modules:
            name = f"{module}.g_idx"
            if tensors.has(name):
                g_idx = tensors.get(name)
                groups = tensors.get(f"{module}.scales").shape[0]
                try:
                    if act_order_perm(g_idx, groups) is not None:
                        return True
                except PublishedFormatError as e:
                    raise CheckpointError(f"{tensors.files[name]}: {name} ({ours}): {e}") from None
    return False


# -- the whole model -------------------------------------------------------------------------------------


def imported_settings(path: str | os.PathLike) -> dict:
    """The QuantSpec fields a published checkpoint fixes: {"group_size": G, "act_order": bool}."""
    path = os.fspath(path)
    quant = read_published_quant(path)
    config = load_model_config(path)
    layers = linear_modules(arch_spec(config.arch, path).weight_names(config))
    with ExitStack() as stack:
        act_order = _uses_act_order(_Tensors(path, stack), quant, layers)
    return {"group_size": quant.group_size, "act_order": act_order}


def import_checkpoint(path: str | os.PathLike, config: ModelConfig | None = None, method: str | None = None,
                      dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of our model from a published GPTQ / AWQ checkpoint folder (see the module docstring).

    config: the folder's ModelConfig (read when None). method: "gptq" or "awq" to insist on one.
    dtype: cast the float tensors (embeddings, norms, lm_head, biases) to it; None keeps the stored dtype.
    Quantized tensors are as formats.py stores them (scales float32)."""
    path = os.fspath(path)
    quant = read_published_quant(path)
    if method is not None and method != quant.method:
        raise CheckpointError(f"{quant.source}: expected a {method} checkpoint; this one is {quant.method}")
    config = config or load_model_config(path)
    weight_map = arch_spec(config.arch, path).weight_names(config)
    layers = linear_modules(weight_map)
    out: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        tensors = _Tensors(path, stack)
        with_perm = _uses_act_order(tensors, quant, layers)
        for ours, modules in layers.items():
            weight = _fused_weight(tensors, quant, config, ours, modules)
            try:
                stored = to_ours(weight, with_perm)
            except PublishedFormatError as e:
                raise CheckpointError(f"{tensors.path}: {ours} from {', '.join(modules)}: {e}") from None
            out.update({f"{ours}.{k}": v for k, v in stored.items()})
        for ours, names in weight_map.items():
            if ours.removesuffix(".weight") not in layers:
                tensor = torch.cat([_float_tensor(tensors, n, quant) for n in names])
                out[ours] = tensor if dtype is None else tensor.to(dtype)
        _check_unused(tensors, config)
    return out


def _float_tensor(tensors: _Tensors, name: str, quant: PublishedQuant) -> torch.Tensor:
    """A float tensor; lm_head.weight dequantized when the checkpoint stores lm_head 4-bit (GPTQModel lm_head)."""
    module = name.removesuffix(".weight")
    if name == "lm_head.weight" and not tensors.has(name) and tensors.has(f"{module}.qweight"):
        return _layer_weight(tensors, module, quant).dequantize()
    return tensors.get(name)


def _check_unused(tensors: _Tensors, config: ModelConfig) -> None:
    """Nothing left over but derived buffers, a tied checkpoint's lm_head and all-zero biases (AutoGPTQ
    may store a zero bias for a layer that has none)."""
    unexpected = []
    for name in tensors.unused():
        if name.endswith(_IGNORED_SUFFIXES) or (config.tie_word_embeddings and name.startswith("lm_head.")):
            continue
        if name.endswith(".bias") and not tensors.get(name).any():
            continue
        unexpected.append(name)
    if unexpected:
        more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
        raise CheckpointError(f"{tensors.path}: unexpected tensors (wrong model_type or num_hidden_layers?): "
                              f"{', '.join(unexpected[:8])}{more}")
