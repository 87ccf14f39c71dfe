"""The TensorRT-LLM engine build script (`make build-engine ENGINE=tensorrtllm`, build/trtllm.py) against
TensorRT-LLM's own command-line flags, copied with their source into tests/upstream/tensorrt_llm_flags.json:
every flag and value the script writes, for Qwen v1, Qwen2 and LLaMA and every QUANT / KV_CACHE it maps,
must be one the pinned release's programs declare, so a renamed or removed flag fails here.

The script is also run, end to end, against stand-ins of those programs generated from the same tables
(argparse parsers with exactly the declared flags and choices: an unknown flag or value fails as it would
in TensorRT-LLM), and without TensorRT-LLM, where it must stop with a clear message and build nothing.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from build import trtllm
from build.settings import Settings
from build.settings_schema import QUANTIZATIONS
from build.trtllm_release import NOT_INSTALLED_EXIT, TRTLLM_IMAGE, TRTLLM_VERSION
from qwen_triton.config import KV_CACHE_DTYPES

TABLE = json.loads((Path(__file__).resolve().parent / "upstream" / "tensorrt_llm_flags.json").read_text())
PROGRAMS = TABLE["programs"]
ARCHS = ("qwen", "qwen2", "llama")


def _settings(quant: str, kv: str, tp: int = 1) -> Settings:
    return Settings.from_dict({"engine": "tensorrtllm", "quantization": quant, "kv_cache_dtype": kv,
                               "tp_size": tp, "dtype": "bfloat16"})


def _script(tmp_path: Path, arch: str, settings: Settings) -> str:
    return trtllm.build_script(settings, arch=arch, checkpoint=tmp_path / "ckpt", engine_dir=tmp_path / "engine",
                               script_dir=tmp_path / "art", project_root=None, seq_length=2048)


def _buildable() -> list[tuple[str, str, str]]:
    out = []
    for arch, quant, kv in product(ARCHS, QUANTIZATIONS, KV_CACHE_DTYPES):
        try:
            trtllm.check_model(arch, _settings(quant, kv))
        except trtllm.UnsupportedForTrtllm:
            continue
        out.append((arch, quant, kv))
    return out


BUILDABLE = _buildable()


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(table key, argv after the program) of each TensorRT-LLM program the script runs."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True) if line and not line.startswith("#") else []
        if words[:2] == ["python3", "$CONVERT"]:
            out.append(("convert", words[2:]))
        elif words[:1] == ["python3"] and words[1:2] and words[1].endswith("quantization/quantize.py"):
            out.append(("quantize.py", words[2:]))
        elif words[:1] == ["trtllm-build"]:
            out.append(("trtllm-build", words[1:]))
    return out


def _table(program: str, arch: str) -> dict[str, dict]:
    if program == "convert":
        return PROGRAMS[f"convert_checkpoint.py:{trtllm.EXAMPLE_FAMILY[arch]}"]["flags"]
    if program == "trtllm-build":
        return {**PROGRAMS["trtllm-build"]["flags"], **PROGRAMS["trtllm-build:plugins"]["flags"]}
    return PROGRAMS[program]["flags"]


def _check_argv(argv: list[str], flags: dict[str, dict], where: str) -> None:
    i = 0
    while i < len(argv):
        name = argv[i]
        assert name in flags, f"{where}: {name} is not a flag of the pinned TensorRT-LLM release"
        spec = flags[name]
        takes = spec["value"] and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if spec["value"] and not spec.get("optional_value"):
            assert takes, f"{where}: {name} needs a value"
        if takes:
            value = argv[i + 1]
            if "choices" in spec and not value.startswith("$"):
                assert value in spec["choices"], f"{where}: {name} {value} not in {spec['choices']}"
            i += 2
        else:
            i += 1


def test_the_table_says_where_it_came_from():
    assert TABLE["release"] == TRTLLM_VERSION and TABLE["image"] == TRTLLM_IMAGE
    for name, program in PROGRAMS.items():
        source = program["source"]
        assert source["repo"] == "NVIDIA/TensorRT-LLM" and source["path"] and source.get("commit", source.get("tag"))
        assert program["flags"], name


@pytest.mark.parametrize("arch, quant, kv", BUILDABLE)
def test_every_flag_is_the_pinned_releases(tmp_path, arch, quant, kv):
    text = _script(tmp_path, arch, _settings(quant, kv, tp=2))
    commands = _commands(text)
    assert [p for p, _ in commands][-1] == "trtllm-build" and len(commands) == 2, text
    for program, argv in commands:
        _check_argv(argv, _table(program, arch), f"{arch}/{quant}/{kv} {program}")


def test_every_mode_is_covered():
    """QUANT and KV_CACHE map onto flags for all three families; only what check_model refuses is left out."""
    assert {a for a, _, _ in BUILDABLE} == set(ARCHS)
    assert {q for a, q, _ in BUILDABLE if a == "llama"} >= {"none", "int8_wo", "int4_wo", "int4_awq", "fp8", "int8_sq"}
    assert {q for a, q, _ in BUILDABLE if a == "qwen"} >= {"gptq", "int4_gptq", "awq", "w8a8"}
    assert {k for _, _, k in BUILDABLE} == set(KV_CACHE_DTYPES)


# -- running the script: stand-ins generated from the tables ------------------------------------------------

_STANDIN = '''import argparse, json, os, sys
FLAGS = json.loads({flags!r})
p = argparse.ArgumentParser(prog={prog!r})
for name, spec in FLAGS.items():
    if not name.startswith("--"):
        continue
    kw = {{"choices": spec["choices"]}} if "choices" in spec else {{}}
    if not spec["value"]:
        p.add_argument(name, action="store_true")
    elif spec.get("optional_value"):
        p.add_argument(name, nargs="?", const="", **kw)
    else:
        p.add_argument(name, **kw)
p.parse_args()
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps([{prog!r}] + sys.argv[1:]) + "\\n")
'''


def _write_standin(path: Path, prog: str, flags: dict, shebang: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"#!{sys.executable}\n" if shebang else ""
    path.write_text(head + _STANDIN.format(flags=json.dumps(flags), prog=prog))
    path.chmod(0o755)


def _standins(root: Path, version: str) -> dict[str, str]:
    """TRTLLM_EXAMPLES, a trtllm-build on PATH and an importable tensorrt_llm of `version`; the env to run with."""
    examples = root / "examples"
    for family in ("qwen", "llama"):
        _write_standin(examples / "models" / "core" / family / "convert_checkpoint.py", f"convert:{family}",
                       PROGRAMS[f"convert_checkpoint.py:{family}"]["flags"])
    _write_standin(examples / "quantization" / "quantize.py", "quantize.py", PROGRAMS["quantize.py"]["flags"])
    _write_standin(root / "bin" / "trtllm-build", "trtllm-build", _table("trtllm-build", "qwen"), shebang=True)
    package = root / "site" / "tensorrt_llm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f'print("[TensorRT-LLM] banner")\n__version__ = "{version}"\n')
    return {**os.environ, "TRTLLM_EXAMPLES": str(examples), "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
            "PYTHONPATH": str(root / "site"), "STANDIN_LOG": str(root / "ran.jsonl")}


def _run(tmp_path: Path, arch: str, settings: Settings, env: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "build_engine.sh"
    script.write_text(_script(tmp_path, arch, settings))
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("arch, quant, kv, tp", [("qwen", "gptq", "int8", 1), ("qwen2", "fp8", "fp8", 2),
                                                 ("llama", "int4_awq", "auto", 1), ("llama", "none", "int8", 2)])
def test_script_runs_against_the_pinned_programs(tmp_path, arch, quant, kv, tp):
    env = _standins(tmp_path / "trtllm", TRTLLM_VERSION)
    run = _run(tmp_path, arch, _settings(quant, kv, tp), env)
    assert run.returncode == 0, run.stderr
    ran = [json.loads(line) for line in Path(env["STANDIN_LOG"]).read_text().splitlines()]
    first = "quantize.py" if quant in ("fp8", "awq", "int4_awq", "w8a8") or kv == "fp8" else \
        f"convert:{trtllm.EXAMPLE_FAMILY[arch]}"
    assert [r[0] for r in ran] == [first, "trtllm-build"]
    assert ran[0][ran[0].index("--tp_size") + 1] == str(tp)  # TP=N reaches the converter
    assert f"engine written to {tmp_path / 'engine'}" in run.stdout


def test_without_tensorrt_llm_nothing_is_built(tmp_path):
    env = _standins(tmp_path / "trtllm", TRTLLM_VERSION)
    env["PATH"] = os.environ["PATH"]  # no trtllm-build
    run = _run(tmp_path, "qwen2", _settings("none", "auto"), env)
    assert run.returncode == NOT_INSTALLED_EXIT
    assert "TensorRT-LLM is not installed here" in run.stderr and TRTLLM_IMAGE in run.stderr
    assert "engine written" not in run.stdout and not Path(env["STANDIN_LOG"]).exists()


def test_another_release_is_refused_unless_allowed(tmp_path):
    env = _standins(tmp_path / "trtllm", "0.18.2")
    run = _run(tmp_path, "qwen2", _settings("none", "auto"), env)
    assert run.returncode == NOT_INSTALLED_EXIT and "TensorRT-LLM 0.18.2 is installed" in run.stderr
    assert not Path(env["STANDIN_LOG"]).exists()
    run = _run(tmp_path, "qwen2", _settings("none", "auto"), {**env, "TRTLLM_ALLOW_OTHER_VERSION": "1"})
    assert run.returncode == 0, run.stderr
