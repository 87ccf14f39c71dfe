#!/usr/bin/env python3
"""The served path on a GPU machine: tritonserver from the pytriton wheel, our engine on CUDA,
streaming requests through the ensemble. Results go to $OUT (or --out).

Carry these into the repository (a gitignored folder) and run from its root:
    .carry/triton-py312.tar.xz   `make triton-tarball`, recompressed with xz (27 MB)
    .carry/numpy-1.26.4-cp312-*.whl   the Python backend stub needs numpy 1.x (the image has 2.x)
    .carry/frontwheels/          starlette, uvicorn, httpx and their dependencies: tools/triton_server.py
                                 starts the supervised server, whose HTTP front needs them (pip download
                                 --only-binary=:all: --python-version 3.12 starlette uvicorn httpx)
    .carry/qwen.tiktoken         the real Qwen vocabulary (dashscope's copy) for the default checkpoint
    .carry/gpu_repo/             the model repository, rendered on the CPU machine (the GPU image has no
                                 tritonclient for the build's protobuf check) with
        python -m build --model-repo .carry/gpu_repo --artifacts /tmp/gpu-serve/artifacts --set device=cuda

    PYTHONPATH=. python3 tools/gpu_serve_check.py --carry .carry

(``PYTHONPATH=.``: the image's python3 has no qwen_triton installed; this checkout's is used.  The stub's
venv gets a ``.pth`` to the checkout, so ``tools/triton_server.py`` runs under it as is.)

What it does: writes the default checkpoint at the path the rendered repository names (with the image's
Python: its scipy needs the image's numpy 2), a venv for the stub (numpy 1.26 in it, the image's torch
through a .pth: the engine itself needs neither transformers nor scipy), Triton unpacked to .triton/,
`tools/triton_server.py start`, then one streamed chat reply (time to first chunk, no U+FFFD), N concurrent
streams (output tokens/s from the engine's own counter, batch sizes seen), and the GPU memory the engine
process holds.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from qwen_triton import wire
from qwen_triton.serving import contract as c

ROOT = Path(__file__).resolve().parents[1]

PORTS = {"http": 18000, "grpc": 18001, "metrics": 18002}


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def stub_env(carry: Path) -> str:
    """A venv whose own site-packages holds numpy 1.x (and the wheels in carry/frontwheels where there are
    any: starlette, uvicorn, httpx for the supervised server's front), with the image's packages and the
    repo after it."""
    env = Path("/tmp/stubenv")
    sh([sys.executable, "-m", "venv", "--without-pip", str(env)])
    site = next(env.glob("lib/python3*/site-packages"))
    wheels = glob.glob(str(carry / "numpy-1.*.whl"))[:1] + sorted(glob.glob(str(carry / "frontwheels" / "*.whl")))
    sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), *wheels])
    import torch  # the image's site-packages: the folder above torch's package

    image_site = Path(torch.__file__).resolve().parents[1]
    (site / "zz_image.pth").write_text(f"{image_site}\n{ROOT}\n")
    return str(env / "bin" / "python")


def sse(url: str, body: dict) -> tuple[list[str], float, float]:
    """Chunks of one /generate_stream request, time to first chunk and total latency (s); an error event
    raises wire.ErrorReply."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start, first, chunks = time.perf_counter(), None, []
    with urllib.request.urlopen(req, timeout=300) as resp:
        for event in wire.parse_sse(resp, raise_errors=True):
            first = first or time.perf_counter() - start
            chunks.append(event[c.TEXT_OUTPUT])
    return chunks, first or 0.0, time.perf_counter() - start


def gauges(family: str) -> dict[str, float]:
    """{category label: value} of one of the engine's families (whatever its model / version labels)."""
    families = wire.fetch_metrics(f"http://127.0.0.1:{PORTS['metrics']}/metrics")
    if families is None:
        raise RuntimeError("the metrics port did not answer")
    return wire.metric_values(families, family)


def gpu_processes() -> str:
    return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"],
                          capture_output=True, text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--carry", type=Path, default=ROOT / ".carry")
    ap.add_argument("--artifacts", type=Path, default=Path("/tmp/gpu-serve/artifacts"),
                    help="where the rendered repository expects the default checkpoint")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-serve-out")))
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py = stub_env(args.carry)
    with tarfile.open(next(args.carry.glob("triton-py312.tar.xz"))) as tar:  # gives .triton/
        tar.extractall(ROOT, filter="tar") if sys.version_info >= (3, 12) else tar.extractall(ROOT)
    env = {**os.environ, "QWEN_TIKTOKEN": str(args.carry / "qwen.tiktoken")}
    sh([sys.executable, "-c", "from build.default_checkpoint import ensure_default_checkpoint as e; "
        f"print(e({str(args.artifacts)!r}))"], cwd=ROOT, env=env)
    log = args.out / "tritonserver.log"
    sh([py, "tools/triton_server.py", "start", "--model-repository", str(args.carry / "gpu_repo"), "--python", py,
        "--http-port", str(PORTS["http"]), "--grpc-port", str(PORTS["grpc"]), "--metrics-port",
        str(PORTS["metrics"]), "--log-file", str(log), "--timeout", "600"], cwd=ROOT)
    results: dict = {"device": subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()}
    try:
        url = f"http://127.0.0.1:{PORTS['http']}{wire.generate_path(c.ENSEMBLE, stream=True)}"
        chat = {c.MESSAGES: json.dumps([{"role": "user", "content": "你好，讲个故事 🙂"}]), c.MAX_TOKENS: 64,
                c.MIN_LENGTH: 64, c.STREAM: True, c.TEMPERATURE: 0.0}
        sse(url, chat)  # warm-up
        chunks, ttft, latency = sse(url, chat)
        results["single_stream"] = {"chunks": len(chunks), "ttft_ms": round(ttft * 1e3, 2),
                                    "latency_ms": round(latency * 1e3, 2), "fffd": any("\ufffd" in c for c in chunks)}
        before = gauges(c.METRIC_ENGINE)
        body = {**chat, c.MAX_TOKENS: args.max_tokens, c.MIN_LENGTH: args.max_tokens}
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(args.concurrency) as pool:
            outs = list(pool.map(lambda _: sse(url, body), range(args.concurrency)))
        wall = time.perf_counter() - start
        time.sleep(0.5)
        after = gauges(c.METRIC_ENGINE)
        tokens = after["generated_tokens"] - before["generated_tokens"]
        results["concurrent_streams"] = {
            "concurrency": args.concurrency, "output_tokens": tokens, "wall_s": round(wall, 3),
            "output_tok_s": round(tokens / wall, 1), "max_batch_seen": after["max_batch_seen"],
            "ttft_ms_median": round(sorted(o[1] for o in outs)[len(outs) // 2] * 1e3, 2),
            "fffd": any("\ufffd" in c for o in outs for c in o[0])}
        results["kv_blocks"] = gauges(c.METRIC_KV_BLOCKS)
        results["gpu_processes"] = gpu_processes()
    finally:
        subprocess.run([py, "tools/triton_server.py", "stop"], cwd=ROOT)
    (args.out / "gpu_serve.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    # "fffd" is informational: random weights emit byte tokens that form no valid UTF-8 at all (the
    # whole-character streaming of valid text is checked on the CPU with a scripted checkpoint).
    ok = (results["single_stream"]["chunks"] > 10 and results["concurrent_streams"]["max_batch_seen"] > 1
          and "triton_python_backend_stub" in results["gpu_processes"])
    print("GPU SERVE CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
