"""NVIDIA GenAI-Perf against the real server: tools/genai_perf.sh runs a short `genai-perf profile` of the
ensemble (kserve over gRPC, tensorrtllm inputs) with a deterministic output length, streaming and not.

genai-perf lives in its own venv (.venv-genai-perf, about 1 GB: `tools/genai_perf.sh --setup`, about
40 s); without it these tests skip.  The tokenizer is the default model's folder (`make build-engine`);
the served model is the random-weight one, which shares the Qwen2.5 vocabulary.

The server-side check of the length is qwen_triton_engine{counter="generated_tokens"}: genai-perf's own
Output Sequence Length re-tokenizes the returned text, and random tokens do not round-trip exactly.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from served import needs_triton, scrape

from build.gguf_import import imported_dir
from build.pinned_models import QWEN25_CODER_05B
from qwen_triton.serving import contract as c

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "genai_perf.sh"
VENV = Path(os.environ.get("GENAI_PERF_VENV", ROOT / ".venv-genai-perf"))
TOKENIZER = imported_dir(ROOT / "artifacts", QWEN25_CODER_05B.name, QWEN25_CODER_05B.sha256)

REQUESTS = 8
OUTPUT_TOKENS = 16

# CI creates the venv (.ci/run), so there a missing one is a failure, never a skip
needs_genai_perf = pytest.mark.skipif(
    not (VENV / "bin" / "genai-perf").exists() and not os.environ.get("CI"),
    reason=f"{VENV.name} is absent: create it with `tools/genai_perf.sh --setup` (about 40 s, 1 GB)")

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_triton, needs_genai_perf]


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip(f"no tokenizer in {TOKENIZER}: run `make build-engine`")
    return TOKENIZER


@pytest.fixture(scope="module")
def server(random_served):
    """The session's random-weight model server (conftest.random_served)."""
    return random_served.server


def generated_tokens(server) -> float:
    return scrape(server, c.METRIC_ENGINE).get("generated_tokens", 0.0)


def wait_generated(server, expected: float, timeout: float = 10.0) -> float:
    """The engine counter is exported on the model's poll: wait until it reaches `expected`."""
    deadline = time.monotonic() + timeout
    while (value := generated_tokens(server)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def run_script(args: list[str], env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    """tools/genai_perf.sh in its own process group, so that a timeout also ends genai-perf and perf_analyzer
    (perf_analyzer 2.51 once waited forever here for a response the server had sent)."""
    proc = subprocess.Popen([str(SCRIPT), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env}, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"tools/genai_perf.sh took over {timeout:.0f} s:\n{stdout[-4000:]}{stderr[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "unary"])
def test_genai_perf_profile(server, tokenizer, tmp_path, streaming):
    out = tmp_path / "genai-perf"
    args = ["--tokenizer", str(tokenizer), "--artifact-dir", str(out),
            "--synthetic-input-tokens-mean", "32", "--synthetic-input-tokens-stddev", "0",
            "--output-tokens-mean", str(OUTPUT_TOKENS), "--output-tokens-mean-deterministic",
            "--request-count", str(REQUESTS), "--concurrency", "2", "--warmup-request-count", "0"]
    if streaming:
        args.append("--streaming")
    before = generated_tokens(server)
    proc = run_script(args, {"TRITON_GRPC_PORT": str(server.grpc_port)})
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, f"tools/genai_perf.sh exited {proc.returncode}:\n{log}"
    attempts = 1 + len(re.findall(r"retrying", proc.stderr))  # only without the preload shim (see the script)

    summaries = list(out.glob("*/profile_export_genai_perf.json"))
    assert len(summaries) == 1, f"no profile export under {out}:\n{log}"
    stats = json.loads(summaries[0].read_text())
    assert stats["request_count"]["avg"] == REQUESTS
    assert stats["input_sequence_length"]["avg"] == 32
    # re-tokenized text: close to, not exactly, the generated count (see the module docstring)
    assert OUTPUT_TOKENS * 0.75 <= stats["output_sequence_length"]["avg"] <= OUTPUT_TOKENS * 1.5
    assert stats["request_throughput"]["avg"] > 0
    if streaming:
        assert 0 < stats["time_to_first_token"]["avg"] < stats["request_latency"]["avg"]
        assert stats["inter_token_latency"]["avg"] > 0

    raw = json.loads((summaries[0].parent / "profile_export.json").read_text())
    records = raw["experiments"][0]["requests"]
    assert len(records) == REQUESTS
    for record in records:
        sent = record["request_inputs"]
        assert sent["max_tokens"] == OUTPUT_TOKENS and sent["min_length"] == OUTPUT_TOKENS, sent
        assert sent.get("stream", False) is streaming, sent
        texts = [r.get(c.TEXT_OUTPUT) for r in record["response_outputs"]]
        if streaming:  # a response per token (a split UTF-8 character waits for the next), then the final one
            assert OUTPUT_TOKENS // 2 <= len(texts) <= OUTPUT_TOKENS + 1, texts
        else:
            assert len(texts) == 1 and texts[0], texts

    # the server generated exactly min_length = max_tokens tokens for every request
    expected = before + attempts * REQUESTS * OUTPUT_TOKENS
    assert wait_generated(server, expected) == expected
