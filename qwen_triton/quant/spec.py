"""What a quantized checkpoint holds: `QuantSpec`, written by the build as QUANT_FILE beside config.json.

Modes (`weights`):
  none     the checkpoint's own floating-point weights
  int8_wo  int8 weights, one scale per output channel; activations stay 16/32-bit
  int4_wo  4-bit weights, group-wise asymmetric round-to-nearest (group_size 64 or 128)
  gptq     4-bit weights imported from a published GPTQ checkpoint (qweight/qzeros/scales/g_idx)
  awq      4-bit weights imported from an AutoAWQ GEMM checkpoint (qweight/qzeros/scales)
  w8a8     SmoothQuant: int8 weights (per channel or per tensor) and int8 activations
           (per token, dynamic; or per tensor, calibrated)
  fp8      float8 e4m3 weights and activations (per channel or per tensor weight scales)
KV cache (`kv_cache`): auto (the model's dtype), int8 or fp8, with `kv_scales` calibrated (one K and one V
scale per layer, from the build's calibration prompts) or dynamic (one scale per token and KV head, computed
as the cache is written).

gptq, awq and int4_wo share one stored format (formats.py), so one kernel serves all three.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

QUANT_FILE = "qwen_triton_quant.json"
WEIGHT_MODES = ("none", "int8_wo", "int4_wo", "gptq", "awq", "w8a8", "fp8")
INT4_MODES = ("int4_wo", "gptq", "awq")
IMPORTED_MODES = ("gptq", "awq")  # read from a checkpoint that is already quantized
ACTIVATION_MODES = ("w8a8", "fp8")  # activations quantized too
KV_MODES = ("auto", "int8", "fp8")
KV_SCALES = ("calibrated", "dynamic")
WEIGHT_SCALES = ("per_channel", "per_tensor")
ACT_SCALES = ("per_token", "per_tensor")
GROUP_SIZES = (32, 64, 128)
# TensorRT-LLM's names for the same modes (build/trtllm.py), accepted as QUANT= spellings too.
TRTLLM_NAMES = {"int8_wo": "int8_wo", "int4_wo": "int4_wo", "gptq": "int4_gptq", "awq": "int4_awq",
                "w8a8": "int8_sq", "fp8": "fp8", "none": "none"}


class QuantSpecError(ValueError):
    """A quantization setting that is impossible, named with the reason."""


@dataclass(frozen=True)
class QuantSpec:
    """How a checkpoint's linear layers and KV cache are quantized (see the module docstring)."""

    weights: str = "none"
    group_size: int = 128  # int4 modes: input channels per scale and zero point
    act_order: bool = False  # gptq desc_act: each layer stores `perm`, its input channels' order
    weight_scales: str = "per_channel"  # w8a8, fp8
    act_scales: str = "per_token"  # w8a8, fp8: dynamic per token, or one calibrated scale per tensor
    smooth_alpha: float = 0.5  # w8a8: migration strength of SmoothQuant
    kv_cache: str = "auto"
    kv_scales: str = "calibrated"
    calib_prompts: int = 32  # prompts of the calibration set the build runs (w8a8, per_tensor, kv calibrated)
    lm_head: bool = False  # the LM head as int8 weight-only too (untied heads; 9% of Qwen-7B's weight bytes)

    def __post_init__(self) -> None:
        for name, choices in (("weights", WEIGHT_MODES), ("weight_scales", WEIGHT_SCALES),
                              ("act_scales", ACT_SCALES), ("kv_cache", KV_MODES), ("kv_scales", KV_SCALES)):
            if getattr(self, name) not in choices:
                raise QuantSpecError(f"quantization {name} must be one of {', '.join(choices)}; "
                                     f"got {getattr(self, name)!r}")
        if self.weights in INT4_MODES and self.group_size not in GROUP_SIZES:
            raise QuantSpecError(f"quant_group_size must be one of {GROUP_SIZES} for {self.weights}; "
                                 f"got {self.group_size}")
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise QuantSpecError(f"smooth_alpha must be in [0, 1]; got {self.smooth_alpha}")
        if self.calib_prompts < 1:
            raise QuantSpecError(f"calib_prompts must be >= 1; got {self.calib_prompts}")

    @property
    def is_quantized(self) -> bool:
        return self.weights != "none" or self.kv_cache != "auto"

    @property
    def needs_calibration(self) -> bool:
        """Whether the build must run the model over the calibration prompts."""
        return (self.weights == "w8a8" or (self.weights in ACTIVATION_MODES and self.act_scales == "per_tensor")
                or (self.kv_cache != "auto" and self.kv_scales == "calibrated"))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict, source: str = QUANT_FILE) -> QuantSpec:
        if not isinstance(data, dict):
            raise QuantSpecError(f"{source}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantSpecError(f"{source}: unknown keys {unknown}")
        try:
            return cls(**data)
        except TypeError as e:
            raise QuantSpecError(f"{source}: {e}") from None


def lm_head_spec(spec: QuantSpec | None) -> QuantSpec | None:
    """How the (untied) LM head is stored under `spec`: int8 weight-only when spec.lm_head, else float.
    int8 whatever the mode: 4-bit or activation-quantized logits cost more accuracy for little speed."""
    return QuantSpec(weights="int8_wo") if spec is not None and spec.lm_head else None


def kv_cache_settings(spec: QuantSpec | None, kv_cache_dtype: str, kv_cache_scales: str) -> tuple[str, str]:
    """The KV cache an engine runs: EngineConfig's kv_cache_dtype / kv_cache_scales, or, when the dtype is
    "auto", what the checkpoint was calibrated for (its QuantSpec's kv_cache and kv_scales)."""
    if kv_cache_dtype == "auto" and spec is not None and spec.kv_cache != "auto":
        return spec.kv_cache, spec.kv_scales
    return kv_cache_dtype, kv_cache_scales


def canonical_mode(name: str) -> str:
    """Our mode name for `name`, which may be TensorRT-LLM's spelling (int4_gptq, int4_awq, int8_sq)."""
    reverse = {v: k for k, v in TRTLLM_NAMES.items()}
    if name in WEIGHT_MODES:
        return name
    if name in reverse:
        return reverse[name]
    raise QuantSpecError(f"quantization must be one of {', '.join(WEIGHT_MODES)} "
                         f"(or TensorRT-LLM's {', '.join(sorted(reverse))}); got {name!r}")


def read_quant_spec(path: str | os.PathLike) -> QuantSpec | None:
    """The checkpoint folder's QuantSpec, or None when it holds no QUANT_FILE (an unquantized checkpoint)."""
    file = os.path.join(os.fspath(path), QUANT_FILE)
    if not os.path.exists(file):
        return None
    with open(file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise QuantSpecError(f"{file}: not JSON ({e})") from None
    return QuantSpec.from_json(data, file)


def write_quant_spec(path: str | os.PathLike, spec: QuantSpec) -> None:
    with open(os.path.join(os.fspath(path), QUANT_FILE), "w", encoding="utf-8") as f:
        json.dump(spec.to_json(), f, indent=2)
