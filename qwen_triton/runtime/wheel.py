"""Getting the pinned wheel (``pip download --no-deps``, checked against its sha256) and unzipping the
members the server needs.

We never ``pip install`` the wheel: it would pin numpy<2 and drag in pytriton's own dependencies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .layout import (
    KEEP_PREFIXES,
    LIBPYTHON313_RE,
    SERVER_PREFIX,
    STUB_NAME,
    STUBS_PREFIX,
    WHEEL_FILENAME,
    WHEEL_PLATFORM,
    WHEEL_PROJECT,
    WHEEL_SHA256,
    WHEEL_VERSION,
    InstallError,
)
from .paths import WHEEL_CACHE


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_wheel(path: Path) -> None:
    """Raise InstallError unless path is the pinned wheel (by sha256)."""
    digest = sha256_of(path)
    if digest != WHEEL_SHA256:
        raise InstallError(
            f"checksum mismatch for {path}:\n  expected sha256 {WHEEL_SHA256}\n  got      sha256 {digest}\n"
            "The file is corrupt or not the pinned nvidia-pytriton 0.7.0 wheel"
            + (
                "; delete it and run again."
                if path.parent == WHEEL_CACHE or path.parent.name == "wheels"
                else "."
            )
        )


def _pip_download_command(pip_python: str, cache: Path) -> list[str]:
    # --platform: an older host would refuse a manylinux_2_35 wheel; the tarball can be built anywhere.
    return [
        pip_python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", WHEEL_PLATFORM,
        "--disable-pip-version-check", "--progress-bar", "off", "-d", str(cache),
        f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
    ]


def download_wheel(cache: Path, pip_python: str = sys.executable) -> Path:
    """``pip download --no-deps`` the pinned wheel into cache (kept there for the next run)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / WHEEL_FILENAME
    if target.exists():
        return target
    print(f"[triton-install] downloading {WHEEL_FILENAME} (55 MB) ...", flush=True)
    proc = subprocess.run(_pip_download_command(pip_python, cache), check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        if "No module named pip" in proc.stderr:
            raise InstallError(f"{pip_python} has no pip; pass --wheel with a downloaded {WHEEL_FILENAME}")
        raise InstallError(f"pip download failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    if not target.exists():
        raise InstallError(f"pip download did not produce {target}:\n{proc.stdout[-1000:]}")
    return target


def member_target(name: str, stub_version: str) -> str | None:
    """Where a wheel member goes inside an install, or None to skip it.

    The stub for ``stub_version`` moves from ``python_backend_stubs/3.X/`` to ``backends/python/`` (the
    same depth, so its RPATH still resolves); the wheel's libpython 3.13 is kept only for the 3.13 stub.
    """
    if name.endswith("/"):
        return None
    if name == f"{STUBS_PREFIX}{stub_version}/{STUB_NAME}":
        return f"{SERVER_PREFIX}backends/python/{STUB_NAME}"
    if not name.startswith(KEEP_PREFIXES):
        return None
    if LIBPYTHON313_RE.match(name) and stub_version != "3.13":
        return None
    return name


def extract(wheel: Path, dest: Path, stub_version: str) -> list[str]:
    """Unzip the needed members of wheel into dest (which must be empty) and return their relative paths."""
    written = []
    with zipfile.ZipFile(wheel) as zf:
        stub = f"{STUBS_PREFIX}{stub_version}/{STUB_NAME}"
        if stub not in set(zf.namelist()):
            raise InstallError(f"no stub {stub} in {wheel}")
        for info in zf.infolist():
            rel = member_target(info.filename, stub_version)
            if rel is None:
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            executable = bool(mode & 0o111) or rel.endswith(("/tritonserver", STUB_NAME)) or ".so" in rel
            os.chmod(out, 0o755 if executable else 0o644)  # zipfile keeps no permissions
            written.append(rel)
    return written
