"""The contract against a copy of tensorrtllm_backend's own field tables (tests/upstream/), field by field:
every input and output upstream declares, with its data type, dims, optional / ragged flags and reshape,
must be ours too, unless contract.DIFFERENCES says why not; nothing of ours may be extra without a reason."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from qwen_triton.serving import contract as c

TABLES = json.loads((Path(__file__).parent / "upstream" / "tensorrtllm_backend_v0.19.0.json").read_text())


def _row(spec: c.TensorSpec, kind: str) -> dict:
    row = {"name": spec.name, "data_type": "STRING" if spec.dtype == "BYTES" else spec.dtype, "dims": list(spec.dims)}
    if kind == "input":
        row["optional"] = spec.optional
        row["ragged"] = spec.ragged
    row["reshape"] = list(spec.reshape) if spec.reshape is not None else None
    return row


def _compare(model: str, kind: str) -> list[str]:
    """Every unexplained difference of one model's inputs or outputs."""
    theirs = TABLES["models"][model][f"{kind}s"]
    ours = {s.name: _row(s, kind) for s in c.MODEL_SPECS[model][0 if kind == "input" else 1]}
    problems = []
    for name, count in Counter(t["name"] for t in theirs).items():
        if count > 1 and (model, kind, f"{name} (listed twice)") not in c.DIFFERENCES:
            problems.append(f"{model} {kind} {name}: upstream lists it {count} times, no note")
    for row in {t["name"]: t for t in theirs}.values():
        mine = ours.get(row["name"])
        if mine != row and (model, kind, row["name"]) not in c.DIFFERENCES:
            problems.append(f"{model} {kind} {row['name']}: upstream {row}, ours {mine}")
    upstream_names = {t["name"] for t in theirs}
    for name in ours.keys() - upstream_names:
        if (model, kind, name) not in c.DIFFERENCES:
            problems.append(f"{model} {kind} {name}: ours only, with no reason in contract.DIFFERENCES")
    return problems


@pytest.mark.parametrize("model", list(c.MODEL_SPECS))
@pytest.mark.parametrize("kind", ["input", "output"])
def test_fields_match_upstream_or_say_why(model, kind):
    assert _compare(model, kind) == []


def test_every_difference_is_real():
    """A note in DIFFERENCES must name a field that does differ (no stale reasons)."""
    for (model, kind, name) in c.DIFFERENCES:
        if kind == "model":
            assert TABLES["models"][model]["platform"] == "ensemble" and name == "platform"
            continue
        name = name.removesuffix(" (listed twice)")
        theirs = {t["name"]: t for t in TABLES["models"][model][f"{kind}s"]}
        ours = {s.name: _row(s, kind) for s in c.MODEL_SPECS[model][0 if kind == "input" else 1]}
        listed_twice = [t["name"] for t in TABLES["models"][model][f"{kind}s"]].count(name) > 1
        assert listed_twice or theirs.get(name) != ours.get(name), (model, kind, name)


def test_the_table_says_where_it_came_from():
    assert "tensorrtllm_backend v0.19.0" in TABLES["source"] and c.UPSTREAM.startswith(
        "triton-inference-server/tensorrtllm_backend v0.19.0")


def test_unsupported_inputs_are_optional():
    """An input of a feature we lack is accepted empty (so a client may send it) and refused with a reason."""
    for model, (inputs, _) in c.MODEL_SPECS.items():
        for spec in inputs:
            if spec.unsupported:
                assert spec.optional and spec.unsupported.strip(), (model, spec.name)
