"""The pinned ``nvidia-pytriton`` wheel and the layout of an install made from it.

An install (``.triton/`` by default) keeps the wheel's own layout, because the binaries find the bundled
libraries by RPATH relative to themselves::

    .triton/
      .installed.json                          marker: wheel sha256, stub version, ...; a re-run is a no-op
      pytriton/tritonserver/bin/tritonserver
      pytriton/tritonserver/backends/python/   libtriton_python.so, triton_python_backend_utils.py,
                                               triton_python_backend_stub (the one for --python)
      pytriton/tritonserver/caches/local/      libtritoncache_local.so
      nvidia_pytriton.libs/                    bundled libs (libtritonserver, libcudart, libdcgm, ...)

Reading an install (is it there, which stub, which metrics settings the build knows) lives here; making
one is :mod:`qwen_triton.runtime.install`'s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .paths import TRITON_DIR

WHEEL_PROJECT = "nvidia-pytriton"
WHEEL_VERSION = "0.7.0"
WHEEL_FILENAME = "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
WHEEL_PLATFORM = "manylinux_2_35_x86_64"
# sha256 of WHEEL_FILENAME as served by PyPI (computed 2026-11-22; 55,369,373 bytes).
WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
TRITON_VERSION = "2.51.0"
REQUIRED_GLIBC = (2, 35)
STUB_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")

MARKER_NAME = ".installed.json"

# Inside the wheel and, unchanged, inside an install (the RPATHs depend on it).
SERVER_PREFIX = "pytriton/tritonserver/"
LIBS_PREFIX = "nvidia_pytriton.libs/"
STUBS_PREFIX = SERVER_PREFIX + "python_backend_stubs/"
KEEP_PREFIXES = (
    SERVER_PREFIX + "bin/",
    SERVER_PREFIX + "backends/",
    SERVER_PREFIX + "caches/",
    LIBS_PREFIX,
)
LIBPYTHON313_RE = re.compile(r"^nvidia_pytriton\.libs/libpython3-[0-9a-f]+\.13\.so")
STUB_NAME = "triton_python_backend_stub"

KNOWN_METRICS_SETTINGS = (
    "histogram_latencies",
    "summary_latencies",
    "summary_quantiles",
    "counter_latencies",
    "cache_summary",
)


class InstallError(RuntimeError):
    """A problem the user has to fix; printed without a traceback."""


def server_dir(dest: Path) -> Path:
    """The ``tritonserver`` folder inside an install (holds bin/, backends/, caches/)."""
    return Path(dest) / SERVER_PREFIX.rstrip("/")


def tritonserver_binary(dest: Path) -> Path:
    """The ``tritonserver`` executable of an install."""
    return server_dir(dest) / "bin" / "tritonserver"


def backends_dir(dest: Path) -> Path:
    """The ``--backend-directory`` of an install."""
    return server_dir(dest) / "backends"


def stub_path(dest: Path) -> Path:
    """The Python-backend stub an install carries (the one for its ``python_version``)."""
    return backends_dir(dest) / "python" / STUB_NAME


def read_marker(dest: Path) -> dict | None:
    """The marker of a finished install, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(dest) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_installed(dest: Path = TRITON_DIR) -> bool:
    """True if dest holds a finished install of the pinned wheel."""
    marker = read_marker(dest)
    return bool(
        marker
        and marker.get("wheel_sha256") == WHEEL_SHA256
        and tritonserver_binary(dest).is_file()
        and stub_path(dest).is_file()
    )


def supported_metrics_settings(dest: Path) -> list[str]:
    """The ``--metrics-config`` settings this build knows, found by scanning libtritonserver for their names.

    Needed because tritonserver silently accepts unknown settings: 2.51.0 takes
    ``histogram_latencies=true`` without complaint but has no histogram metrics at all (they came later).
    """
    libs = sorted((Path(dest) / LIBS_PREFIX).glob("libtritonserver*.so*"))
    if not libs:
        return []
    data = libs[0].read_bytes()
    return [name for name in KNOWN_METRICS_SETTINGS if name.encode() + b"\0" in data]
