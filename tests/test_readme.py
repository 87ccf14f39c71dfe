"""The README's Engine example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_engine_example_runs(tmp_path, capsys):
    text = README.read_text()
    section = text[text.index("## Engine"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/tmp/tiny-qwen2", str(tmp_path / "tiny-qwen2"))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "greedy" in out and "sampled" in out and "EngineStats" in out
