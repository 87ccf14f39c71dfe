"""Build a model repository with the real build step and serve it with the real
tritonserver (from .triton/) on free ports: the fixtures of the end-to-end tests."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from triton_server import TritonServer  # noqa: E402

TRITON_DIR = ROOT / ".triton"

needs_triton = pytest.mark.skipif(not (TRITON_DIR / ".installed.json").exists(),
                                  reason="Triton is not installed: run `make triton-install`")


def build_repo(dest: Path, model: str | None = None, sets: tuple[str, ...] = ()) -> Path:
    """Run `python -m build` into dest/model_repo (artifacts in dest/artifacts)."""
    cmd = [sys.executable, "-m", "build", "-q", "--model-repo", str(dest / "model_repo"),
           "--artifacts", str(dest / "artifacts")]
    if model:
        cmd += ["--model", model]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return dest / "model_repo"


@contextmanager
def serve(repo: Path, log: Path):
    # a short exit timeout: Triton 2.51 keeps a cancelled ensemble request "in flight" for good
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR, log_file=log,
                          extra_args=["--exit-timeout-secs=5"])
    server.start_and_wait(timeout=180)
    try:
        yield server
    finally:
        server.stop()


def scrape(server: TritonServer, family: str) -> dict[str, float]:
    """{label value: number} of one metric family from the metrics port."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(rf'^{family}{{[a-z_]+="([^"]+)"}} (\S+)$', text, re.M)}
