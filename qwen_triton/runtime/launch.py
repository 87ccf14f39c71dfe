"""How tritonserver is launched from an install: its command line, the environment its Python-backend
stub needs, and the checks made before starting it.  Pure functions of their arguments (and the install
on disk); :class:`.server.TritonServer` holds the values and the process.

Why the environment looks the way it does (PATH, LD_LIBRARY_PATH, numpy 1.x): docs/triton-runtime.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import layout
from .interpreter import numpy_warning, probe_python

LATENCY_METRICS = ("auto", "histogram", "summary", "none")


class TritonError(RuntimeError):
    """Server failed to start / become ready; message includes the log tail."""


def metrics_settings(triton_dir: Path, latency_metrics: str) -> list[str]:
    """Latency metric settings to turn on: only those this build knows (it ignores unknown ones).

    ``latency_metrics``: "auto" (histograms if the build has them, else summaries), "histogram",
    "summary" or "none".
    """
    if latency_metrics == "none":
        return []
    marker = layout.read_marker(triton_dir) or {}
    known = marker.get("metrics_settings")
    if known is None:
        known = layout.supported_metrics_settings(triton_dir)
    wanted = {
        "auto": ["histogram_latencies"] if "histogram_latencies" in known else ["summary_latencies"],
        "histogram": ["histogram_latencies"],
        "summary": ["summary_latencies"],
    }[latency_metrics]
    return [w for w in wanted if w in known]


def server_command(
    triton_dir: Path,
    model_repository: Path,
    ports: Mapping[str, int],
    *,
    log_verbose: int = 0,
    metrics: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The tritonserver command line: the install's binary and backends, the ports ("http", "grpc",
    "metrics"), ``--metrics-config <setting>=true`` for each of ``metrics``, then ``extra_args``."""
    cmd = [
        str(layout.tritonserver_binary(triton_dir)),
        f"--model-repository={model_repository}",
        f"--backend-directory={layout.backends_dir(triton_dir)}",
        f"--http-port={ports['http']}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-port={ports['metrics']}",
        f"--log-verbose={log_verbose}",
    ]
    cmd += [f"--metrics-config={setting}=true" for setting in metrics]
    return cmd + list(extra_args)


def stub_environment(python: str, libdir: str | None, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ (plus extra_env) with the venv's bin/ first on PATH and its libpython's dir (``libdir``)
    first on LD_LIBRARY_PATH, without PYTHONHOME."""
    env = dict(os.environ)
    env.update(extra_env or {})
    venv_bin = str(Path(python).absolute().parent)  # NOT resolved: keep the venv, not its base
    env["PATH"] = os.pathsep.join([venv_bin] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
    if libdir:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + parts)
    env.pop("PYTHONHOME", None)  # would override the venv lookup in the stub
    return env


def probe(python: str) -> dict:
    """:func:`.interpreter.probe_python`, its failure as TritonError."""
    try:
        return probe_python(python)
    except layout.InstallError as exc:
        raise TritonError(str(exc)) from None


def check_install(triton_dir: Path, model_repository: Path) -> None:
    """Raise TritonError unless triton_dir holds a finished install and model_repository is a folder."""
    if not layout.is_installed(triton_dir):
        raise TritonError(
            f"Triton is not installed in {triton_dir}: run `make triton-install` "
            "(python tools/triton_install.py)"
        )
    if not model_repository.is_dir():
        raise TritonError(f"model repository {model_repository} does not exist")


def check_python(triton_dir: Path, python: str, info: dict, allow_numpy2: bool) -> None:
    """Raise TritonError if the Python environment (``info``: its probe) does not fit the install's stub
    or has a numpy >= 2 (unless ``allow_numpy2``); warn on stderr about a numpy the stub may not take."""
    marker = layout.read_marker(triton_dir) or {}
    if marker.get("python_version") != info["version"]:
        raise TritonError(
            f"{triton_dir} holds the Python {marker.get('python_version')} stub but {python} is "
            f"Python {info['version']}: run tools/triton_install.py --python {python} --force"
        )
    warning = numpy_warning(info)
    if warning and info.get("numpy") and not allow_numpy2:
        raise TritonError(warning + " (allow_numpy2=True / --allow-numpy2 / TRITON_ALLOW_NUMPY2=1 to try anyway)")
    if warning:
        print(f"[triton-server] WARNING: {warning}", file=sys.stderr)
