"""The one typed schema of everything the build writes: `Settings`, and how it is read.

Settings are four frozen groups (settings_schema.py: paths, serving, limits, trtllm); the limits
group is qwen_triton's EngineConfig, field for field. They are read strictly from a dict, a JSON
file (flat, dotted or nested by group) and ``key=value`` texts from the command line: an unknown key
is an error that names it, suggests the closest valid one and lists them all; a value of the wrong
type or out of range is an error that names the key (setting_types.py).

Relative paths are kept as given; the build resolves them against the directory it runs in.
No torch here: `import build.settings` stays fast for ``--check``.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from qwen_triton.config import DERIVED, UNLESS_SET, EngineConfig
from qwen_triton.quant.spec import TRTLLM_NAMES, QuantSpec, QuantSpecError, canonical_mode

from .setting_types import SettingsError, base_type, from_json, from_text, is_int_tuple
from .settings_schema import (
    ALIASES,
    FIELDS,
    GROUPS,
    EngineLimits,
    PathSettings,
    QuantSettings,
    ServingSettings,
    TrtllmSettings,
    flatten,
    resolve_key,
)

__all__ = ["Settings", "SettingsError", "describe", "load_settings", "read_settings_file"]


@dataclass(frozen=True)
class Settings:
    """Everything the build writes, validated as a whole at construction."""

    paths: PathSettings = PathSettings()
    serving: ServingSettings = ServingSettings()
    limits: EngineLimits = EngineLimits()
    trtllm: TrtllmSettings = TrtllmSettings()
    quant: QuantSettings = QuantSettings()

    def __post_init__(self) -> None:
        s, lim, t = self.serving, self.limits, self.trtllm
        self.quant_spec()  # impossible quantization settings raise here
        tp = lim.tensor_parallel_size
        if s.engine == "qwen_triton":
            if tp > 1 and s.engine_instance_count != 1:
                raise SettingsError(f"engine_instance_count must be 1 with tensor_parallel_size={tp}: one instance "
                                    "drives the tensor_parallel_size GPUs; run more servers to scale out")
        else:
            if lim.device == "cpu":
                raise SettingsError("device=cpu: TensorRT-LLM runs on GPUs only (use engine=qwen_triton on a CPU)")
            if s.engine_instance_count != 1:
                raise SettingsError("engine_instance_count must be 1 for tensorrtllm: one instance drives "
                                    "tensor_parallel_size GPUs; run more servers to scale out")
            if lim.block_size & (lim.block_size - 1) or not 8 <= lim.block_size <= 128:
                raise SettingsError(f"block_size={lim.block_size}: TensorRT-LLM's tokens_per_block must be "
                                    "a power of two in [8, 128]")
            if t.gpu_device_ids and len(t.gpu_device_ids) != tp:
                raise SettingsError(f"gpu_device_ids {list(t.gpu_device_ids)} must name tensor_parallel_size={tp} GPUs")
            if not t.enable_chunked_context and lim.max_num_batched_tokens < s.max_input_len:
                raise SettingsError(
                    f"max_num_batched_tokens={lim.max_num_batched_tokens} < max_input_len={s.max_input_len}: "
                    "without enable_chunked_context a whole prompt must fit in one step")
        if lim.num_kv_blocks is not None:
            need = -(-self.max_seq_len // lim.block_size) * (t.max_beam_width if s.engine == "tensorrtllm" else 1)
            if lim.num_kv_blocks < need:
                raise SettingsError(
                    f"num_kv_blocks={lim.num_kv_blocks} cannot hold one request of max_input_len + max_output_len = "
                    f"{self.max_seq_len} tokens ({need} blocks of {lim.block_size}); raise it or lower the lengths")

    # -- derived ---------------------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        return self.serving.engine

    @property
    def max_seq_len(self) -> int:
        """Prompt plus output tokens of one request: our max_model_len, trtllm-build --max_seq_len."""
        return self.serving.max_input_len + self.serving.max_output_len

    def quant_spec(self) -> QuantSpec:
        """What our engine's quantized checkpoint holds (the build writes it; spec.py checks it)."""
        q, lim = self.quant, self.limits
        kv = getattr(lim, "kv_cache_dtype", "auto")
        try:
            return QuantSpec(weights=canonical_mode(q.quantization), group_size=q.quant_group_size,
                             weight_scales=q.quant_weight_scales, act_scales=q.quant_act_scales,
                             smooth_alpha=q.smooth_alpha, calib_prompts=q.calib_prompts, lm_head=q.quant_lm_head,
                             kv_cache=kv if getattr(lim, "kv_cache_scales", "dynamic") == "calibrated" else "auto")
        except QuantSpecError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def trtllm_quantization(self) -> str:
        """TensorRT-LLM's name of the weight quantization (int4_gptq, int4_awq, int8_sq, ...)."""
        return TRTLLM_NAMES[canonical_mode(self.quant.quantization)]

    def derived_engine_fields(self) -> dict[str, Any]:
        """The EngineConfig fields the build computes (metadata build=DERIVED) rather than reads."""
        return {"max_model_len": self.max_seq_len}

    def engine_config_fields(self) -> dict[str, Any]:
        """The EngineConfig fields these settings decide: every limits setting (one left at None that the
        engine defaults itself, UNLESS_SET, is left out) and the derived ones."""
        derived = self.derived_engine_fields()
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(EngineConfig):
            role = f.metadata["build"]
            value = derived[f.name] if role == DERIVED else getattr(self.limits, f.name)
            if not (role == UNLESS_SET and value is None):
                fields[f.name] = value
        return fields

    def engine_config(self) -> EngineConfig:
        """The qwen_triton.EngineConfig of our engine model (its PARAM_ENGINE_CONFIG parameter)."""
        try:
            return EngineConfig(**self.engine_config_fields())
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"the engine rejects these settings: {exc}") from None

    def engine_config_json(self) -> str:
        """The compact JSON object (sorted keys) the engine model reads as EngineConfig(**json.loads(...)):
        the fields the settings decide, so EngineConfig's own defaults apply to any others."""
        self.engine_config()  # validated by the engine's own checks
        return json.dumps(self.engine_config_fields(), sort_keys=True, separators=(",", ":"))

    def ignored(self) -> list[str]:
        """Settings changed from their defaults that the chosen engine does not use."""
        if self.engine == "qwen_triton":
            group, unused = self.trtllm, [f.name for f in dataclasses.fields(TrtllmSettings)]
        else:
            # ours only: EngineConfig fields with no TensorRT-LLM counterpart
            group, unused = self.limits, [f.name for f in dataclasses.fields(EngineLimits) if not f.metadata["trtllm"]]
        default = type(group)()
        return [name for name in unused if getattr(group, name) != getattr(default, name)]

    # -- conversion ------------------------------------------------------------------------------------

    def flat(self) -> dict[str, Any]:
        return {name: getattr(getattr(self, group), name) for name, (group, _, _) in FIELDS.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-able, nested by group (reads back with from_dict)."""
        out: dict[str, dict[str, Any]] = {}
        for name, (group, _, _) in FIELDS.items():
            value = getattr(getattr(self, group), name)
            out.setdefault(group, {})[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> Settings:
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for name, value in values.items():
            groups[FIELDS[name][0]][name] = value
        built = {}
        for group, cls_ in GROUPS.items():
            built[group] = cls_(**groups[group])
        return cls(**built)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "settings") -> Settings:
        """Defaults updated from `data` (flat, dotted or nested by group; JSON types)."""
        return Settings().updated(data, source)

    def updated(self, data: Mapping[str, Any], source: str = "settings") -> Settings:
        values = self.flat()
        for name, value in flatten(data, source).items():
            try:
                values[name] = from_json(name, FIELDS[name][2], value)
            except SettingsError as exc:
                raise SettingsError(f"{source}: {exc}") from None
        return _build(values, source)

    def with_overrides(self, overrides: Iterable[str], source: str = "--set") -> Settings:
        """Apply `key=value` texts in order (later ones win)."""
        values = self.flat()
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{source} {item!r}: expected key=value")
            name = resolve_key(key.strip(), f"{source} {item!r}")
            try:
                values[name] = from_text(name, FIELDS[name][2], text)
            except SettingsError as exc:
                raise SettingsError(f"{source}: {exc}") from None
        return _build(values, source)


def _build(values: Mapping[str, Any], source: str) -> Settings:
    try:
        return Settings.from_flat(values)
    except SettingsError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a settings file (errors name the file)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{p}: settings file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{p}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{p}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{p}: settings must be a JSON object, got {type(data).__name__}")
    return data


def load_settings(config: str | Path | None = None, overrides: Iterable[str] = (),
                  base: Settings | None = None) -> Settings:
    """Defaults (or `base`), then the JSON file `config`, then `key=value` overrides in order."""
    settings = base or Settings()
    if config is not None:
        settings = settings.updated(read_settings_file(config), str(config))
    return settings.with_overrides(overrides)


def describe() -> str:
    """Every key with its type, default and help: the text of --help's settings list."""
    lines = []
    for group, cls in GROUPS.items():
        lines.append(f"{group}:")
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            base, nullable = base_type(hints[f.name])
            kind = "int list" if is_int_tuple(base) else getattr(base, "__name__", str(base))
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            choices = f.metadata.get("choices")
            kind += f" {{{'|'.join(map(str, choices))}}}" if choices else ""
            kind += " or none" if nullable else ""
            lines.append(f"  {f.name} ({kind}, default {default!r}): {f.metadata['help']}")
    lines += [f"also accepted: {alias} (= {name})" for alias, name in ALIASES.items()]
    return "\n".join(lines)
