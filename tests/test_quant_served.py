"""Quantized builds of `python -m build` served through the ensemble by a real tritonserver: one server
(explicit model control), the engine model rebuilt per mode and reloaded, each reply equal to our engine's own
greedy output on the same quantized checkpoint.

One mode of each kind goes through the server: group-wise int4 weights, fp8 weights and activations with a
calibrated fp8 KV cache, and an imported GPTQ (act-order) checkpoint. The served path is the same for every
mode once the engine has loaded the checkpoint; the other modes (int8_wo, w8a8, kv-int8 alone, AWQ) are each
built and run through the engine against their references in tests/test_quant*.py, which keeps CI's time."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from served import ROOT, TRITON_DIR, build_repo, http_generate, needs_triton

from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.chat import load_tokenizer
from qwen_triton.quant.spec import read_quant_spec
from qwen_triton.runtime.server import TritonServer
from qwen_triton.serving import contract as c
from qwen_triton.serving.postprocess import Postprocessor

pytestmark = needs_triton
PROMPT = "Quantized weights, same answers:"
MAX_TOKENS = 8
REPLACE_S = 60  # the old engine instance is unloaded a second or two after the new one is loaded

# (test id, build settings, the weights mode and KV cache the checkpoint must carry)
MODES = [
    ("int4_wo", ("quantization=int4_wo", "quant_group_size=64"), "int4_wo", "auto"),
    ("fp8-kv-fp8", ("quantization=fp8", "kv_cache_dtype=fp8", "kv_cache_scales=calibrated", "calib_prompts=2"),
     "fp8", "fp8"),
    ("gptq", ("quantization=gptq",), "gptq", "auto"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(root, server): the unquantized random model served with explicit model control."""
    root = tmp_path_factory.mktemp("quant_served")
    repo = build_repo(root)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=TRITON_DIR,
                          log_file=root / "triton.log",
                          extra_args=["--exit-timeout-secs=5", "--model-control-mode=explicit", "--load-model=*"])
    server.start_and_wait(timeout=180)
    try:
        yield root, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def published(stack):
    """A GPTQ (act-order) checkpoint of the random model in the published format, made by
    tools/quantize_int4.py (the real algorithm, over a few hundred calibration tokens)."""
    root, _ = stack
    source = next((root / "artifacts").glob("default-*"))
    made = {}
    for method, extra in (("gptq", ["--act-order"]),):
        dst = root / f"published-{method}"
        subprocess.run([sys.executable, "tools/quantize_int4.py", "--method", method, str(source), str(dst),
                        "--group-size", "64", "--tokens", "256", "--seq-len", "128", "--search-tokens", "128",
                        *extra],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        made[method] = dst
    return made


def _expected(checkpoint: Path, prompt: str) -> str:
    tokenizer = load_tokenizer(str(checkpoint))
    engine = LLMEngine(str(checkpoint), EngineConfig(device="cpu", dtype="float32", enforce_eager=True,
                                                               max_num_seqs=1, max_model_len=512))
    out = engine.generate([tokenizer.encode(prompt)], SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.0, end_ids=tuple(tokenizer.eos_ids)))[0]
    return Postprocessor(tokenizer).decode(out)


@pytest.mark.parametrize("name, sets, weights, kv", MODES, ids=[m[0] for m in MODES])
def test_each_mode_serves_through_the_ensemble(stack, published, name, sets, weights, kv):
    root, server = stack
    model = str(published[weights]) if weights in published else "random"
    build_repo(root, model=model, sets=sets)
    quantized = max((root / "artifacts" / "quant").iterdir(), key=lambda p: p.stat().st_mtime)
    spec = read_quant_spec(quantized)
    assert (spec.weights, spec.kv_cache) == (weights, kv)
    expected = _expected(quantized, PROMPT)
    r = requests.post(f"{server.http_url}/v2/repository/models/{c.ENGINE}/load", timeout=300)
    assert r.status_code == 200, r.text
    # Triton loads the new engine, then unloads the old one; until then the entry models' engine link still
    # reaches the old one (it drains), and reconnects to the new one when the old closes.
    replies = []
    deadline = time.monotonic() + REPLACE_S
    while time.monotonic() < deadline:
        reply = http_generate(server, {"text_input": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0})
        assert reply.status_code == 200, reply.text
        text = reply.json()[c.TEXT_OUTPUT]
        assert text.startswith(PROMPT)
        replies.append(text[len(PROMPT):])
        if replies[-1] == expected:
            break
        time.sleep(0.5)
    assert replies[-1] == expected, (replies, expected)
