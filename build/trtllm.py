"""The TensorRT-LLM variant: NVIDIA's C++ `tensorrtllm` backend as the engine model.

Nothing here can run on the machines this project is developed on (no GPU, no TensorRT-LLM), so
it is right by construction: the engine model's tensors are the contract's, which are those of
tensorrtllm_backend's `all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt` (checked against a
copy in tests/upstream/), and the engine build script uses the flags of TensorRT-LLM's
`examples/models/core/{qwen,llama}/convert_checkpoint.py`, `examples/quantization/quantize.py`
and `trtllm-build`. preprocessing, postprocessing and the entry models stay ours.

Plain data and text: the protobuf rendering lives in render.py.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from qwen_triton.serving import contract as c
from qwen_triton.serving.contract import TensorSpec

from .settings import Settings
from .trtllm_release import TRTLLM_IMAGE, TRTLLM_REPO, TRTLLM_VERSION, examples_check, preflight

BACKEND = "tensorrtllm"
GPT_MODEL_TYPE = "inflight_fused_batching"
EXECUTOR_WORKER_PATH = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
SCRIPT_NAME = "build_engine.sh"

_LOGITS_TYPES = {"float32": "FP32", "float16": "FP16"}
_LOGITS_TENSORS = (c.CONTEXT_LOGITS, c.GENERATION_LOGITS, "draft_logits")

# The model_type of a checkpoint -> the TensorRT-LLM example folder that converts it.
EXAMPLE_FAMILY = {"qwen": "qwen", "qwen2": "qwen", "llama": "llama"}


def with_logits_dtype(specs: tuple[TensorSpec, ...], settings: Settings) -> tuple[TensorSpec, ...]:
    """`specs` with the logits tensors in the dtype the engine was built to return (upstream's
    ${logits_datatype}); the contract's own is FP32."""
    dtype = _LOGITS_TYPES[settings.trtllm.logits_dtype]
    return tuple(replace(s, dtype=dtype) if s.name in _LOGITS_TENSORS else s for s in specs)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def engine_parameters(settings: Settings, engine_dir: str) -> dict[str, str]:
    """The tensorrt_llm model's `parameters` (upstream keys; unset ones are left out, so the
    backend uses its defaults, rather than written as `${...}` placeholders)."""
    s, lim, t = settings.serving, settings.limits, settings.trtllm
    params = {
        "gpt_model_type": GPT_MODEL_TYPE,
        "gpt_model_path": engine_dir,
        "max_beam_width": str(t.max_beam_width),
        "batch_scheduler_policy": t.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": repr(lim.kv_cache_memory_fraction),
        "enable_chunked_context": _bool(t.enable_chunked_context),
        "enable_kv_cache_reuse": _bool(lim.enable_prefix_caching),
        "exclude_input_in_output": _bool(s.exclude_input_in_output),
        "cancellation_check_period_ms": str(s.cancellation_check_period_ms),
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "executor_worker_path": EXECUTOR_WORKER_PATH,
    }
    if lim.num_kv_blocks is not None:
        params["max_tokens_in_paged_kv_cache"] = str(lim.num_kv_blocks * lim.block_size)
    if t.gpu_device_ids:
        params["gpu_device_ids"] = ",".join(map(str, t.gpu_device_ids))
    if t.decoding_mode != "auto":
        params["decoding_mode"] = t.decoding_mode
    return params


# -- the engine build script ---------------------------------------------------------------------------------


class UnsupportedForTrtllm(ValueError):
    """A checkpoint or setting the TensorRT-LLM engine build does not cover."""


def check_model(arch: str, settings: Settings) -> None:
    """Refuse what the generated commands cannot build."""
    if arch not in EXAMPLE_FAMILY:
        raise UnsupportedForTrtllm(
            f"model_type {arch!r}: the TensorRT engine build here covers {', '.join(EXAMPLE_FAMILY)} "
            "(Qwen3 is served by TensorRT-LLM's PyTorch workflow, not a trtllm-build engine); "
            "use engine=qwen_triton")
    if settings.trtllm_quantization == "int4_gptq" and EXAMPLE_FAMILY[arch] != "qwen":
        raise UnsupportedForTrtllm("quantization=int4_gptq is generated for Qwen GPTQ checkpoints only; "
                                   "use int4_awq or int4_wo for LLaMA")
    if settings.trtllm_quantization == "int4_gptq" and settings.limits.kv_cache_dtype == "fp8":
        raise UnsupportedForTrtllm("kv_cache_dtype=fp8 with int4_gptq: quantize.py (which writes fp8 KV caches) "
                                   "does not read GPTQ checkpoints; use kv_cache_dtype=int8")


def _command(program: list[str], flags: list[str]) -> str:
    """A shell command, one flag (with its value, if any) per line; "$VAR" words stay expandable."""
    def word(w: str) -> str:
        return w if w.startswith('"$') else shlex.quote(w)

    lines, i = [" ".join(word(w) for w in program)], 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            lines.append(f"{flags[i]} {word(flags[i + 1])}")
            i += 2
        else:
            lines.append(flags[i])
            i += 1
    return " \\\n    ".join(lines)


def _script_path(target: Path, project_root: Path | None) -> str:
    """`target` relative to the project root when inside it (the script cds there), else absolute."""
    if project_root is not None:
        try:
            return target.relative_to(project_root).as_posix() or "."
        except ValueError:
            pass
    return target.as_posix()


@dataclass(frozen=True)
class _Convert:
    """Step 1 of the script: the program that writes the TensorRT-LLM checkpoint, its flags, a comment."""

    program: list[str]
    flags: list[str]
    note: str


def _convert_step(settings: Settings) -> _Convert:
    """convert_checkpoint.py (plain, weight-only, GPTQ, int8 KV cache) or, for the calibrated formats and
    an fp8 KV cache, quantize.py (NVIDIA ModelOpt)."""
    dtype, tp = settings.limits.dtype, settings.limits.tensor_parallel_size
    q, kv = settings.trtllm_quantization, settings.limits.kv_cache_dtype
    io = ["--model_dir", '"$CHECKPOINT"', "--output_dir", '"$TRTLLM_CHECKPOINT"']
    if q in ("int4_awq", "fp8", "int8_sq") or kv == "fp8":
        qformat = "full_prec" if q == "none" else q
        flags = [*io, "--dtype", dtype, "--qformat", qformat, "--calib_size", "512", "--tp_size", str(tp)]
        if kv != "auto":
            flags += ["--kv_cache_dtype", kv]
        note = (f"# {qformat}: calibrated with NVIDIA ModelOpt (pip install nvidia-modelopt); calibration reads\n"
                "# the cnn_dailymail dataset from the Hugging Face Hub unless --calib_dataset names a local copy.\n")
        return _Convert(["python3", '"$TRTLLM_EXAMPLES/quantization/quantize.py"'], flags, note)
    flags, note = [*io, "--dtype", dtype, "--tp_size", str(tp)], ""
    if q in ("int8_wo", "int4_wo"):
        flags += ["--use_weight_only", "--weight_only_precision", q[:4]]
    elif q == "int4_gptq":
        flags += ["--use_weight_only", "--weight_only_precision", "int4_gptq", "--per_group"]
        note = "# int4_gptq: the checkpoint must already be GPTQ-quantized (e.g. Qwen-7B-Chat-Int4).\n"
    if kv == "int8":
        flags += ["--int8_kv_cache"]
    return _Convert(["python3", '"$CONVERT"'], flags, note)


def _build_flags(settings: Settings) -> list[str]:
    """trtllm-build's flags: the limits of the settings, paged KV cache, inflight batching."""
    s, lim, t = settings.serving, settings.limits, settings.trtllm
    flags = ["--checkpoint_dir", '"$TRTLLM_CHECKPOINT"', "--output_dir", '"$ENGINE_DIR"',
             "--max_batch_size", str(lim.max_num_seqs),
             "--max_input_len", str(s.max_input_len),
             "--max_seq_len", str(settings.max_seq_len),
             "--max_num_tokens", str(lim.max_num_batched_tokens),
             "--max_beam_width", str(t.max_beam_width),
             "--kv_cache_type", "paged",
             "--tokens_per_block", str(lim.block_size),
             "--remove_input_padding", "enable",
             "--context_fmha", "enable",
             "--use_paged_context_fmha", "enable",  # needed by chunked context and KV-cache reuse
             "--gpt_attention_plugin", "auto",
             "--gemm_plugin", "auto",
             "--logits_dtype", t.logits_dtype]
    if t.gather_logits:
        flags.append("--gather_all_token_logits")
    return flags


def _notes(settings: Settings, arch: str, seq_length: int) -> str:
    """Comments on what the engine will not do as our engine does, and on serving it."""
    notes, tp = [], settings.limits.tensor_parallel_size
    if arch == "qwen" and seq_length and settings.max_seq_len > seq_length:
        notes.append(f"# Note: max_seq_len {settings.max_seq_len} > the checkpoint's seq_length {seq_length}; "
                     "TensorRT-LLM does not implement\n# Qwen's dynamic NTK / logn attention, so quality past "
                     f"{seq_length} tokens is not promised (our engine implements both).\n")
    if tp > 1:
        notes.append(f"# tp_size {tp}: serve with one MPI rank per GPU, e.g. tensorrtllm_backend's\n"
                     "#   python3 scripts/launch_triton_server.py"
                     f" --world_size {tp} --model_repo <model_repo>\n")
    return "".join(notes)


def _header(settings: Settings, arch: str, script: str) -> str:
    """The script's opening comment: where and how to run it, what it builds."""
    lim = settings.limits
    return (
        "#!/usr/bin/env bash\n"
        "# TensorRT-LLM engine build for qwen-triton, generated by `python -m build --engine tensorrtllm`.\n"
        "# NOT RUN HERE: the build machine has no GPU and no TensorRT-LLM. Run it on a GPU machine inside\n"
        f"# {TRTLLM_IMAGE} (Dockerfile.triton's TensorRT-LLM target), with TRTLLM_EXAMPLES\n"
        f"# set to the examples/ folder of TensorRT-LLM v{TRTLLM_VERSION}, the release that image ships: an engine\n"
        "# only loads in the TensorRT-LLM version that built it (the script checks it before it starts).\n"
        f"#   TRTLLM_EXAMPLES=/path/to/TensorRT-LLM/examples bash {script}\n"
        f"# model_type {arch}, dtype {lim.dtype}, quantization {settings.trtllm_quantization}, "
        f"tp_size {lim.tensor_parallel_size}.\n"
    )


def build_script(settings: Settings, *, arch: str, checkpoint: Path, engine_dir: Path, script_dir: Path,
                 project_root: Path | None, seq_length: int = 0) -> str:
    """The text of build_engine.sh: HF checkpoint -> TensorRT-LLM checkpoint -> engine in engine_dir."""
    check_model(arch, settings)
    family = EXAMPLE_FAMILY[arch]
    root = project_root if project_root is not None and script_dir.is_relative_to(project_root) else None
    cd = ""
    if root is not None:
        back = os.path.relpath(root, script_dir)
        cd = f'cd "$(dirname "$0")/{back}"  # the project root: the paths below are relative to it\n'
    convert = _convert_step(settings)
    return (
        _header(settings, arch, _script_path(script_dir / SCRIPT_NAME, root))
        + _notes(settings, arch, seq_length)
        + "set -eo pipefail\n"
        + cd
        + 'if [ -z "$TRTLLM_EXAMPLES" ]; then\n'
        f'    echo "set TRTLLM_EXAMPLES to the examples/ folder of TensorRT-LLM (git clone -b v{TRTLLM_VERSION} '
        f'{TRTLLM_REPO})" >&2\n'
        "    exit 2\n"
        "fi\n"
        + preflight()
        + f"CHECKPOINT={shlex.quote(_script_path(checkpoint, root))}\n"
        f"TRTLLM_CHECKPOINT={shlex.quote(_script_path(script_dir / 'checkpoint', root))}\n"
        # absolute: the same path goes into gpt_model_path
        f"ENGINE_DIR={shlex.quote(engine_dir.as_posix())}  # = gpt_model_path of model_repo/tensorrt_llm/config.pbtxt\n"
        f'CONVERT="$TRTLLM_EXAMPLES/models/core/{family}/convert_checkpoint.py"\n'
        f'if [ ! -f "$CONVERT" ]; then CONVERT="$TRTLLM_EXAMPLES/{family}/convert_checkpoint.py"; fi'
        "  # releases before examples/models/core\n"
        + examples_check()
        + "\n"
        "# 1. Hugging Face checkpoint -> TensorRT-LLM checkpoint\n"
        + convert.note
        + _command(convert.program, convert.flags) + "\n"
        "\n"
        "# 2. TensorRT-LLM checkpoint -> engine (paged KV cache, inflight batching)\n"
        + _command(["trtllm-build"], _build_flags(settings)) + "\n"
        "\n"
        'echo "engine written to $ENGINE_DIR"\n'
    )
