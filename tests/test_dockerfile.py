"""Dockerfile.triton, without Docker: hadolint (from the deploy extra) finds nothing, every rule it is told
to ignore is explained, the base images are pinned to the releases the rest of the project is written for,
the image runs as a non-root user with a health check on Triton's ready endpoint, the build context carries
what the COPY lines need, and the entrypoint starts what it says with flags its programs accept."""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from build.trtllm_release import TRTLLM_IMAGE
from qwen_triton.runtime import layout
from qwen_triton.runtime.cli import parser as runtime_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.triton"
IGNORE = ROOT / "Dockerfile.triton.dockerignore"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent  # the venv's bin/: make install puts hadolint there
# Triton's container release of the server the project runs (qwen_triton.runtime.layout.TRITON_VERSION);
# from NVIDIA's Triton release notes: release 24.10 ships Triton Inference Server 2.51.0
TRITON_RELEASE = {"2.51.0": "24.10"}


def _text() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_finds_nothing():
    run = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_every_ignored_rule_is_explained():
    lines = _text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert pragmas, "no pragma: then this test checks nothing and can go"
    for i in pragmas:
        rules = lines[i].split("=", 1)[1].split(",")
        reason = lines[i - 1]
        assert reason.startswith("#") and "hadolint" not in reason, f"line {i + 1}: say why {rules} is ignored"
        assert any(rule in "\n".join(lines[max(0, i - 4):i]) for rule in rules), f"line {i + 1}: name {rules}"


def test_base_images_are_the_pinned_releases():
    bases = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", _text(), re.MULTILINE)
    external = {alias: image for image, alias in bases if "/" in image}
    assert external == {
        "base-qwen_triton": f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE[layout.TRITON_VERSION]}-pyt-python-py3",
        "base-tensorrtllm": TRTLLM_IMAGE}
    assert all(":" in image and not image.endswith(":latest") for image in external.values())
    assert f"nvidia-pytriton=={layout.WHEEL_VERSION}" in _text() and layout.WHEEL_FILENAME in _text()


def test_non_root_health_check_and_ports():
    text = _text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and all(u.split(":")[0] not in ("0", "root") for u in users)
    assert "/v2/health/ready" in text.split("FROM server AS openai")[0].split("HEALTHCHECK", 1)[1]
    assert re.search(r"^EXPOSE 8000 8001 8002 9000$", text, re.MULTILINE)
    assert re.search(r"^FROM server AS openai$", text, re.MULTILINE)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a folder pattern covers its files."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:n]), p) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_copy_needs():
    patterns = [line.strip() for line in IGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    sources = [src for line in re.findall(r"^COPY (.+)$", _text(), re.MULTILINE) for src in line.split()[:-1]
               if not src.startswith("--")]
    assert sources
    for src in sources:
        files = [p for p in (ROOT / src).rglob("*") if p.is_file()] if (ROOT / src).is_dir() else [ROOT / src]
        tracked = [f.relative_to(ROOT).as_posix() for f in files if "__pycache__" not in f.parts]
        assert tracked and not any(_ignored(f, patterns) for f in tracked if not f.endswith("config.pbtxt")), src
    assert _ignored(".venv/bin/python", patterns) and _ignored("artifacts/x.safetensors", patterns)
    assert _ignored("model_repo/ensemble/config.pbtxt", patterns)  # a developer's render stays out


# -- the entrypoint, with stand-ins that record their command line -------------------------------------------

def _entrypoint(tmp_path: Path, env: dict, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name in ("python3", "tritonserver"):
        (fake / name).write_text(f'#!/bin/sh\nprintf "%s\\n" {name} "$@" > "{tmp_path}/argv"\n')
        (fake / name).chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "ensemble").mkdir(parents=True, exist_ok=True)
    (repo / "ensemble" / "config.pbtxt").write_text("")
    run = subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, check=False, timeout=30,
                         env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "MODEL_REPO": str(repo), **env})
    argv = (tmp_path / "argv").read_text().splitlines() if (tmp_path / "argv").exists() else []
    return run, argv


@pytest.mark.parametrize("openai_port", ["9000", ""])
def test_entrypoint_starts_the_supervisor(tmp_path, openai_port):
    run, argv = _entrypoint(tmp_path, {"QWEN_TRITON_ENGINE": "qwen_triton", "OPENAI_PORT": openai_port,
                                       "TRITON_EXIT_TIMEOUT": "35"})
    assert run.returncode == 0, run.stderr
    assert argv[:3] == ["python3", "-m", "qwen_triton.runtime"]
    args = runtime_parser().parse_args(argv[3:])  # the runtime's own parser accepts every flag
    assert args.foreground and args.host == "0.0.0.0" and args.model_repository == tmp_path / "repo"
    assert args.openai_port == (int(openai_port) if openai_port else None)
    assert args.extra[-1] == "--exit-timeout-secs=35"


def test_entrypoint_tensorrtllm_runs_the_images_tritonserver(tmp_path):
    run, argv = _entrypoint(tmp_path, {"QWEN_TRITON_ENGINE": "tensorrtllm"})
    assert run.returncode == 0, run.stderr
    assert argv[0] == "tritonserver" and f"--model-repository={tmp_path / 'repo'}" in argv
    assert "--http-port=8000" in argv and any(a.startswith("--exit-timeout-secs=") for a in argv)


def test_entrypoint_is_executable_in_the_image():
    assert os.access(ENTRYPOINT, os.X_OK)
    assert re.search(r"^COPY --chmod=0755 deploy/docker/entrypoint.sh ", _text(), re.MULTILINE)


def test_entrypoint_without_a_repository_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    run = subprocess.run(["bash", str(ENTRYPOINT)], capture_output=True, text=True, check=False, timeout=30,
                         env={**os.environ, "MODEL_REPO": str(tmp_path / "empty")})
    assert run.returncode == 2 and "render it first" in run.stderr


def test_entrypoint_openai_and_other_commands(tmp_path):
    run, argv = _entrypoint(tmp_path, {"TRITON_GRPC": "10.0.0.1:8001"}, "openai")
    assert run.returncode == 0 and argv[:3] == ["python3", "-m", "qwen_triton.openai_api"]
    assert argv[argv.index("--triton-grpc") + 1] == "10.0.0.1:8001"
    run, argv = _entrypoint(tmp_path, {}, "python3", "-m", "build", "--check")
    assert argv == ["python3", "-m", "build", "--check"]
