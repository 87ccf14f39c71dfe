"""Check a model repository without torch, as Triton would load it: every config parses, no `${...}`
placeholder, version folders and model.py files present, parameters present and well-formed, paths
that exist, and entry models whose pipeline (contract.PIPELINE_STEPS) wires up.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from qwen_triton.config import EngineConfig
from qwen_triton.serving import contract as c
from qwen_triton.serving.contract import TensorSpec

from . import trtllm
from .paths import CONFIG, ENTRY_MODELS, MODEL_FILE, MODELS, VERSION
from .render import PLACEHOLDER, dtype_name

# Parameters each of our Python models reads (contract.PARAM_*), and how their values look.
PATH_PARAMS = (c.PARAM_TOKENIZER_DIR, c.PARAM_MODEL_PATH)
REQUIRED_PARAMS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    c.PREPROCESSING: (c.PARAM_TOKENIZER_DIR, c.PARAM_DEFAULT_SYSTEM, c.PARAM_MAX_INPUT_LEN, c.PARAM_MAX_OUTPUT_LEN),
    c.ENGINE: (c.PARAM_TOKENIZER_DIR, c.PARAM_MODEL_PATH, c.PARAM_ENGINE_CONFIG, c.PARAM_EXCLUDE_INPUT,
               c.PARAM_CANCEL_PERIOD_MS),
    c.POSTPROCESSING: (c.PARAM_TOKENIZER_DIR, c.PARAM_SKIP_SPECIAL),
    **{m: (c.PARAM_TOKENIZER_DIR, c.PARAM_DEFAULT_SYSTEM, c.PARAM_MAX_INPUT_LEN, c.PARAM_MAX_OUTPUT_LEN,
           c.PARAM_SKIP_SPECIAL, c.PARAM_ENGINE_MODEL, c.PARAM_MAX_REQUESTS, c.PARAM_CANCEL_PERIOD_MS,
           c.PARAM_ENGINE_LINK)
       for m in ENTRY_MODELS},
})
BOOL_PARAMS = (c.PARAM_EXCLUDE_INPUT, c.PARAM_SKIP_SPECIAL, c.PARAM_ENGINE_LINK)
INT_PARAMS = (c.PARAM_MAX_INPUT_LEN, c.PARAM_MAX_OUTPUT_LEN, c.PARAM_CANCEL_PERIOD_MS, c.PARAM_MAX_REQUESTS)


@dataclass
class CheckReport:
    """What check_repository found: errors (Triton would refuse or misserve), warnings, the configs read."""

    model_repo: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    configs: dict[str, mc.ModelConfig] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def read_config(path: Path) -> mc.ModelConfig:
    """Parse one config.pbtxt (raises ValueError with the file named)."""
    text = path.read_text(encoding="utf-8")
    if PLACEHOLDER in text:
        line = next(i for i, ln in enumerate(text.splitlines(), 1) if PLACEHOLDER in ln)
        raise ValueError(f"{path}:{line}: unfilled '{PLACEHOLDER}...}}' placeholder")
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: not a valid ModelConfig ({exc})") from None


def _resolve_param_path(value: str, model_repo: Path) -> Path:
    return Path(value) if os.path.isabs(value) else (model_repo / value).resolve()


def _check_python_params(name: str, cfg: mc.ModelConfig, model_repo: Path, report: CheckReport) -> None:
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    for key in REQUIRED_PARAMS.get(name, ()):
        if key not in params:
            report.errors.append(f"{name}: parameter {key!r} is missing")
    for key in PATH_PARAMS:
        if key in params:
            path = _resolve_param_path(params[key], model_repo)
            if not path.is_dir():
                report.errors.append(f"{name}: parameter {key} = {params[key]!r} -> {path} is not a folder")
    for key in BOOL_PARAMS:
        if key in params and params[key] not in ("true", "false"):
            report.errors.append(f"{name}: parameter {key} must be 'true' or 'false', got {params[key]!r}")
    for key in INT_PARAMS:
        if key in params and not params[key].isdigit():
            report.errors.append(f"{name}: parameter {key} must be a positive integer, got {params[key]!r}")
    if c.PARAM_ENGINE_CONFIG in params:
        try:
            engine = EngineConfig(**json.loads(params[c.PARAM_ENGINE_CONFIG]))
        except (ValueError, TypeError) as exc:
            report.errors.append(f"{name}: parameter {c.PARAM_ENGINE_CONFIG} is not an EngineConfig ({exc})")
            return
        instances = sum(group.count for group in cfg.instance_group)
        if engine.tensor_parallel_size > 1 and instances != 1:  # each would start its ranks on the same GPUs
            report.errors.append(f"{name}: {instances} instances with tensor_parallel_size="
                                 f"{engine.tensor_parallel_size}; one instance drives the ranks")


def check_repository(model_repo: str | Path, strict: bool = True) -> CheckReport:
    """Validate a model repository as Triton would load it. `strict`: a python model without its
    model.py is an error (else a warning: the build writes configs only)."""
    root = Path(model_repo).resolve()
    report = CheckReport(root)
    if not root.is_dir():
        report.errors.append(f"{root}: no such model repository")
        return report
    for name in MODELS:
        path = root / name / CONFIG
        if not path.is_file():
            report.errors.append(f"{name}: {path} is missing")
            continue
        try:
            cfg = read_config(path)
        except (OSError, ValueError) as exc:
            report.errors.append(str(exc))
            continue
        report.configs[name] = cfg
        _check_model(name, cfg, root, strict, report)
    _check_entry_points(report)
    return report


def _check_model(name: str, cfg: mc.ModelConfig, root: Path, strict: bool, report: CheckReport) -> None:
    """One model's folder, config and parameters, by its backend."""
    if cfg.name and cfg.name != name:
        report.errors.append(f"{root / name / CONFIG}: name {cfg.name!r} differs from its folder {name!r}")
    if not (root / name / VERSION).is_dir():
        report.errors.append(f"{name}: version folder {root / name / VERSION} is missing")
    if cfg.max_batch_size < 1:
        report.errors.append(f"{name}: max_batch_size must be >= 1 (every model of the contract is batched)")
    if cfg.backend == "python":
        if not (root / name / VERSION / MODEL_FILE).is_file():
            (report.errors if strict else report.warnings).append(
                f"{name}: {root / name / VERSION / MODEL_FILE} is missing")
        _check_python_params(name, cfg, root, report)
    elif cfg.backend == trtllm.BACKEND:
        _check_trtllm_params(name, cfg, report)
    else:
        report.errors.append(f"{name}: unexpected backend {cfg.backend!r}")


def _check_trtllm_params(name: str, cfg: mc.ModelConfig, report: CheckReport) -> None:
    """The C++ backend's own parameters: its model type and an absolute engine folder."""
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    for key in ("gpt_model_type", "gpt_model_path"):
        if key not in params:
            report.errors.append(f"{name}: parameter {key!r} is missing")
    engine_dir = params.get("gpt_model_path", "")
    if engine_dir and not os.path.isabs(engine_dir):
        report.errors.append(f"{name}: gpt_model_path {engine_dir!r} must be absolute for the C++ backend")
    elif engine_dir and not os.path.isdir(engine_dir):
        report.warnings.append(f"{name}: engine folder {engine_dir} does not exist here yet "
                               "(build it with the generated build_engine.sh on a GPU machine)")


def _check_entry_points(report: CheckReport) -> None:
    """The entry models run upstream's pipeline (contract.PIPELINE_STEPS) over the repository's
    preprocessing, engine and postprocessing: it must wire up, and they must call the engine the way
    it is built (decoupled or not)."""
    engine = report.configs.get(c.ENGINE)
    models = {name: ModelIO.from_config(cfg) for name, cfg in report.configs.items() if name not in ENTRY_MODELS}
    for name in ENTRY_MODELS:
        entry = report.configs.get(name)
        if entry is None:
            continue
        if entry.backend != "python":
            report.errors.append(f"{name}: must be our Python entry model, got backend {entry.backend!r}")
        if engine is not None and entry.model_transaction_policy.decoupled != engine.model_transaction_policy.decoupled:
            report.errors.append(f"{name}: decoupled={entry.model_transaction_policy.decoupled} but {c.ENGINE} "
                                 f"has decoupled={engine.model_transaction_policy.decoupled}; build them alike")
        for model, _, _ in c.PIPELINE_STEPS:
            cfg = report.configs.get(model)
            if cfg is not None and cfg.max_batch_size < entry.max_batch_size:
                report.errors.append(f"{name}: max_batch_size {entry.max_batch_size} exceeds "
                                     f"{model}'s {cfg.max_batch_size}")
    ensemble = report.configs.get(c.ENSEMBLE)
    if ensemble is not None:
        report.errors.extend(check_wiring(models, ModelIO.from_config(ensemble), c.PIPELINE_STEPS))


# -- wiring ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIO:
    """A model's tensors: inputs {name: (dtype, optional)}, outputs {name: dtype}."""

    inputs: Mapping[str, tuple[str, bool]]
    outputs: Mapping[str, str]

    @classmethod
    def from_specs(cls, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec]) -> ModelIO:
        return cls({t.name: (t.dtype, t.optional) for t in inputs}, {t.name: t.dtype for t in outputs})

    @classmethod
    def from_config(cls, cfg: mc.ModelConfig) -> ModelIO:
        return cls({t.name: (dtype_name(t.data_type), t.optional) for t in cfg.input},
                   {t.name: dtype_name(t.data_type) for t in cfg.output})


Steps = Sequence[tuple[str, Mapping[str, str], Mapping[str, str]]]


def check_wiring(models: Mapping[str, ModelIO], ensemble: ModelIO, steps: Steps) -> list[str]:
    """Errors in an ensemble's wiring: unknown names, unmapped required inputs, tensors produced
    more or less than once, produced but never consumed, dtype mismatches."""
    errors: list[str] = []
    producers: dict[str, list[str]] = {}
    dtypes: dict[str, str] = {name: dtype for name, (dtype, _) in ensemble.inputs.items()}
    for model, _, output_map in steps:
        io = models.get(model)
        for key, tensor in output_map.items():
            producers.setdefault(tensor, []).append(f"{model}.{key}")
            if io is not None and key in io.outputs:
                dtypes.setdefault(tensor, io.outputs[key])
    consumed: set[str] = set()
    for model, input_map, output_map in steps:
        io = models.get(model)
        if io is None:
            errors.append(f"ensemble step {model!r}: no such model")
            continue
        for key, tensor in input_map.items():
            consumed.add(tensor)
            if key not in io.inputs:
                errors.append(f"ensemble step {model}: input_map key {key!r} is not an input of {model}")
                continue
            if tensor not in ensemble.inputs and tensor not in producers:
                errors.append(f"ensemble step {model}: {key} reads {tensor!r}, which nothing produces")
            elif tensor in dtypes and dtypes[tensor] != io.inputs[key][0]:
                errors.append(f"ensemble step {model}: {key} is {io.inputs[key][0]} but {tensor!r} "
                              f"is {dtypes[tensor]}")
            if any(p.startswith(f"{model}.") for p in producers.get(tensor, ())):
                errors.append(f"ensemble step {model}: reads its own output {tensor!r}")
        for key, (_, optional) in io.inputs.items():
            if not optional and key not in input_map:
                errors.append(f"ensemble step {model}: required input {key!r} is not mapped")
        for key in output_map:
            if key not in io.outputs:
                errors.append(f"ensemble step {model}: output_map key {key!r} is not an output of {model}")
    for tensor, made_by in producers.items():
        if len(made_by) > 1:
            errors.append(f"ensemble tensor {tensor!r} is produced {len(made_by)} times ({', '.join(made_by)})")
        if tensor in ensemble.inputs:
            errors.append(f"ensemble tensor {tensor!r} is both an ensemble input and produced by {made_by[0]}")
        if tensor not in ensemble.outputs and tensor not in consumed:
            errors.append(f"ensemble tensor {tensor!r} is produced by {made_by[0]} but never consumed")
    for name, dtype in ensemble.outputs.items():
        if name not in producers:
            errors.append(f"ensemble output {name!r} is produced by no step")
        elif dtypes.get(name, dtype) != dtype:
            errors.append(f"ensemble output {name!r} is {dtype} but its producer gives {dtypes[name]}")
    for name in ensemble.inputs:
        if name not in consumed:
            errors.append(f"ensemble input {name!r} is consumed by no step")
    return errors
