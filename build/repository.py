"""Write a model repository: the rendered config.pbtxt files (and empty version folders), the
TensorRT-LLM engine build script, and the build's manifest; then check what was written.

Only config.pbtxt files are written into the repository; the model.py files are source files owned
by their authors and are never overwritten. When the repository is rendered somewhere other than
this project's own model_repo/, the model.py files are copied there (and refreshed only while they
are still the build's own, unedited copies, as recorded in that repository's
.qwen_triton_build.json manifest).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_triton.serving import contract as c

from . import trtllm
from .check import check_repository
from .paths import CONFIG, MANIFEST, MODEL_FILE, PYTHON_MODELS, SOURCE_REPO, VERSION, BuildPaths
from .render import BuildError, config_text, model_configs
from .settings import Settings


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


@dataclass
class BuildReport:
    """What write_repository did: configs written or left unchanged, model files copied, the script."""

    model_repo: Path
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    copied: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    script: Path | None = None


def _source_files(model: str) -> list[Path]:
    """The source files of one model version folder (model.py and helpers), no caches."""
    folder = SOURCE_REPO / model / VERSION
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and not p.name.startswith("."))


def _sync_model_files(settings: Settings, paths: BuildPaths, previous: Mapping[str, str],
                      report: BuildReport) -> dict[str, str]:
    """Copy model.py files into a repository other than this project's model_repo/.

    A destination file is written when absent, or refreshed when it still is the build's own copy
    (its hash is the one recorded by the last build); anything else is left alone with a warning.
    Returns {relative path: hash} of the copies now in place."""
    copies: dict[str, str] = {}
    if paths.model_repo == SOURCE_REPO.resolve():
        return copies
    python_models = [m for m in PYTHON_MODELS if not (m == c.ENGINE and settings.engine == "tensorrtllm")]
    for model in python_models:
        sources = _source_files(model)
        if not sources:
            report.warnings.append(f"{SOURCE_REPO / model / VERSION} holds no model files to copy")
        for src in sources:
            rel = f"{model}/{VERSION}/{src.relative_to(SOURCE_REPO / model / VERSION).as_posix()}"
            dest = paths.model_repo / rel
            digest = _sha256(src)
            if dest.is_file():
                current = _sha256(dest)
                if current == digest:
                    copies[rel] = digest
                    continue
                if previous.get(rel) != current:
                    report.warnings.append(f"{dest} differs from {src} and was not written by the build; left as is")
                    continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            copies[rel] = digest
            report.copied.append(dest)
    if settings.engine == "tensorrtllm":  # the C++ backend needs no model.py: drop our own stale copy
        for rel, digest in previous.items():
            dest = paths.model_repo / rel
            if rel.startswith(f"{c.ENGINE}/") and dest.is_file() and _sha256(dest) == digest:
                dest.unlink()
    return copies


def _read_manifest(model_repo: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_repo / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_repository(settings: Settings, paths: BuildPaths, *, model_info: Mapping[str, Any] | None = None
                     ) -> BuildReport:
    """Write every config.pbtxt (and, for tensorrtllm, the engine build script), then check the
    repository as written; raises BuildError when anything is wrong."""
    report = BuildReport(paths.model_repo)
    configs = model_configs(settings, paths)
    texts = {name: config_text(cfg) for name, cfg in configs.items()}  # all rendered before any write
    previous = _read_manifest(paths.model_repo).get("copied", {})
    for name, text in texts.items():
        (paths.model_repo / name / VERSION).mkdir(parents=True, exist_ok=True)
        target = paths.model_repo / name / CONFIG
        (report.written if _write_if_changed(target, text) else report.unchanged).append(target)
    copies = _sync_model_files(settings, paths, previous if isinstance(previous, dict) else {}, report)

    if settings.engine == "tensorrtllm":
        info = dict(model_info or {})
        script = trtllm.build_script(
            settings, arch=info.get("arch", "qwen2"), checkpoint=paths.checkpoint, engine_dir=paths.engine_dir,
            script_dir=paths.script.parent, project_root=paths.project_root, seq_length=info.get("seq_length", 0))
        _write_if_changed(paths.script, script)
        paths.script.chmod(0o755)
        report.script = paths.script
        engine_model = paths.model_repo / c.ENGINE / VERSION / MODEL_FILE
        if engine_model.is_file():
            report.warnings.append(f"{engine_model} is ignored by the tensorrtllm backend (it needs no model.py)")

    manifest = {
        "generator": "python -m build (qwen-triton)",
        "engine": settings.engine,
        "checkpoint": paths.param_path(paths.checkpoint),
        "settings": settings.to_dict(),
        "configs": {f"{name}/{CONFIG}": hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()},
        "copied": dict(sorted(copies.items())),
    }
    if paths.engine_dir is not None:
        manifest["engine_dir"] = paths.engine_dir.as_posix()
    if paths.model_repo != SOURCE_REPO.resolve():  # the project's own model_repo/ keeps only tracked files
        _write_if_changed(paths.model_repo / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    check = check_repository(paths.model_repo, strict=False)
    report.warnings.extend(check.warnings)
    if check.errors:
        raise BuildError("the repository as written does not check out:\n  " + "\n  ".join(check.errors))
    return report
