"""Run tensorrtllm_backend's own client scripts, unchanged, against our stack, and check their outputs.

    .venv/bin/python -m tools.upstream_clients --checkout /path/to/tensorrtllm_backend [--tag v0.19.0]
        [--model artifacts/gguf/<folder>] [--out logs/upstream-clients.json]

The scripts come from the checkout at --tag (git archive: inflight_batcher_llm/client/,
tools/inflight_batcher_llm/, tools/utils/, ci/L0_backend_trtllm/simple_data.json). Two repositories
are built from one checkpoint (default: the default build's): the default, decoupled (streaming), and
one with decoupled=false, as upstream's README pairs its scripts with `decoupled_mode` (the unary
ModelInfer and HTTP /infer that the scripts use without --streaming need a model that is not
decoupled; Triton refuses them for a decoupled one). Each script runs with its default flags plus what
it requires, and its result is checked against our engine run in this process on the same tensors:
end_to_end_grpc_client through its own --check-outputs, inflight_batcher_llm_client by its printed
"Output sequence", end_to_end_test by its own ensemble-vs-models assertion, benchmark_core_model by a
positive output-token rate. The scripts need transformers, torch, pandas and tabulate in --python.
Nothing here runs in CI (no checkout there): tests/test_upstream_clients.py rebuilds their requests.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import queue
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from build.gguf_import import imported_dir
from build.pinned_models import QWEN25_CODER_05B
from qwen_triton.serving import contract as c

ROOT = Path(__file__).resolve().parents[1]
FILES = ("inflight_batcher_llm/client", "tools/inflight_batcher_llm", "tools/utils",
         "ci/L0_backend_trtllm/simple_data.json")
SOYER = "Born in north-east France, Soyer trained as a"
KV_BYTES = 512 << 20


@dataclass
class Run:
    script: str
    build: str
    args: list[str]
    exit_code: int
    check: str  # what was compared, and how it came out
    ok: bool
    seconds: float


def export_scripts(checkout: Path, tag: str, dest: Path) -> Path:
    data = subprocess.run(["git", "-C", str(checkout), "archive", tag, *FILES], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def reference(engine, inputs: dict[str, np.ndarray]) -> list[int]:
    """Our engine's output ids for the tensors a script sends to tensorrt_llm (one row)."""
    done: queue.Queue = queue.Queue()
    engine.submit(f"ref-{time.monotonic_ns()}", inputs, done.put)
    return done.get(timeout=600).arrays[c.OUT_OUTPUT_IDS][0, 0].tolist()


class Session:
    """The two servers, our reference engine and the scripts' folder."""

    def __init__(self, scripts: Path, python: str, checkpoint: Path, servers: dict, engine):
        self.scripts, self.python, self.checkpoint = scripts, python, checkpoint
        self.servers, self.engine = servers, engine
        self.tokenizer = engine.tokenizer
        self.runs: list[Run] = []

    def script(self, rel: str, build: str, args: list[str], check) -> None:
        t0 = time.monotonic()
        proc = subprocess.run([self.python, rel, *args], cwd=self.scripts, capture_output=True, text=True,
                              timeout=1800)
        what, ok = check(proc.stdout) if proc.returncode == 0 else (
            f"exit {proc.returncode}; stdout: {proc.stdout[-400:]!r}; stderr: {proc.stderr[-300:]!r}", False)
        self.runs.append(Run(rel, build, args, proc.returncode, what, ok, round(time.monotonic() - t0, 1)))
        print(f"{'ok ' if ok else 'FAIL'} {rel} [{build}] {' '.join(args)}\n     {what}", flush=True)

    def has(self, rel: str, text: str) -> bool:
        """Whether the script at this tag contains `text` (the scripts' flags and checks differ by tag)."""
        return text in (self.scripts / rel).read_text()

    def url(self, build: str, protocol: str) -> str:
        srv = self.servers[build]
        return f"localhost:{srv.grpc_port if protocol == 'grpc' else srv.http_port}"


def _output_sequence(stdout: str) -> list[int] | None:
    found = re.findall(r"^Output sequence:\s+(\[.*\])$", stdout, re.M)
    return ast.literal_eval(found[-1]) if found else None


def run_e2e_grpc_client(s: Session) -> None:
    rel = "inflight_batcher_llm/client/end_to_end_grpc_client.py"
    prompt, n = "Hello, my name is", 32
    ids = s.tokenizer.encode(prompt, allow_special=True)
    reply = s.tokenizer.decode(reference(s.engine, _engine_inputs(ids, n, top_k=1)))
    # the script's own check compares the reply; v0.19.0's puts the prompt in front itself when not
    # streaming (the reply holds it: exclude_input_in_output is false by default), v0.14.0's does not
    adds_prompt = s.has(rel, "expected = prompt + expected")
    for args in (["-p", prompt, "-o", str(n)], ["-p", prompt, "-o", str(n), "--streaming"],
                 ["-p", prompt, "-o", str(n), "--model-name", "tensorrt_llm_bls"]):
        expected = reply if adds_prompt or "--streaming" in args else prompt + reply
        full = ["-u", s.url("stream", "grpc"), *args, "--check-outputs", "--expected-outputs", json.dumps([expected])]
        s.script(rel, "stream", full, lambda out: ("its own --check-outputs passed", True))
    prompts = ["This is a test", "I want you to", "The cat is"]
    s.script(rel, "stream", ["-u", s.url("stream", "grpc"), "-o", "5", "-p", json.dumps(prompts), "--batch-inputs"],
             lambda out: _batch_check(s, prompts, out))


def _batch_check(s: Session, prompts: list[str], stdout: str) -> tuple[str, bool]:
    got = dict(re.findall(r"^(\d+): (.*)$", stdout, re.M))
    want = {str(i): p + s.tokenizer.decode(reference(s.engine, _engine_inputs(
        s.tokenizer.encode(p, allow_special=True), 5, top_k=1))) for i, p in enumerate(prompts)}
    same = all(got.get(k, "").strip() == v.strip() for k, v in want.items())
    return f"3 prompts in one request, one reply each by batch_index: {'equal' if same else got}", same


def _engine_inputs(ids: list[int], n: int, top_k: int | None = None, end_id: int | None = None,
                   exclude: bool = True) -> dict[str, np.ndarray]:
    inputs = {c.IN_INPUT_IDS: np.array([ids], np.int32), c.IN_INPUT_LENGTHS: np.array([len(ids)], np.int32),
              c.IN_REQUEST_OUTPUT_LEN: np.array([n], np.int32), c.IN_EXCLUDE_INPUT: np.array([exclude]),
              c.IN_TEMPERATURE: np.array([1.0], np.float32)}
    if top_k is not None:
        inputs[c.IN_TOP_K] = np.array([top_k], np.int32)
    if end_id is not None:
        inputs[c.IN_END_ID] = inputs[c.IN_PAD_ID] = np.array([end_id], np.int32)
    return inputs


def run_inflight_batcher_llm_client(s: Session) -> None:
    from transformers import AutoTokenizer

    rel = "inflight_batcher_llm/client/inflight_batcher_llm_client.py"
    hf = AutoTokenizer.from_pretrained(str(s.checkpoint))
    ids, end_id = hf.encode(SOYER), hf.encode(hf.eos_token, add_special_tokens=False)[0]
    want = ids + reference(s.engine, _engine_inputs(ids, 16, top_k=1, end_id=end_id))
    tok = ["--tokenizer-dir", str(s.checkpoint)]

    def same_ids(out):
        got = _output_sequence(out)
        return f"output sequence equals our engine's ({len(want)} ids)" if got == want else f"got {got}", got == want

    def stopped(out):
        got = _output_sequence(out) or []
        return f"stopped after {len(got) - len(ids)} of 200 tokens", 0 < len(got) - len(ids) < 200

    s.script(rel, "unary", ["-u", s.url("unary", "grpc"), *tok], same_ids)
    s.script(rel, "stream", ["-u", s.url("stream", "grpc"), *tok, "--streaming"], same_ids)
    for build, extra in (("unary", []), ("stream", ["--streaming"])):
        s.script(rel, build, ["-u", s.url(build, "grpc"), *tok, *extra, "--stop-after-ms", "2000",
                              "--request-output-len", "200", "--request-id", "7"], stopped)
    perf = s.has(rel, "--return-perf-metrics")  # v0.19.0's flag; v0.14.0's script has no such flag
    s.script(rel, "unary", ["-u", s.url("unary", "grpc"), *tok, "--request-output-len", "4", "--return-log-probs",
                            "--return-context-logits", "--return-generation-logits"]
             + (["--return-perf-metrics"] if perf else []),
             lambda out: ("log probs, logits" + (" and perf metrics" if perf else "") + " printed",
                          "generation_logits.shape: (1, 4," in out
                          and (not perf or "kv_cache_alloc_total_blocks" in out)))


def run_end_to_end_test(s: Session) -> None:
    rel = "tools/inflight_batcher_llm/end_to_end_test.py"
    data = ["--dataset", "ci/L0_backend_trtllm/simple_data.json", "--max-input-len", "500"]

    def passed(out):
        return "models by hand equal the ensemble (its own assertion)", "Functionality test succeed" in out

    s.script(rel, "unary", ["-u", s.url("unary", "http"), *data], passed)
    s.script(rel, "unary", ["-u", s.url("unary", "grpc"), "-i", "grpc", *data, "--test-bls"], passed)


def run_benchmark_core_model(s: Session) -> None:
    rel = "tools/inflight_batcher_llm/benchmark_core_model.py"
    data = ["dataset", "--dataset", "ci/L0_backend_trtllm/simple_data.json", "--tokenizer-dir", str(s.checkpoint)]

    def rate(out):
        found = re.search(r"OP tokens/sec\s*\|\s*([-\d.]+)", out)
        value = float(found.group(1)) if found else None
        return f"OP tokens/sec {value}", value is not None and value > 0

    s.script(rel, "unary", ["-i", "grpc", "-u", s.url("unary", "grpc"), "--max-input-len", "500", *data], rate)
    s.script(rel, "stream", ["-i", "grpc", "--decoupled", "-u", s.url("stream", "grpc"), "--max-input-len", "500",
                             *data], rate)
    s.script(rel, "unary", ["-u", s.url("unary", "http"), "--max-input-len", "500", *data],
             lambda out: ("HTTP run completed", "Total Latency" in out))


@contextlib.contextmanager
def serving(checkpoint: Path, tmp: Path):
    """({"stream": server, "unary": server}, our EngineService) on one checkpoint, built and started here."""
    from qwen_triton import EngineConfig
    from qwen_triton.runtime.server import TritonServer
    from qwen_triton.serving.engine_service import EngineService

    servers = {}
    small_kv = ["--set", f"kv_cache_max_bytes={KV_BYTES}"]  # two servers and our engine in one machine's memory
    with contextlib.ExitStack() as stack:
        for build, sets in (("stream", small_kv), ("unary", [*small_kv, "--set", "decoupled=false"])):
            repo = tmp / build / "model_repo"
            subprocess.run([sys.executable, "-m", "build", "-q", "--model", str(checkpoint), "--model-repo", str(repo),
                            "--artifacts", str(tmp / "artifacts"), *sets], cwd=ROOT, check=True)
            server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp / f"{build}.log",
                                  extra_args=["--exit-timeout-secs=5"])
            servers[build] = stack.enter_context(server)
        config = EngineConfig(device="cpu", dtype="float32", kv_cache_max_bytes=KV_BYTES)
        engine = EngineService(str(checkpoint), config)
        stack.callback(engine.shutdown)
        yield servers, engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkout", type=Path, required=True, help="a git checkout of tensorrtllm_backend")
    p.add_argument("--tag", default="v0.19.0")
    p.add_argument("--model", type=Path, help="checkpoint folder (default: the default build's under artifacts/gguf/)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the scripts")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "upstream-clients.json")
    args = p.parse_args(argv)
    checkpoint = args.model or imported_dir(ROOT / "artifacts", QWEN25_CODER_05B.name, QWEN25_CODER_05B.sha256)
    with tempfile.TemporaryDirectory(prefix="upstream-") as tmp, serving(checkpoint, Path(tmp)) as (servers, engine):
        s = Session(export_scripts(args.checkout, args.tag, Path(tmp) / "scripts"), args.python, checkpoint,
                    servers, engine)
        for run in (run_e2e_grpc_client, run_inflight_batcher_llm_client, run_end_to_end_test,
                    run_benchmark_core_model):
            run(s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tag": args.tag, "checkpoint": str(checkpoint),
                                    "runs": [asdict(r) for r in s.runs]}, indent=1))
    failed = [r for r in s.runs if not r.ok]
    print(f"{len(s.runs) - len(failed)} of {len(s.runs)} runs passed; details in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
