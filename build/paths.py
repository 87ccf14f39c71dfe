"""Where the build reads and writes: the layout of a Triton model repository (its models, version
folders, config files) and `BuildPaths`, every location of one build, resolved.

Path parameters are written relative to the repository's root when their target lies inside the same
project (so the project can move as a whole, e.g. into an image), else absolute; the models resolve
them against the parent of Triton's `args["model_repository"]` (qwen_triton.serving.triton_io).
TensorRT-LLM's gpt_model_path is always absolute: the C++ backend does not resolve relative paths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qwen_triton.serving import contract as c

from . import trtllm
from .settings import Settings

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the project holding build/ and model_repo/
SOURCE_REPO = PACKAGE_ROOT / "model_repo"  # where the model.py files live
MODELS = (c.PREPROCESSING, c.ENGINE, c.POSTPROCESSING, c.ENSEMBLE, c.BLS)
PYTHON_MODELS = MODELS
ENTRY_MODELS = (c.ENSEMBLE, c.BLS)
VERSION = "1"
CONFIG = "config.pbtxt"
MODEL_FILE = "model.py"
MANIFEST = ".qwen_triton_build.json"


def find_project_root(start: Path) -> Path:
    """The nearest folder above `start` holding .git or pyproject.toml, else start's parent."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").is_file():
            return folder
    return start.parent


@dataclass(frozen=True)
class BuildPaths:
    """Every location the build reads or writes, absolute."""

    model_repo: Path
    artifacts: Path
    checkpoint: Path
    project_root: Path
    engine_dir: Path | None = None  # tensorrtllm only

    @classmethod
    def resolve(cls, settings: Settings, checkpoint: str | Path, base_dir: str | Path | None = None) -> BuildPaths:
        base = Path(base_dir or Path.cwd()).resolve()

        def absolute(p: str | Path) -> Path:
            return (base / Path(p).expanduser()).resolve()

        model_repo = absolute(settings.paths.model_repo)
        artifacts = absolute(settings.paths.artifacts)
        engine_dir = None
        if settings.engine == "tensorrtllm":
            engine_dir = absolute(settings.trtllm.engine_dir) if settings.trtllm.engine_dir else \
                artifacts / "trtllm" / "engine"
        return cls(model_repo, artifacts, absolute(checkpoint), find_project_root(model_repo), engine_dir)

    def param_path(self, target: Path) -> str:
        """`target` as a path parameter: relative to the repository root when inside the project."""
        if target.is_relative_to(self.project_root):
            return Path(os.path.relpath(target, self.model_repo)).as_posix()
        return target.as_posix()

    @property
    def script(self) -> Path:
        return self.artifacts / "trtllm" / trtllm.SCRIPT_NAME
