"""Regenerate tensorrtllm_backend_v0.19.0.json: the field tables of upstream's model configs.

    python tests/upstream/extract_tables.py /path/to/tensorrtllm_backend [TAG] > tests/upstream/...json

Reads `all_models/inflight_batcher_llm/<model>/config.pbtxt` at TAG (git show, so any checkout works),
fills upstream's `${...}` placeholders the way its README does (logits_datatype TYPE_FP32,
encoder_input_features_data_type TYPE_FP16, numbers 64, decoupled_mode true) and keeps, per model,
the name, data type, dims, optional / ragged flags and reshape of every input and output, in order,
and the names of its `parameters`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
FILLS = {"logits_datatype": "TYPE_FP32", "encoder_input_features_data_type": "TYPE_FP16", "decoupled_mode": "true",
         "triton_backend": "tensorrtllm"}


def _fill(text: str) -> str:
    def value(m: re.Match) -> str:
        return FILLS.get(m.group(1), "64")
    # placeholders inside quotes are strings: leave them empty
    text = re.sub(r'"\$\{(\w+)\}"', '""', text)
    return re.sub(r"\$\{(\w+)\}", value, text)


def _tensor(t, kind: str) -> dict:
    row = {"name": t.name, "data_type": mc.DataType.Name(t.data_type).removeprefix("TYPE_"), "dims": list(t.dims)}
    if kind == "input":
        row["optional"] = t.optional
        row["ragged"] = t.allow_ragged_batch
    row["reshape"] = list(t.reshape.shape) if t.HasField("reshape") else None
    return row


def tables(repo: str, tag: str) -> dict:
    out = {"source": f"triton-inference-server/tensorrtllm_backend {tag}, "
                     "all_models/inflight_batcher_llm/<model>/config.pbtxt", "models": {}}
    for model in MODELS:
        path = f"{tag}:all_models/inflight_batcher_llm/{model}/config.pbtxt"
        text = subprocess.run(["git", "-C", repo, "show", path], check=True, capture_output=True, text=True).stdout
        cfg = text_format.Parse(_fill(text), mc.ModelConfig())
        out["models"][model] = {
            "platform": cfg.platform or None, "backend": cfg.backend or None,
            "decoupled_placeholder": "decoupled_mode" in text,
            "parameters": sorted(cfg.parameters),
            "inputs": [_tensor(t, "input") for t in cfg.input], "outputs": [_tensor(t, "output") for t in cfg.output]}
    return out


def dumps(data: dict) -> str:
    """JSON with one tensor per line (readable diffs)."""
    lines = ["{", f' "source": {json.dumps(data["source"])},', ' "models": {']
    models = list(data["models"].items())
    for m, (name, model) in enumerate(models):
        lines.append(f"  {json.dumps(name)}: {{")
        for key in ("platform", "backend", "decoupled_placeholder", "parameters"):
            lines.append(f"   {json.dumps(key)}: {json.dumps(model[key])},")
        for k, key in enumerate(("inputs", "outputs")):
            rows = [f"    {json.dumps(t)}" for t in model[key]]
            lines.append(f"   {json.dumps(key)}: [\n" + ",\n".join(rows) + "\n   ]" + ("," if k == 0 else ""))
        lines.append("  }" + ("," if m < len(models) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(dumps(tables(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "v0.19.0")))
