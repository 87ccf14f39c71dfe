"""The Python environment the Python-backend stub runs in: which stub it needs, where its shared
libpython is, and whether its numpy is one the stub works with (1.x).

The stub is an embedded CPython linked against ``libpython3.X.so.1.0``, so the interpreter must be built
with ``--enable-shared`` (3.8-3.12; the 3.13 stub carries the wheel's own libpython) and must have numpy 1.x.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .layout import STUB_VERSIONS, WHEEL_FILENAME, InstallError
from .paths import VENV_PYTHON

_PROBE = r"""
import json, sys, sysconfig, os
info = {
    "executable": sys.executable,
    "version": "%d.%d" % sys.version_info[:2],
    "full_version": sys.version.split()[0],
    "prefix": sys.prefix,
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
    "instsoname": sysconfig.get_config_var("INSTSONAME"),
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
}
try:
    import numpy
    info["numpy"] = numpy.__version__
except Exception as exc:
    info["numpy"] = None
print(json.dumps(info))
"""


def probe_python(python: str) -> dict:
    """Ask an interpreter for its version, LIBDIR, libpython name and numpy version."""
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], check=True, capture_output=True, text=True, timeout=120
        ).stdout
    except FileNotFoundError:
        raise InstallError(f"--python {python}: no such interpreter") from None
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"--python {python} failed to run: {exc.stderr.strip()[-500:]}") from None
    info = json.loads(out.strip().splitlines()[-1])
    info["libpython"] = find_libpython(info)
    return info


def find_libpython(info: dict) -> str | None:
    """Path of the interpreter's ``libpython3.X.so.1.0`` (what the stub links), or None."""
    libdir = info.get("libdir")
    if not libdir:
        return None
    names = [f"libpython{info['version']}.so.1.0", info.get("instsoname") or "", info.get("ldlibrary") or ""]
    for name in names:
        if name and name.endswith((".so", ".so.1.0")) and (Path(libdir) / name).exists():
            return str(Path(libdir) / name)
    return None


def numpy_warning(info: dict) -> str | None:
    """Why the stub would fail with this environment's numpy (missing, or 2.x), or None if it is 1.x."""
    ver = info.get("numpy")
    if ver is None:
        return (
            f"numpy is not installed for {info['executable']}: the Python-backend stub fails with "
            "\"ModuleNotFoundError: No module named 'numpy'\". Install numpy<2 there."
        )
    if int(ver.split(".")[0]) >= 2:
        return (
            f"{info['executable']} has numpy {ver}: this Triton build's stub needs numpy 1.x "
            '(with numpy 2 outputs built from numpy arrays fail with "output tensor shape does not match '
            'size of output" and BYTES inputs crash the stub: "Stub process ... is not healthy"). Install '
            "numpy<2 there (on an image with numpy 2: a venv with numpy 1.26.4 and a .pth to the image's "
            "site-packages)."
        )
    return None


def resolve_python(arg: str | None) -> tuple[str, dict | None]:
    """Turn --python into (stub minor version, probe info or None).

    ``arg`` is an interpreter path/name or a bare version such as ``3.12`` (to build for another machine);
    None means the checkout's ``.venv/bin/python`` if there is one, else this interpreter.
    """
    if arg is None:
        arg = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    if re.fullmatch(r"3\.\d+", arg):
        version, info = arg, None
    else:
        exe = shutil.which(arg) or arg
        info = probe_python(exe)
        version = info["version"]
    if version not in STUB_VERSIONS:
        raise InstallError(
            f"no Python-backend stub for Python {version} in {WHEEL_FILENAME}: it has stubs for "
            f"{', '.join(STUB_VERSIONS)}. Use --python with one of those interpreters."
        )
    if info is not None and version != "3.13" and not info["libpython"]:
        raise InstallError(
            f"{info['executable']} (Python {info['full_version']}) has no shared libpython{version}.so.1.0 "
            f"in {info['libdir']}: the stub links against it. Use a Python built with --enable-shared "
            "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install ...; python.org, distro and "
            "conda builds are shared)."
        )
    return version, info
