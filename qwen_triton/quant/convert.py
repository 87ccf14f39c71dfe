"""The build's converter: a checkpoint folder in, a quantized checkpoint folder out (`quantize_checkpoint`).

The output holds config.json and the tokenizer files copied from the source, model.safetensors with every
tensor of our model under our own names (quantized layers as formats.py stores them; embeddings, norms and
lm_head in the source's dtype) and QUANT_FILE with the QuantSpec. The engine loads it as it is: nothing is
calibrated or quantized at serve time.

  int8_wo, int4_wo, fp8      the float checkpoint's weights quantized (round to nearest)
  w8a8                       SmoothQuant over the calibration prompts, then int8 weights
  gptq, awq                  a published checkpoint of that format converted to ours (imported.py)
  kv_cache int8 / fp8        calibrated: K and V absmax per layer over the calibration prompts, measured on
                             the quantized model itself
A random-weight checkpoint stays random: its quantized layers are drawn and quantized when loaded.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .formats import FP8_MAX, INT8_MAX, quantize_int8
from .spec import ACTIVATION_MODES, IMPORTED_MODES, QuantSpec, QuantSpecError, write_quant_spec

QUANTIZED_FILE = "model.safetensors"
# Source files that are weights (replaced by ours), not metadata to copy.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_NOT_COPIED = ("model.safetensors.index.json", "random_weights.json")


def quantize_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, spec: QuantSpec,
                        say: Callable[[str], None] = print) -> Path:
    """Write the quantized checkpoint of `src` under `spec` into `dst` (replaced); returns dst."""
    from ..models import load_model_config
    from ..models.loader import RANDOM_WEIGHTS_FILE

    src, dst = Path(src), Path(dst)
    config = load_model_config(src)
    spec = _checked_spec(src, config, spec)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    _copy_metadata(src, dst, keep_random=(src / RANDOM_WEIGHTS_FILE).exists() and not _weight_files(src))
    if (dst / RANDOM_WEIGHTS_FILE).exists():
        write_quant_spec(dst, spec)  # random weights: drawn and quantized by the loader
        return dst
    weights_spec = dataclasses.replace(spec, kv_cache="auto")
    if spec.weights in IMPORTED_MODES:
        from .imported import import_checkpoint

        say(f"quantization: importing the {spec.weights} checkpoint {src}")
        state = import_checkpoint(src, config, spec.weights)
        if spec.lm_head:  # the imported head is float: ours in int8
            state.update({f"lm_head.{k}": v for k, v in quantize_int8(state.pop("lm_head.weight")).items()})
        _save(state, dst, weights_spec)
    else:
        _quantize_float(src, dst, config, weights_spec, say)
    if spec.kv_cache != "auto":
        _calibrate_kv(dst, spec, say)
    write_quant_spec(dst, spec)
    return dst


def _checked_spec(src: Path, config, spec: QuantSpec) -> QuantSpec:
    """spec completed from an imported checkpoint's own settings; impossible combinations raise."""
    from .imported import detect_quantization, imported_settings

    found = detect_quantization(src)
    if spec.weights in IMPORTED_MODES:
        if found != spec.weights:
            raise QuantSpecError(f"quantization={spec.weights} imports a published {spec.weights} checkpoint, but "
                                 f"{src} is {'a ' + found + ' checkpoint' if found else 'not quantized'}")
        spec = dataclasses.replace(spec, **imported_settings(src))
    elif found:
        raise QuantSpecError(f"{src} is already a {found} checkpoint: build it with quantization={found}")
    if spec.lm_head and config.tie_word_embeddings:
        raise QuantSpecError("quant_lm_head: this checkpoint ties its LM head to the embeddings "
                             "(the embedding table stays in the model's dtype); leave it off")
    if spec.weights in ("int4_wo",) + IMPORTED_MODES:
        for name, k in (("hidden_size", config.hidden_size), ("intermediate_size", config.intermediate_size),
                        ("num_heads * head_dim", config.q_size)):
            if k % spec.group_size:
                raise QuantSpecError(f"{name}={k} is not a multiple of quant_group_size={spec.group_size}")
    return spec


def _weight_files(src: Path) -> list[Path]:
    return [p for p in src.iterdir() if p.suffix in _WEIGHT_SUFFIXES]


def _copy_metadata(src: Path, dst: Path, keep_random: bool) -> None:
    for path in src.iterdir():
        if path.is_file() and path.suffix not in _WEIGHT_SUFFIXES and (
                path.name not in _NOT_COPIED or keep_random and path.name == "random_weights.json"):
            shutil.copy2(path, dst / path.name)


def _storage_dtype(src: Path) -> torch.dtype:
    """The dtype the source stores its floating-point tensors in (float32 when it cannot tell)."""
    for file in sorted(src.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                mapping = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
                if dtype in mapping:
                    return mapping[dtype]
    return torch.float32


CALIBRATION_LEN = 2048  # longest calibration sequence (the set's longest is 638 tokens): a small KV pool


def _engine(path: Path):
    """Our engine on `path` in float32 on the CPU, one sequence of at most CALIBRATION_LEN tokens."""
    from ..config import EngineConfig
    from ..engine import LLMEngine
    from ..models import load_model_config

    length = min(CALIBRATION_LEN, load_model_config(path).max_position)
    return LLMEngine(str(path), EngineConfig(device="cpu", dtype="float32", max_num_seqs=1, max_model_len=length,
                                             max_num_batched_tokens=1024, enforce_eager=True))


def _calibration_ids(path: Path, spec: QuantSpec) -> list[list[int]]:
    from ..chat import load_tokenizer
    from .calibration import calibration_token_ids

    return calibration_token_ids(load_tokenizer(path), spec.calib_prompts)


@torch.no_grad()
def _quantize_float(src: Path, dst: Path, config, spec: QuantSpec, say: Callable[[str], None]) -> None:
    """Quantize a float checkpoint's linear layers (after SmoothQuant for w8a8) and save them."""
    from .calibrate import collect_stats
    from .smooth import smooth_model

    engine = _engine(src)  # the float model, in float32 on the CPU
    model = engine.runner.model
    act_absmax: dict[str, torch.Tensor] = {}
    if spec.weights == "w8a8" or (spec.weights in ACTIVATION_MODES and spec.act_scales == "per_tensor"):
        stats = collect_stats(engine, _calibration_ids(src, spec))
        say(f"quantization: calibrated activations over {stats.tokens} tokens")
        act_absmax = stats.act_absmax
        if spec.weights == "w8a8":
            act_absmax = smooth_model(model, stats, spec.smooth_alpha)
    _save(_quantized_state(model, config, spec, act_absmax), dst, spec, _storage_dtype(src))


def _quantized_state(model, config, spec: QuantSpec, act_absmax: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """Our state dict under `spec` from a float model: each linear quantized, the rest as it is."""
    from ..attention.torch_backend import TorchAttentionBackend
    from ..models.decoder import DecoderForCausalLM
    from .linear import QuantLinear

    with torch.device("meta"):
        skeleton = DecoderForCausalLM(config, TorchAttentionBackend(), torch.float32, quant=spec)
    skeleton.to_empty(device="cpu")
    float_params = dict(model.named_parameters())
    qmax = INT8_MAX if spec.weights == "w8a8" else FP8_MAX
    for name, module in skeleton.named_modules():
        if isinstance(module, QuantLinear):
            module.quantize_from(float_params[f"{name}.weight"])
            if getattr(module, "act_scale", None) is not None:
                module.act_scale.fill_(float(act_absmax[name].max()) / qmax)
    for name, param in skeleton.named_parameters():
        param.copy_(float_params[name])
    return skeleton.state_dict()


def _save(state: dict[str, torch.Tensor], dst: Path, spec: QuantSpec, storage: torch.dtype = torch.float32) -> None:
    """Write `state` (float tensors cast to `storage`, quantized ones as they are) and the spec."""
    out = {}
    for name, tensor in state.items():
        if tensor.dtype.is_floating_point and tensor.dtype != torch.float8_e4m3fn and not _is_quant_scale(name):
            tensor = tensor.to(storage)
        out[name] = tensor.contiguous()
    save_file(out, str(dst / QUANTIZED_FILE))
    write_quant_spec(dst, spec)


def _is_quant_scale(name: str) -> bool:
    return name.endswith((".scales", ".act_scale", ".kv_scale"))


@torch.no_grad()
def _calibrate_kv(dst: Path, spec: QuantSpec, say: Callable[[str], None]) -> None:
    """K/V scales of each layer from the quantized model's own keys and values (dynamic: nothing to do)."""
    if spec.kv_scales != "calibrated":
        return
    from safetensors.torch import load_file

    from .calibrate import collect_stats

    stats = collect_stats(_engine(dst), _calibration_ids(dst, spec))
    say(f"quantization: calibrated the KV cache over {stats.tokens} tokens")
    qmax = INT8_MAX if spec.kv_cache == "int8" else FP8_MAX
    state = load_file(str(dst / QUANTIZED_FILE))
    for i, row in enumerate(stats.kv_absmax):
        state[f"layers.{i}.self_attn.kv_scale"] = (row / qmax).clamp_min(1e-8).float()
    save_file(state, str(dst / QUANTIZED_FILE))
