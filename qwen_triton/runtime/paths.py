"""Where the Triton runtime looks by default: the checkout this package lives in.

The package is used from a checkout (``pip install -e .`` or ``PYTHONPATH=.``), so the project's folders
are found relative to it: ``.triton/`` (the install), ``logs/`` (server log, pid and state files),
``.cache/wheels/`` (the downloaded wheel), ``model_repo/`` and ``.venv/``.  Environment variables are read
when a function here is called, never at import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRITON_DIR = PROJECT_ROOT / ".triton"
LOG_DIR = PROJECT_ROOT / "logs"
WHEEL_CACHE = PROJECT_ROOT / ".cache" / "wheels"
MODEL_REPO = PROJECT_ROOT / "model_repo"
VENV_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"


def default_triton_dir() -> Path:
    """The install folder: ``$TRITON_DIR``, else ``<checkout>/.triton``."""
    return Path(os.environ.get("TRITON_DIR", TRITON_DIR))


def default_python() -> str:
    """The interpreter the Python-backend models run in: ``$TRITON_PYTHON``, else the checkout's venv
    (its *unresolved* path: the stub finds the venv through it), else ``$VIRTUAL_ENV``'s, else this one."""
    env = os.environ.get("TRITON_PYTHON")
    if env:
        return env
    if VENV_PYTHON.exists():
        return str(VENV_PYTHON)
    if os.environ.get("VIRTUAL_ENV"):
        return str(Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python")
    return sys.executable
